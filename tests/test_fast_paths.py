"""The cheap paths for large frames give the answers of the full computation.

The cut detector builds its thumbnails in two whole-factor area steps (a moving fine pattern
must not alias into false cuts, as it did with a strided grid), and the temporal
normaliser reads each frame's range from a grid of about ``RANGE_SAMPLES`` values; both kick in
only above a size, so these tests use 720p frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatialdreamer.depth import TemporalNormalizer
from spatialdreamer.depth.normalize import RANGE_SAMPLES
from spatialdreamer.dvg.disparity import robust_range
from spatialdreamer.video.shots import CutDetector

H, W = 720, 1280


def _textured_shots(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Shots of a base colour under per-pixel noise and fine stripes (what a stride could alias)."""
    rng = np.random.default_rng(seed)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    texture = rng.normal(0.0, 8.0, (H, W, 3)).astype(np.float32)
    texture += (np.arange(W) % 3 == 0)[None, :, None] * 40.0
    frames = []
    for shot, length in enumerate(lengths):
        base = np.array(colours[shot % len(colours)], np.float32)
        for _ in range(length):
            texture = np.roll(texture, 7, axis=1)  # moving texture, same statistics
            frames.append(np.clip(base + texture, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def test_cuts_in_720p_frames_are_found_exactly_where_the_shots_change():
    frames = _textured_shots([5, 3, 6])
    detector = CutDetector()
    flags = detector(frames[:4]) + detector(frames[4:])  # streamed in chunks
    assert [i for i, cut in enumerate(flags) if cut] == [0, 5, 8]


def test_a_720p_dissolve_is_flagged_inside_the_transition():
    a, b = _textured_shots([8]), _textured_shots([0, 8], seed=1)
    mix = [torch.lerp(a[i].float(), b[i].float(), float(w)) for i, w in enumerate(np.linspace(0.0, 1.0, 8))]
    frames = torch.cat([a[:6], torch.stack(mix).round().to(torch.uint8), b[:6]])
    cuts = [i for i, cut in enumerate(CutDetector(window=4)(frames)) if cut]
    assert cuts[0] == 0 and len(cuts) >= 2
    assert all(6 <= c < 14 for c in cuts[1:]), cuts


def test_large_frame_range_from_the_grid_matches_the_full_range():
    gen = torch.Generator().manual_seed(0)
    ys = torch.linspace(0.0, 1.0, H).view(H, 1)
    frame = (1.0 + ys + 0.3 * torch.rand(1, H, W, generator=gen)).unsqueeze(0)  # [1,1,H,W]
    frame[0, 0, ::97, ::89] = 50.0  # outliers the percentiles must ignore
    assert frame.numel() > 20 * RANGE_SAMPLES
    lo, hi = TemporalNormalizer().update(frame[0])
    full_lo, full_hi = robust_range(frame[0])
    assert lo == pytest.approx(full_lo, abs=0.01) and hi == pytest.approx(full_hi, abs=0.01)
    assert hi < 3.0  # not pulled towards the outliers


def test_small_frame_range_uses_every_value():
    frame = torch.rand(1, 100, 120)  # 12k values, under RANGE_SAMPLES
    assert TemporalNormalizer().update(frame) == robust_range(frame)
