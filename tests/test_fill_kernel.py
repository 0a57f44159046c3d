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


def _seams(seed: int, shape=(2, 3, 30, 80)):
    """Noise with hole runs of every width from 1 to 6 pixels (thin seams and wider holes),
    some at the frame's edges, and disparity with ties."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    image = torch.rand(b, c, h, w, generator=g)
    holes = torch.zeros(b, 1, h, w, dtype=torch.bool)
    for i in range(b):
        for y in range(h):
            x = int(torch.randint(0, 4, (1,), generator=g))
            while x < w:
                width = int(torch.randint(1, 7, (1,), generator=g))
                holes[i, 0, y, x : x + width] = True
                x += width + int(torch.randint(1, 12, (1,), generator=g))
    disparity = (torch.rand(b, 1, h, w, generator=g) * 4).round()  # ties between neighbours
    return image.masked_fill(holes, 0.0), holes, disparity.masked_fill(holes, 0.0)


def test_thin_holes_take_their_background_side_neighbour_and_wider_ones_are_left():
    from spatialdreamer.stereo.fill import fill_thin_holes

    image = torch.tensor([[[[0.1, 0.0, 0.2, 0.3, 0.0, 0.0, 0.4, 0.5, 0.0, 0.0, 0.0, 0.6]]]])
    holes = image == 0.0
    # nearer (larger) disparity left of the first seam, right of the second
    disparity = torch.tensor([[[[5.0, 0, 1, 1, 0, 0, 3, 6, 0, 0, 0, 1]]]])
    out, left, d = fill_thin_holes(image, holes, disparity, width=2)
    assert out[0, 0, 0].tolist() == pytest.approx([0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 0.5, 0, 0, 0, 0.6])
    assert d[0, 0, 0].tolist() == [5, 1, 1, 1, 1, 1, 3, 6, 0, 0, 0, 1]
    assert left[0, 0, 0].tolist() == [False] * 8 + [True] * 3 + [False]
    # width 0 fills nothing; width 3 takes the three-pixel run too
    assert torch.equal(fill_thin_holes(image, holes, disparity, width=0)[1], holes)
    assert not fill_thin_holes(image, holes, disparity, width=3)[1].any()


@pytest.mark.parametrize("side", ["right", "left"])
def test_compiled_thin_fill_equals_the_torch_ops(side):
    import numpy as np

    from spatialdreamer.stereo.fill import fill_thin_holes

    for seed in range(3):
        image, holes, disparity = _seams(seed)
        for width in (1, 2, 4):
            out, left, d = fill_thin_holes(image, holes, disparity, side, width)
            frames = image.mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            for i in range(len(frames)):
                before = holes[i, 0].numpy().copy()
                rest, rest_d = _fill_kernel.fill_thin_u8(
                    frames[i], holes[i, 0].numpy(), disparity[i, 0].numpy(), width
                )
                assert np.array_equal(holes[i, 0].numpy(), before)  # the caller's mask is left as it is
                assert np.array_equal(rest, left[i, 0].numpy())
                assert np.array_equal(rest_d, d[i, 0].numpy())
            expected = out.mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(frames, expected)


@pytest.mark.parametrize("side", ["right", "left"])
def test_with_thin_holes_the_compiled_float_and_uint8_fills_equal_the_torch_ops(monkeypatch, side):
    import numpy as np

    from spatialdreamer.stereo.fill import fill_holes_u8

    for seed in range(3):
        image, holes, disparity = _seams(seed)
        fast, ops = _fast_and_torch(monkeypatch, image, holes, disparity, background_side=side, thin=2)
        assert torch.equal(fast, ops)
        # and the seams changed the result: they are not inpainted
        assert not torch.equal(fast, fill_holes(image, holes, disparity, background_side=side))
        expected = ops.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)
        frames = image.mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        assert fill_holes_u8(
            frames, holes[:, 0].numpy(), disparity[:, 0].numpy(), background_side=side, thin=2
        )
        assert np.array_equal(frames, expected.numpy())


def test_only_the_wider_holes_are_inpainted():
    """A wide hole is inpainted (not the plain background copy); a seam beside it is the copy."""
    from spatialdreamer.stereo.fill import propagate_background

    image, holes, disparity = _seams(4)
    filled = fill_holes(image, holes, disparity, thin=2)
    copied, _ = propagate_background(image, holes, disparity)
    valid = ~holes[:, 0]
    left, right = (t.unsqueeze(1) for t in _nearest_valid_cols(valid))
    run = torch.where(right >= 0, right, holes.shape[-1]) - left - 1
    thin, wide = holes & (run <= 2), holes & (run > 2)
    assert thin.any() and wide.any()
    assert torch.equal(
        filled.masked_select(thin.expand_as(filled)), copied.masked_select(thin.expand_as(filled))
    )
    assert (filled - copied).abs().masked_select(wide.expand_as(filled)).max() > 0.05


def _nearest_valid_cols(valid):
    from spatialdreamer.stereo.fill import _nearest_valid

    return _nearest_valid(valid)
