"""Synth scenes as files: the demo's input videos and a ground-truth benchmark set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from spatialdreamer.data.codecs import disparity_to_u16
from spatialdreamer.synth.scenes import SceneSpec, iter_frames
from spatialdreamer.video import VideoWriter, write_lossless

__all__ = ["SceneFiles", "write_scene", "write_tone"]


@dataclass(frozen=True)
class SceneFiles:
    left: Path
    right: Path | None = None
    disparity: Path | None = None
    occlusion: Path | None = None


def write_tone(
    path: str | os.PathLike, seconds: float, sample_rate: int = 48000, freq: float = 440.0
) -> Path:
    """A stereo PCM WAV tone with a rising pitch, so that audio sync is audible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    signal = (0.2 * np.sin(2 * np.pi * (freq * t + 20.0 * t * t))).astype(np.float32)
    pcm = (signal * 32767).astype(np.int16)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate)
        stream.layout = "stereo"
        for start in range(0, n, 4096):
            block = np.repeat(pcm[start : start + 4096][None, :], 2, axis=0).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="s16", layout="stereo")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_scene(
    spec: SceneSpec,
    out_dir: str | os.PathLike,
    name: str,
    *,
    audio: bool = True,
    ground_truth: bool = False,
    codec: str = "h264",
) -> SceneFiles:
    """Render ``spec`` frame by frame into ``out_dir`` (video memory stays flat; ground-truth
    arrays, when asked for, are kept until the end).

    Writes ``<name>.mp4`` (the left view, with a tone as audio when ``audio``); with
    ``ground_truth`` also ``<name>.right.mp4``, ``<name>.disparity.mkv`` (uint16, see
    :mod:`spatialdreamer.data.codecs`) and ``<name>.occlusion.mkv`` (right-view mask).
    ``codec="ffv1"`` stores the RGB views losslessly (``.mkv``) for evaluation.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".mkv" if codec == "ffv1" else ".mp4"
    tone = write_tone(out_dir / f".{name}.tone.wav", spec.frames / spec.fps) if audio else None
    left_path = out_dir / f"{name}{suffix}"
    right_path = out_dir / f"{name}.right{suffix}" if ground_truth else None
    disparity, occlusion = [], []
    try:
        left = VideoWriter(left_path, spec.fps, codec=codec, audio_from=tone)
        right = VideoWriter(right_path, spec.fps, codec=codec) if right_path else None
        for frame in iter_frames(spec):
            left.write(frame["left"].unsqueeze(0))
            if right is not None:
                right.write(frame["right"].unsqueeze(0))
                disparity.append(disparity_to_u16(frame["disparity"][0]))
                occlusion.append(frame["occlusion"][0].numpy())
        left.close()
        if right is not None:
            right.close()
    finally:
        if tone is not None:
            tone.unlink(missing_ok=True)
    if not ground_truth:
        return SceneFiles(left=left_path)
    disp_path = write_lossless(out_dir / f"{name}.disparity.mkv", np.stack(disparity), spec.fps)
    occ_path = write_lossless(
        out_dir / f"{name}.occlusion.mkv", torch.from_numpy(np.stack(occlusion)), spec.fps
    )
    return SceneFiles(left=left_path, right=right_path, disparity=disp_path, occlusion=occ_path)
