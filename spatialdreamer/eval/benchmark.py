"""The benchmark set: synth stereo videos from fixed seeds, stored losslessly with ground truth.

Each scene ``bench_<seed>`` is four FFV1 files of one name in four folders, so that a folder of
predictions pairs with its ground truth by file name::

    ROOT/left/bench_0000.mkv        the input (left view)
    ROOT/right/bench_0000.mkv       the true right view, ray-cast (not warped)
    ROOT/disparity/bench_0000.mkv   left-view disparity, uint16 codes (spatialdreamer.data.codecs)
    ROOT/occlusion/bench_0000.mkv   right-view disocclusions (what a method has to invent)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from spatialdreamer.data import disparity_from_u16
from spatialdreamer.synth import random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video import probe_video, read_lossless, stream_frames

__all__ = [
    "PARTS",
    "BenchmarkConfig",
    "BenchmarkScene",
    "ensure_benchmark",
    "load_scene",
    "read_video",
    "scene_files",
]


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which scenes make the set; the defaults run in minutes on a 2-core CPU."""

    scenes: int = 4
    seed: int = 0
    height: int = 128
    width: int = 192
    frames: int = 24
    fps: float = 24.0

    def names(self) -> list[str]:
        return [f"bench_{self.seed + i:04d}" for i in range(self.scenes)]


@dataclass
class BenchmarkScene:
    """One scene in memory: ``left``/``right`` ``[T,3,H,W]`` float in [0, 1], ``disparity``
    ``[T,1,H,W]`` pixels (left view), ``occlusion`` ``[T,1,H,W]`` bool (right-view holes)."""

    name: str
    left: torch.Tensor
    right: torch.Tensor
    disparity: torch.Tensor
    occlusion: torch.Tensor
    fps: float = 24.0


PARTS = ("left", "right", "disparity", "occlusion")


def scene_files(root: str | os.PathLike, name: str) -> dict[str, Path]:
    """``{"left", "right", "disparity", "occlusion"}`` → the scene's files under ``root``."""
    return {part: Path(root) / part / f"{name}.mkv" for part in PARTS}


def ensure_benchmark(root: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig()) -> list[str]:
    """Write the scenes of ``config`` under ``root`` unless they are already there.

    A folder made with another config is refused rather than silently mixed. Returns the names.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "benchmark.json"
    wanted = asdict(config)
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != wanted:
            raise ValueError(f"{root} holds a benchmark made with {found}, not {wanted}; use another folder")
    for i, name in enumerate(config.names()):
        targets = scene_files(root, name)
        if all(p.exists() for p in targets.values()):
            continue
        spec = random_spec(
            config.seed + i, height=config.height, width=config.width, frames=config.frames, fps=config.fps
        )
        with tempfile.TemporaryDirectory(dir=root, prefix=".writing-") as tmp:
            files = write_scene(spec, tmp, name, audio=False, ground_truth=True, codec="ffv1")
            written = {"left": files.left, "right": files.right, "disparity": files.disparity,
                       "occlusion": files.occlusion}  # fmt: skip
            for part, target in targets.items():
                target.parent.mkdir(exist_ok=True)
                os.replace(written[part], target)
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(wanted, indent=2))
    os.replace(tmp, marker)
    return config.names()


def read_video(path: str | os.PathLike, chunk_size: int = 32) -> torch.Tensor:
    """A whole (small) video as ``[T,3,H,W]`` float in [0, 1]."""
    chunks = [c.frames for c in stream_frames(path, chunk_size)]
    if not chunks:
        raise ValueError(f"{path}: no frames")
    return torch.cat(chunks).float() / 255.0


def load_scene(root: str | os.PathLike, name: str) -> BenchmarkScene:
    """Read one benchmark scene written by :func:`ensure_benchmark`."""
    files = scene_files(root, name)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark scene {name} is incomplete: missing {', '.join(missing)}")
    left, right = read_video(files["left"]), read_video(files["right"])
    disparity = torch.from_numpy(disparity_from_u16(read_lossless(files["disparity"]))).unsqueeze(1)
    occlusion = torch.from_numpy(np.asarray(read_lossless(files["occlusion"])) > 127).unsqueeze(1)
    t = left.shape[0]
    if not (right.shape == left.shape and disparity.shape[0] == t and occlusion.shape[0] == t):
        raise ValueError(
            f"{name}: ground truth does not match the left view (left {tuple(left.shape)}, right "
            f"{tuple(right.shape)}, disparity {tuple(disparity.shape)}, occlusion {tuple(occlusion.shape)})"
        )
    return BenchmarkScene(name, left, right, disparity, occlusion, probe_video(files["left"]).fps)
