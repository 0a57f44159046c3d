"""Temporal normalisation of inverse depth: stable across frames, reset at cuts, never per-frame min-max."""

from __future__ import annotations

import pytest
import torch

from spatialdreamer.depth import TemporalNormalizer
from spatialdreamer.synth import make_scene


def _per_frame_min_max(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


@pytest.fixture(scope="module")
def static_shot():
    """24 frames of one static scene's inverse depth with per-frame noise and a few extreme outliers."""
    truth = 1.0 / make_scene(3, height=48, width=64, frames=1).depth[0]  # [1,H,W]
    gen = torch.Generator().manual_seed(0)
    frames = truth.expand(24, 1, -1, -1) * (1.0 + 0.01 * torch.randn(24, 1, 48, 64, generator=gen))
    frames = frames.clone()
    for t in range(24):  # a few speckles per frame, like depth-model outliers at edges and sky
        idx = torch.randint(0, 48 * 64, (6,), generator=gen)
        frames[t, 0].view(-1)[idx] = truth.max() * float(torch.empty(1).uniform_(2.0, 20.0, generator=gen))
    return truth, frames


def test_normalized_pixel_is_much_steadier_than_per_frame_min_max(static_shot):
    truth, frames = static_shot
    ours = TemporalNormalizer()(frames)
    minmax = _per_frame_min_max(frames)
    assert ours.shape == frames.shape and ours.dtype == frames.dtype
    assert ours.min() >= 0 and ours.max() <= 1
    # a fixed pixel over time: its relative temporal spread (std / mean), median over the frame
    ours_spread = (ours.std(dim=0) / ours.mean(dim=0).clamp(min=1e-3)).median()
    minmax_spread = (minmax.std(dim=0) / minmax.mean(dim=0).clamp(min=1e-3)).median()
    assert ours_spread < 0.2 * minmax_spread
    # and the normalised frame still orders depth like the truth
    corr = torch.corrcoef(torch.stack([ours[-1].flatten(), truth.flatten()]))[0, 1]
    assert corr > 0.9


def test_ema_damps_range_jumps_that_per_frame_percentiles_pass_on():
    # a near object (10 % of the frame) flickers in and out, as depth models do at the frame edge
    truth = 1.0 / make_scene(4, height=40, width=60, frames=1).depth[0]
    frames = truth.expand(20, 1, -1, -1).clone()
    frames[::2, :, :, :6] = 3.0 * truth.max()
    background = (slice(None), slice(None), slice(None), slice(6, None))
    ema = TemporalNormalizer(momentum=0.1)(frames)[8:][background]  # after the EMA has settled
    per_frame = TemporalNormalizer(momentum=1.0, release=1.0)(frames)[8:][background]
    ema_spread = (ema.std(dim=0) / ema.mean(dim=0).clamp(min=1e-3)).median()
    per_frame_spread = (per_frame.std(dim=0) / per_frame.mean(dim=0).clamp(min=1e-3)).median()
    assert ema_spread < 0.3 * per_frame_spread


def test_range_is_an_ema_of_robust_percentiles():
    norm = TemporalNormalizer(momentum=0.25, low=0.0, high=100.0, release=0.25)
    a = torch.linspace(1.0, 2.0, 100).view(1, 1, 10, 10)
    norm(a)
    assert norm.range == pytest.approx((1.0, 2.0))
    norm(a + 1.0)  # one frame shifted by 1 moves the range by momentum * 1
    assert norm.range == pytest.approx((1.25, 2.25))
    # the same two frames in one batch: frame 1 is mapped through the blended range, not its own
    out = TemporalNormalizer(momentum=0.25, low=0.0, high=100.0, release=0.25)(torch.cat([a, a + 1.0]))
    torch.testing.assert_close(out[0], (a[0] - 1.0) / 1.0)
    torch.testing.assert_close(out[1], ((a[0] + 1.0 - 1.25) / 1.0).clamp(0, 1))


def test_range_widens_at_momentum_and_narrows_at_release():
    """A model's range that halves and comes back within a shot (the scene unchanged) hardly
    moves the normalised depth of what stays; a wider range is taken at the momentum."""
    norm = TemporalNormalizer(momentum=0.25, low=0.0, high=100.0, release=0.01)
    a = torch.linspace(1.0, 2.0, 100).view(1, 1, 10, 10)
    norm(a)
    norm(torch.linspace(1.0, 3.0, 100).view(1, 1, 10, 10))  # wider: at the momentum
    assert norm.range == pytest.approx((1.0, 2.25))
    norm(a)  # narrower: at the release
    assert norm.range == pytest.approx((1.0, 2.25 - 0.01 * 0.25))
    with pytest.raises(ValueError, match="release"):
        TemporalNormalizer(release=1.5)
    # the swing: the near half of the range fades out for 30 frames and comes back
    swing = [a] * 10 + [torch.linspace(1.0, 1.5, 100).view(1, 1, 10, 10)] * 30 + [a] * 10
    still = torch.full((1, 1, 10, 10), 1.2)  # a pixel whose depth the model keeps
    drift = {}
    for release in (0.02, 0.002):
        norm = TemporalNormalizer(momentum=0.02, low=0.0, high=100.0, release=release)
        frames = [torch.cat([frame[..., :9, :], still[..., 9:, :]], dim=2) for frame in swing]
        values = [float(norm(frame)[0, 0, 9, 0]) for frame in frames]
        drift[release] = max(values) - min(values)
    assert drift[0.002] < 0.2 * drift[0.02]


def test_cut_adopts_a_very_different_range_immediately():
    gen = torch.Generator().manual_seed(1)
    near = 1.0 + torch.rand(10, 1, 24, 32, generator=gen)  # inverse depth 1..2
    far = 10.0 + 40.0 * torch.rand(2, 1, 24, 32, generator=gen)  # a new shot, 10..50
    frames = torch.cat([near, far])
    cut = [False] * 10 + [True, False]
    with_cut = TemporalNormalizer()(frames, cut=cut)
    new_shot = with_cut[10:]
    assert new_shot.quantile(0.1) < 0.15 and new_shot.quantile(0.9) > 0.85  # spans [0, 1] at once
    without_cut = TemporalNormalizer()(frames)
    assert without_cut[10].mean() > 0.95  # the old range saturates the new shot
    norm = TemporalNormalizer()
    norm(near)
    norm.reset()
    torch.testing.assert_close(norm(far[:1]), with_cut[10:11])


def test_to_disparity_applies_budget_and_convergence():
    inv = torch.linspace(1.0, 3.0, 200).view(1, 1, 1, 200).expand(2, 1, 8, 200).contiguous()
    disparity = TemporalNormalizer(low=0.0, high=100.0).to_disparity(inv, budget=5.0, convergence=0.5)
    assert disparity.shape == inv.shape
    # 5 % of 200 px = 10 px between far and near; zero parallax in the middle
    assert disparity.min() == pytest.approx(-5.0) and disparity.max() == pytest.approx(5.0)
    assert (disparity[..., 1:] >= disparity[..., :-1]).all()  # nearer → more disparity
    with pytest.raises(ValueError, match="convergence"):
        TemporalNormalizer().to_disparity(inv, convergence=1.5)


@pytest.mark.parametrize(
    "value, cut, match",
    [
        (torch.rand(2, 32, 32), None, r"\[B,1,H,W\]"),
        (torch.rand(2, 3, 32, 32), None, r"\[B,1,H,W\]"),
        (torch.zeros(2, 1, 32, 32, dtype=torch.int64), None, "float"),
        (torch.rand(2, 1, 32, 32), [True], "one flag per frame"),
    ],
)
def test_bad_input_is_rejected(value, cut, match):
    with pytest.raises(ValueError, match=match):
        TemporalNormalizer()(value, cut=cut)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="momentum"):
        TemporalNormalizer(momentum=0.0)
    with pytest.raises(ValueError, match="low"):
        TemporalNormalizer(low=50.0, high=10.0)
