"""Resumable conversions: interrupted (in process, SIGKILL, SIGTERM) and rerun, the result has
the frames, timestamps and audio of an uninterrupted run, and nothing hidden is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import spatialdreamer.resume as resume_module
from spatialdreamer.convert import ConvertOptions, convert_video
from spatialdreamer.resume import parts_folder_for
from spatialdreamer.video import probe_video, stream_frames

_OPTIONS = {"depth_model": "parallax", "segment_seconds": 0.5, "chunk_size": 4}


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """6 s at 24 fps, 128x72, a panning texture with a moving bar and 6 s of tone: long enough
    to be killed mid-way, quick to make."""
    path = tmp_path_factory.mktemp("long_clip") / "long.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (72, 512, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=24, options={"preset": "ultrafast", "g": "24"})
        video.width, video.height, video.pix_fmt = 128, 72, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i in range(144):
            picture = texture[:, 2 * i : 2 * i + 128].copy()
            picture[20:50, (3 * i) % 100 : (3 * i) % 100 + 20] = 255
            container.mux(video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(video.encode(None))
        t = np.arange(6 * 48000) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def _decoded(path):
    chunks = list(stream_frames(path, 32))
    return torch.cat([c.frames for c in chunks]), torch.cat([c.timestamps for c in chunks])


def _audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _assert_same_as(reference: Path, resumed: Path, exact: bool = False) -> None:
    """Same frame count and timestamps, the same pictures (bit for bit with ``exact``: a rerun
    in a new process; a resume inside the interrupted process can differ in a few bits, see
    spatialdreamer.resume), the same audio."""
    frames, stamps = _decoded(resumed)
    ref_frames, ref_stamps = _decoded(reference)
    assert frames.shape == ref_frames.shape
    assert torch.equal(stamps, ref_stamps)
    if exact:
        assert torch.equal(frames, ref_frames)
    else:
        assert _psnr(frames, ref_frames) > 40.0
    assert abs(_audio_seconds(resumed) - _audio_seconds(reference)) < 0.03


@pytest.mark.parametrize("hold", [0.0, 0.5])
def test_an_interrupted_conversion_resumes_with_the_frames_of_an_uninterrupted_run(
    video_with_audio, tmp_path, monkeypatch, hold
):
    """With the stabiliser's look-ahead (frames handed on late) and, with ``hold``, the output
    hold, which both restart where a part begins."""
    options = {**_OPTIONS, "hold": hold}
    encoded: dict[str, list] = {"full": [], "interrupted": [], "resumed": []}
    write = resume_module.SegmentedVideoWriter.write
    run = "full"

    def spy(self, frames, stamps):  # what goes into the encoder, bit for bit
        encoded[run].append((frames.clone(), stamps.clone()))
        return write(self, frames, stamps)

    monkeypatch.setattr(resume_module.SegmentedVideoWriter, "write", spy)
    full = convert_video(video_with_audio, tmp_path / "full.mp4", ConvertOptions(**options)).output

    run = "interrupted"

    def stop_after_two_parts(done: int, total: int) -> None:
        if done >= 28:
            raise KeyboardInterrupt

    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        convert_video(video_with_audio, out, ConvertOptions(**options), progress=stop_after_two_parts)
    assert not out.exists()
    assert _hidden(tmp_path) == [parts_folder_for(out).name]  # finished parts only, nothing else
    run = "resumed"
    report = convert_video(video_with_audio, out, ConvertOptions(**options))
    assert report.resumed_frames == 24 and report.frames == 48
    assert _hidden(tmp_path) == []
    # the finished parts before the stop, then what the rerun wrote
    frames = torch.cat([f for f, _ in encoded["interrupted"]])[:24]
    stamps = torch.cat([s for _, s in encoded["interrupted"]])[:24]
    frames = torch.cat([frames, *(f for f, _ in encoded["resumed"])])
    stamps = torch.cat([stamps, *(s for _, s in encoded["resumed"])])
    assert torch.equal(frames, torch.cat([f for f, _ in encoded["full"]]))
    assert torch.equal(stamps, torch.cat([s for _, s in encoded["full"]]))
    _assert_same_as(full, out)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "spatialdreamer.cli.main", "convert", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_parts(process: subprocess.Popen, parts: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if parts.exists() and len(list(parts.glob("*.state.pt"))) >= count:
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the conversion ended or stalled before {count} parts were done: {process.communicate()[1]}")


_CLI = ["--depth-model", "parallax", "--segment-seconds", "0.5", "--chunk", "4", "--quiet"]


def test_a_killed_conversion_resumes_and_a_sigterm_leaves_no_temporary_file(long_clip, tmp_path):
    out = tmp_path / "out.mp4"
    parts = parts_folder_for(out)
    killed = _start([long_clip, out, *_CLI])
    _wait_for_parts(killed, parts, 2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not out.exists()

    terminated = _start([long_clip, out, *_CLI])  # resumes, then is stopped cleanly
    _wait_for_parts(terminated, parts, 5)
    terminated.send_signal(signal.SIGTERM)
    _, err = terminated.communicate(timeout=60)
    assert terminated.returncode == 130, err
    assert "run the same command again to resume" in err
    assert _hidden(tmp_path) == [parts.name]  # the part in progress and its temporary files are gone
    assert not any(p.name.startswith(".") for p in parts.iterdir())

    reference = tmp_path / "reference.mp4"
    for target in (out, reference):  # rerun after the kill, and an uninterrupted run, alike
        finished = _start([long_clip, target, *_CLI])
        assert finished.wait(timeout=300) == 0, finished.communicate()[1]
    assert _hidden(tmp_path) == []
    _assert_same_as(reference, out, exact=True)  # a rerun in a new process: the same file
    assert probe_video(out).frame_count == 144


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(video_with_audio, tmp_path):
    out = tmp_path / "out.mp4"
    for name in (".out.video-only.mp4", ".out.partial.mp4"):  # what SIGKILL leaves mid-mux
        (tmp_path / name).write_bytes(b"\0" * 100)
    convert_video(video_with_audio, out, ConvertOptions(**_OPTIONS))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_parts_of_a_different_conversion_are_discarded(video_with_audio, tmp_path):
    out = tmp_path / "out.mp4"

    def stop(done: int, total: int) -> None:
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_video(video_with_audio, out, ConvertOptions(**_OPTIONS, budget=5.0), progress=stop)
    report = convert_video(video_with_audio, out, ConvertOptions(**_OPTIONS))  # other options
    assert report.resumed_frames == 0 and report.frames == 48
