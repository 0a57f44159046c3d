"""The jobs on a real multi-node Ray cluster, started on this machine with `ray start`.

A head (with the dashboard, for `ray job submit`) and a worker node carrying a custom
``gpu_node`` resource, both with token authentication, each node given one CPU so that work
has to spread over both. Storage is shared the way a cluster shares it: every node and driver
sees the same folder, addressed as a ``file://`` URI. The test starts every process itself
(its own ports and temp folder, every node in its own session) and stops them by id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from spatialdreamer.data import load_manifest
from spatialdreamer.data.shards import read_clip
from spatialdreamer.synth import random_spec
from spatialdreamer.synth.videos import write_scene

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = shutil.which("ray", path=str(BIN))  # the CLI of this environment, same Ray version
LOSSLESS = ("right_mask_path", "back_mask_path", "disparity_path")
STARTUP_S, JOB_S = 120, 420

try:  # the dashboard (and with it `ray job submit`) needs ray[default]: the `cluster` extra
    import aiohttp  # noqa: F401
    import aiohttp_cors  # noqa: F401

    _DASHBOARD = True
except ImportError:
    _DASHBOARD = False

pytestmark = [
    pytest.mark.skipif(RAY is None, reason=f"no `ray` command next to {sys.executable}"),
    pytest.mark.skipif(
        not _DASHBOARD,
        reason="ray[default] missing (pip install -e '.[cluster]'): no dashboard for job submit",
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process clean-up reads /proc (Linux)"),
]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _processes() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (parent pid, session id, start time, command line) for every process on the machine."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "
        table[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[19]), cmdline)
    return table


def _family(sessions: set[int], marker: str) -> set[tuple[int, int]]:
    """Processes as (pid, start time): those in ``sessions`` (each process we start leads its own),
    those whose command line names ``marker`` (our temp folder), and all their descendants."""
    table = _processes()
    found = {pid for pid, (_, sid, _, cmd) in table.items() if sid in sessions or marker in cmd}
    grew = True
    while grew:  # descendants that left the session (a submitted job's driver gets its own)
        more = {pid for pid, (ppid, *_) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return {(pid, table[pid][2]) for pid in found}


def _stop(processes: list[subprocess.Popen], marker: str, grace_s: float = 30) -> set[int]:
    """SIGTERM ``processes`` (last started first), then SIGKILL whatever of their family is left,
    by id. Returns the ids still alive afterwards (should be none)."""
    sessions = {p.pid for p in processes}
    before = _family(sessions, marker)
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    time.sleep(1)
    table = _processes()
    for pid, started in _family(sessions, marker) | before:
        if pid in table and table[pid][2] == started:  # the same process, not a reused id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (left := _family(sessions, marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {pid for pid, _ in left}


def _clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without its Ray settings, with a HOME of our own (no
    ~/.ray/auth_token of the user's) and this venv first on PATH, as when it is activated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


class LocalCluster:
    """A head and a worker node started with `ray start --block`, each in its own session."""

    def __init__(self, root: Path):
        self.root = root
        self.temp_dir = root / "ray"  # short: Ray's socket paths must stay under 107 characters
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.token_file = root / "auth_token"
        self.token = secrets.token_hex(32)
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.nodes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.gcs_port, self.dashboard_port, self.client_port = _free_ports(3)
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **settings: str) -> dict[str, str]:
        return _clean_env(self.home) | settings

    def node_env(self, token_by_env: bool) -> dict[str, str]:
        # every node runs in token mode and finds the token: by file on the head, by value on the worker
        env = self.env(RAY_AUTH_MODE="token", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        if token_by_env:
            env["RAY_AUTH_TOKEN"] = self.token
        else:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        return env

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            self.nodes.append(
                subprocess.Popen(
                    [RAY, "start", "--block", "--disable-usage-stats", *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.root,
                )
            )
        self.logs.append(log)

    def start(self) -> None:
        common = ["--temp-dir", str(self.temp_dir), "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        common += ["--object-store-memory", str(256 * 2**20)]
        head_agent, worker_agent = _free_ports(2)
        self._start(
            "head",
            [
                "--head",
                *common,
                f"--port={self.gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
                f"--dashboard-agent-listen-port={head_agent}",
            ],
            self.node_env(token_by_env=False),
        )
        self._wait(lambda: len(self.alive_nodes()) == 1, "the head")
        self._start(
            "worker",
            [
                f"--address={self.gcs_address}",
                *common,
                f"--dashboard-agent-listen-port={worker_agent}",
                "--resources",
                json.dumps({"gpu_node": 1}),
            ],
            self.node_env(token_by_env=True),
        )
        self._wait(lambda: len(self.alive_nodes()) == 2, "the worker node")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            dead = [
                log.name for node, log in zip(self.nodes, self.logs, strict=True) if node.poll() is not None
            ]
            if dead:
                raise RuntimeError(f"`ray start` exited ({dead}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):  # the dashboard is not up yet
                if ready():
                    return
            time.sleep(1)
        raise TimeoutError(f"{what} did not come up within {STARTUP_S} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
        )

    def api(self, path: str, token: str | None = "") -> dict:
        """GET the dashboard's REST API, with the cluster's token unless told otherwise."""
        request = urllib.request.Request(self.dashboard_url + path)
        token = self.token if token == "" else token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def state(self, kind: str) -> list[dict]:
        """Rows of Ray's state API (nodes, actors, tasks), dead ones included."""
        body = self.api(f"/api/v0/{kind}?limit=10000&detail=1")
        return body["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def stop(self) -> set[int]:
        return _stop(self.nodes, str(self.temp_dir))


@pytest.fixture(scope="module")
def workspace():
    """The test's own folder: Ray's temp dir, the token, logs, and the storage all nodes share."""
    root = Path(tempfile.mkdtemp(prefix="sdc-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(workspace):
    """Two synth videos and one broken file, in a folder every node sees."""
    folder = workspace / "shared" / "videos"
    for seed in range(2):
        write_scene(random_spec(seed, height=96, width=160, frames=40), folder, f"v{seed}")
    (folder / "broken.mp4").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def embedded_run(workspace, inputs):
    """The reference: the same job on a new embedded Ray, as on a laptop. Started in the
    background so that it overlaps the cluster's start-up."""
    out, log = workspace / "embedded", workspace / "embedded.log"
    command = [*_corpus_job(inputs, str(out)), "--config", "tiny"]
    # its own HOME and temp dir: nothing of the user's read, nothing left in /tmp/ray
    env = _clean_env(workspace / "home-embedded") | {"RAY_ADDRESS": "", "RAY_TMPDIR": str(workspace / "e")}
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process, out, log
    finally:
        left = _stop([process], str(workspace / "e"), grace_s=10)
        assert not left, f"processes of the embedded run left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def cluster(workspace, embedded_run):
    cluster = LocalCluster(workspace)
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"processes left behind: {sorted(left)}"


def _run(command: list[str], env: dict[str, str], timeout: float = JOB_S) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command[:4])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _corpus_job(inputs: Path, output: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.build_dataset", "--input", str(inputs), "--output", output]


def _lossless_sums(root: Path) -> dict[tuple[str, str], str]:
    """(clip id, column) -> sha256 of the decoded frames of each mask and disparity shard
    (decoded: the container carries a random segment id, the frames must match exactly)."""
    clips = load_manifest(str(root))
    sums = {}
    for row in clips.to_dict("records"):
        clip = read_clip(str(root), row)  # from the segment's pack
        decoded = dict(zip(LOSSLESS, (clip.right_holes, clip.back_holes, clip.disparity), strict=True))
        for column in LOSSLESS:
            frames = decoded[column].numpy()
            digest = hashlib.sha256(str((frames.shape, frames.dtype)).encode() + frames.tobytes())
            sums[(row["clip_id"], column)] = digest.hexdigest()
    return sums


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["created_time"]).sort_values("clip_id").reset_index(drop=True)


def _assert_same_corpus(ours: Path, reference: Path) -> None:
    a, b = load_manifest(str(ours)), load_manifest(str(reference))
    assert len(a) == 10 and set(a.clip_id) == set(b.clip_id)
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b))
    pd.testing.assert_frame_equal(
        load_manifest(str(ours), table="failures").drop(columns=["created_time"]),
        load_manifest(str(reference), table="failures").drop(columns=["created_time"]),
    )
    assert _lossless_sums(ours) == _lossless_sums(reference)


def _nodes_of(rows: list[dict], pattern: str) -> set[str]:
    """The nodes that ran the matching tasks and actors (an actor's creation-task row has none)."""
    matching = [row for row in rows if re.search(pattern, row.get("name") or row.get("class_name") or "")]
    return {row["node_id"] for row in matching if row.get("node_id")}


def _placement(cluster: LocalCluster, kinds: tuple[str, ...], pattern: str, node_ids: dict) -> set[str]:
    """The nodes the state API reports for the matching rows; waits a little for task events,
    which workers report to the head about once a second."""
    deadline = time.monotonic() + 20
    while True:
        used = _nodes_of([row for kind in kinds for row in cluster.state(kind)], pattern)
        if used >= set(node_ids.values()) or time.monotonic() > deadline:
            return used
        time.sleep(1)


@pytest.fixture(scope="module")
def node_ids(cluster) -> dict[str, str]:
    nodes = cluster.alive_nodes()
    (worker,) = [n["node_id"] for n in nodes if n["resources_total"].get("gpu_node")]
    (head,) = [n["node_id"] for n in nodes if n["is_head_node"]]
    return {"head": head, "worker": worker}


@pytest.fixture(scope="module")
def embedded_corpus(embedded_run) -> tuple[Path, str]:
    process, out, log = embedded_run
    process.wait(timeout=JOB_S)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, f"embedded corpus job failed:\n{text[-3000:]}"
    return out, text


def test_cluster_refuses_callers_without_its_token(cluster, inputs):
    with pytest.raises(urllib.error.HTTPError) as missing:
        cluster.api("/api/v0/nodes", token=None)
    with pytest.raises(urllib.error.HTTPError) as wrong:
        cluster.api("/api/v0/nodes", token="not-the-token")
    assert (missing.value.code, wrong.value.code) == (401, 403)
    env = cluster.env(RAY_ADDRESS=cluster.gcs_address, RAY_AUTH_TOKEN="not-the-token")
    result = subprocess.run(
        [*_corpus_job(inputs, str(cluster.root / "rejected")), "--config", "tiny"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=JOB_S,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: the Ray cluster at 127.0.0.1" in result.stderr, result.stderr[-2000:]
    assert "rejected the authentication token" in result.stderr.splitlines()[-1]
    # no token at all (HOME has none): the driver cannot know the mode, the error says what to set
    code = "from pipelines.ray_session import connect\nconnect()\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=cluster.env(RAY_ADDRESS=cluster.gcs_address),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=JOB_S,
    )
    assert result.returncode == 1
    assert "requires token authentication: set RAY_AUTH_MODE=token" in result.stderr.splitlines()[-1]


@pytest.fixture(scope="module")
def address_run(cluster, inputs):
    """The corpus job through RAY_ADDRESS, writing to the shared folder as a file:// URI. The
    driver gets only the address and the token file: the job turns token mode on itself."""
    shared = cluster.root / "shared" / "corpus"
    env = cluster.env(RAY_ADDRESS=cluster.gcs_address, RAY_AUTH_TOKEN_PATH=str(cluster.token_file))
    return shared, _run([*_corpus_job(inputs, shared.as_uri()), "--config", "tiny"], env)


def test_corpus_job_via_ray_address_runs_on_both_nodes_and_equals_the_embedded_run(
    cluster, address_run, node_ids, embedded_corpus
):
    shared, result = address_run
    assert "clips_in_corpus: 10" in result.stdout and "failures: 1" in result.stdout
    used = _placement(cluster, ("tasks", "actors"), r"split_video|DepthDVGStage|write_clip_stage", node_ids)
    assert used == set(node_ids.values()), used

    reference, embedded = embedded_corpus
    _assert_same_corpus(shared, reference)
    for output in (result.stdout + result.stderr, embedded):  # no token-auth warning on either run
        assert "Token authentication" not in output


def test_two_worker_training_spans_both_nodes(cluster, address_run, node_ids):
    corpus, run = address_run[0], cluster.root / "shared" / "run"
    env = cluster.env(RAY_ADDRESS=cluster.gcs_address, RAY_AUTH_TOKEN_PATH=str(cluster.token_file))
    command = [sys.executable, "-m", "pipelines.train", "--corpus", corpus.as_uri(), "--output", run.as_uri()]
    result = _run([*command, "--config", "tiny", "--num-workers", "2", "--steps", "2"], env)
    assert "trained video stage to step 2" in result.stdout, result.stdout
    state = json.loads((run / "video" / "step_00000002" / "training_state" / "state.json").read_text())
    assert state["world_size"] == 2 and state["metrics"]["samples_seen"] == 2 * 2 * 2
    workers = _placement(cluster, ("actors",), r"TrainWorker", node_ids)
    assert workers == set(node_ids.values()), workers


def test_ray_job_submit_with_working_dir_runs_the_corpus_job(cluster, inputs, embedded_corpus):
    out = cluster.root / "shared" / "submitted"
    # the README's command: the client needs token mode and the token, like any caller
    env = cluster.env(
        RAY_ADDRESS=cluster.dashboard_url, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.token_file)
    )
    began = time.monotonic()
    result = _run(
        [RAY, "job", "submit", "--working-dir", ".", "--", "python", *_corpus_job(inputs, out.as_uri())[1:]]
        + ["--config", "tiny"],
        env,
    )
    took = time.monotonic() - began
    job_id = re.search(r"raysubmit_\w+", result.stdout + result.stderr)
    assert job_id, result.stdout[-2000:]
    job = cluster.api(f"/api/jobs/{job_id.group(0)}")
    assert job["status"] == "SUCCEEDED", job
    # what the head unpacked: the code, without .git, .venv or data (.gitignore and .rayignore)
    (unpacked,) = [p for p in cluster.temp_dir.rglob("_ray_pkg_*") if p.is_dir() and "working_dir" in str(p)]
    names = {p.relative_to(unpacked).parts[0] for p in unpacked.rglob("*")}
    assert {"pipelines", "spatialdreamer"} <= names and not names & {".git", ".venv"}, names
    size = sum(p.stat().st_size for p in unpacked.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"uploaded {size / 2**20:.1f} MiB"
    _assert_same_corpus(out, embedded_corpus[0])
    print(f"ray job submit: {took:.1f} s")
