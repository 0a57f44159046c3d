"""Crash-resume: kill the corpus job (its own embedded Ray) mid-way, rerun, compare.

The job runs in a subprocess in its own session; a crash is simulated by SIGKILL of every
process in that session at once (driver, raylet, workers), like a machine going down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.build_dataset import build, load_config
from spatialdreamer.data import load_manifest
from spatialdreamer.synth import random_spec
from spatialdreamer.synth.videos import write_scene

REPO = Path(__file__).resolve().parents[1]


def _session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(name))
    return members


def _crash(process: subprocess.Popen) -> None:
    """SIGKILL every live process of the job's session, until none is left."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        members = _session_members(process.pid)
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    process.wait(timeout=30)
    assert not _session_members(process.pid), "processes of the killed job are still running"


def _start(inputs: Path, output: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "pipelines.build_dataset",
        "--input",
        str(inputs),
        "--output",
        str(output),
    ]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [*command, "--config", "tiny"],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _rows(output: Path) -> int:
    return len(list((output / "_rows").glob("*/*.json")))


def _run_until(inputs: Path, output: Path, rows: int) -> int:
    """Start the job and crash it once at least ``rows`` clip records exist; returns the count."""
    process = _start(inputs, output)
    while _rows(output) < rows:
        if process.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    _crash(process)
    return _rows(output)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {"_SUCCESS.json"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_inputs")
    for seed in range(4):
        write_scene(random_spec(seed, height=96, width=160, frames=48), root, f"v{seed}")
    (root / "broken.mp4").write_text("not a video\n" * 10)
    return root


def test_a_job_killed_at_any_moment_resumes_to_the_same_corpus(inputs, tmp_path):
    reference = tmp_path / "uninterrupted"
    build(str(inputs), str(reference), load_config("tiny"), in_process=True)
    total = len(load_manifest(str(reference)))
    assert total == 24

    output = tmp_path / "crashed"
    first = _run_until(inputs, output, rows=1)  # killed as soon as the first clips are committed
    assert 1 <= first < total
    second = _run_until(inputs, output, rows=first + 6)  # killed again, later, while resuming
    assert first < second < total
    # what a killed writer may leave behind must not count (temporary names) and is cleared
    shard = next((output / "shards").glob("*/*"))
    (shard / ".rgb.mp4.tmp-0123abcd").write_bytes(b"partial")
    (output / "_rows" / ".half.json.tmp-89abcdef").write_bytes(b"{")

    finished = subprocess.run(
        [sys.executable, "-m", "pipelines.build_dataset", "--input", str(inputs), "--output", str(output)]
        + ["--config", "tiny"],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"clips_written: {total - second}" in finished.stdout  # only the missing work

    got, want = load_manifest(str(output)), load_manifest(str(reference))
    assert got["clip_id"].is_unique and len(got) == total
    pd.testing.assert_frame_equal(got.drop(columns="created_time"), want.drop(columns="created_time"))
    pd.testing.assert_frame_equal(
        load_manifest(str(output), table="failures").drop(columns="created_time"),
        load_manifest(str(reference), table="failures").drop(columns="created_time"),
    )
    assert _files(output) == _files(reference)  # no lost, duplicated or leftover file
