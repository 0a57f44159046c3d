"""Procedural RGB-D stereo scenes with exact ground truth (tests, demo, evaluation)."""

from spatialdreamer.synth.scenes import (
    Layer,
    SceneSpec,
    StereoScene,
    iter_frames,
    make_scene,
    random_spec,
    render_frame,
)

__all__ = ["Layer", "SceneSpec", "StereoScene", "iter_frames", "make_scene", "random_spec", "render_frame"]
