"""The compiled CPU path of the classical hole fill equals its torch ops."""

import pytest
import torch

from spatialdreamer.dvg import forward_warp
from spatialdreamer.stereo import _fill_kernel, fill_holes

pytest.importorskip("numba")


def _fast_and_torch(monkeypatch, *args, **kwargs):
    fast = fill_holes(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(_fill_kernel, "available", lambda: False)
        ops = fill_holes(*args, **kwargs)
    return fast, ops


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("guard", [0, 2, 5])
@pytest.mark.parametrize("with_disparity", [True, False])
def test_compiled_fill_equals_the_torch_ops_on_warped_scenes(
    scenes, monkeypatch, side, guard, with_disparity
):
    for scene in scenes:
        warped = forward_warp(scene.left, scene.disparity)
        disparity = warped.disparity if with_disparity else None
        fast, ops = _fast_and_torch(
            monkeypatch, warped.image, warped.holes, disparity, background_side=side, guard=guard
        )
        assert torch.equal(fast, ops)


def test_compiled_fill_equals_the_torch_ops_on_noise_out_of_range_values_and_empty_rows(monkeypatch):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 20, 50, generator=g) * 1.2 - 0.1
    holes = torch.rand(3, 1, 20, 50, generator=g) > 0.6
    holes[0, 0, 3] = True  # a row without any valid pixel: filled with the frame's mean colour
    disparity = torch.rand(3, 1, 20, 50, generator=g) * 10
    for d in (disparity, None):
        fast, ops = _fast_and_torch(monkeypatch, image, holes, d)
        assert torch.equal(fast, ops)


def test_compiled_fill_keeps_valid_pixels_and_fills_every_hole(scenes):
    scene = scenes[0]
    warped = forward_warp(scene.left, scene.disparity)
    out = fill_holes(warped.image, warped.holes, warped.disparity)
    keep = ~warped.holes.expand_as(out)
    assert torch.equal(out[keep], warped.image[keep])
    assert float(out[~keep].min()) >= 0.0 and float(out[~keep].max()) <= 1.0


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_uint8_fill_in_windows_equals_the_float_fill_of_the_whole_frame(scenes, side):
    """``fill_holes_u8`` (context and inpainting only around the holes, in place in uint8)
    gives ``fill_holes``'s pixels as the output conversion rounds them."""
    import numpy as np

    from spatialdreamer.stereo.fill import fill_holes_u8

    g = torch.Generator().manual_seed(2)
    for scene in scenes:
        warped = forward_warp(scene.left, scene.disparity * 3)
        holes = warped.holes | (torch.rand(warped.holes.shape, generator=g) > 0.995)  # scattered ones
        image = warped.image.masked_fill(holes, 0.0)
        expected = fill_holes(image, holes, warped.disparity, background_side=side)
        expected = expected.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)
        frames = (
            image.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        )
        ok = fill_holes_u8(frames, holes[:, 0].numpy(), warped.disparity[:, 0].numpy(), background_side=side)
        assert ok
        assert np.array_equal(frames, expected.numpy())


def test_the_uint8_fill_of_scattered_hole_groups_equals_the_whole_frame_fill():
    """Hole groups far apart along rows (windows of their own) and along columns (sharing a
    band of rows), some close enough to share a window: still the whole frame's pixels."""
    import numpy as np

    from spatialdreamer.stereo.fill import _windows, fill_holes_u8

    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 160, 320, generator=g)
    holes = torch.zeros(1, 1, 160, 320, dtype=torch.bool)
    for y, x, size in [(10, 10, 3), (10, 60, 2), (12, 200, 4), (70, 15, 2), (72, 40, 3), (140, 300, 2)]:
        holes[..., y : y + size, x : x + size] = True
    disparity = torch.rand(1, 1, 160, 320, generator=g) * 8
    assert len(_windows(holes[0, 0].numpy(), 12)) == 3
    image = image.masked_fill(holes, 0.0)
    for side in ("right", "left"):
        expected = fill_holes(image, holes, disparity, background_side=side)
        expected = expected.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)
        frames = image.mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        assert fill_holes_u8(frames, holes[:, 0].numpy(), disparity[:, 0].numpy(), background_side=side)
        assert np.array_equal(frames, expected.numpy())
