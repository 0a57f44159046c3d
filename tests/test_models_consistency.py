"""Consistency control: stereo deviation strength, stereo-aware loss, windows and ramps."""

import pytest
import torch

from spatialdreamer.models import chunk_starts, ramp_weights, stereo_aware_loss, stereo_deviation_strength


def test_deviation_strength_is_mean_absolute_difference_per_sample():
    z_ref = torch.zeros(2, 3, 4, 2, 2)
    z0 = z_ref.clone()
    z0[0] += 0.5
    z0[1, :, :2] -= 2.0  # half the channels at distance 2 → mean 1
    s = stereo_deviation_strength(z0, z_ref)
    assert s.shape == (2,)
    torch.testing.assert_close(s, torch.tensor([0.5, 1.0]))
    assert stereo_deviation_strength(z0, z_ref, reduce=False).shape == z0.shape


def test_stereo_aware_loss_value_and_zero_at_ground_truth():
    g = torch.Generator().manual_seed(0)
    z0, z_ref = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 2, 4, 4, 4, generator=g)
    assert stereo_aware_loss(z0, z0.clone(), z_ref).item() == 0.0
    z_hat = z0 + 0.3 * torch.randn(z0.shape, generator=g)
    expected = (stereo_deviation_strength(z0, z_ref) - stereo_deviation_strength(z_hat, z_ref)).pow(2).mean()
    torch.testing.assert_close(stereo_aware_loss(z0, z_hat, z_ref), expected)
    assert stereo_aware_loss(z0, z_hat, z_ref, reduce_strength=False) > 0


def test_stereo_aware_loss_gradient_flows_to_prediction():
    g = torch.Generator().manual_seed(1)
    z0, z_ref = torch.randn(2, 4, 3, 3, generator=g), torch.zeros(2, 4, 3, 3)
    z_hat = (z0 * 1.5).requires_grad_(True)
    stereo_aware_loss(z0, z_hat, z_ref).backward()
    assert z_hat.grad is not None and z_hat.grad.abs().sum() > 0


def test_consistency_functions_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        stereo_deviation_strength(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 2))
    with pytest.raises(ValueError, match="z0_hat"):
        stereo_aware_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 4))


def test_chunk_starts_cover_everything_with_overlap():
    for length, size, overlap in [(10, 4, 1), (11, 4, 2), (3, 8, 2), (16, 16, 4), (17, 5, 0)]:
        starts = chunk_starts(length, size, overlap)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s : s + size] = True
            assert s + min(size, length) <= length
        assert covered.all()
        for a, b in zip(starts, starts[1:], strict=False):
            assert a + size - b >= overlap
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(10, 4, 4)


def test_ramp_weights_are_positive_and_flat_inside():
    w = ramp_weights(8, 3)
    assert (w > 0).all() and w.max() == 1.0
    assert torch.equal(w, w.flip(0))
    assert (w[1:4] > w[:3]).all()
    assert torch.equal(ramp_weights(5, 0), torch.ones(5))


def test_blending_reproduces_a_chunk_independent_prediction():
    from spatialdreamer.models.tiling import blend_chunks, plan_chunks

    field = torch.randn(2, 11, 3, 7, 9)
    plan = plan_chunks(11, 7, 9, window=4, window_overlap=2, tile=4, tile_overlap=1)
    assert len(plan.slices) > 4
    torch.testing.assert_close(blend_chunks(plan, field.shape, lambda sl: field[sl] * 2), field * 2)


def test_window_boundaries_ramp_instead_of_jumping():
    """Two windows that disagree completely (0 vs 1) meet through a ramp, not a step: no flash."""
    from spatialdreamer.models.tiling import blend_chunks, plan_chunks

    overlap = 3
    plan = plan_chunks(12, 2, 2, window=8, window_overlap=overlap)
    assert [sl[1].start for sl in plan.slices] == [0, 4]
    per_frame = blend_chunks(
        plan, (1, 12, 1, 2, 2), lambda sl: torch.full((1, 8, 1, 2, 2), float(sl[1].start > 0))
    )
    curve = per_frame[0, :, 0, 0, 0]
    assert curve[0] == 0 and curve[-1] == 1
    jumps = curve.diff()
    assert (jumps >= 0).all() and jumps.max() < 0.5, curve
