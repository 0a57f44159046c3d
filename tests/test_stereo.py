import pytest
import torch

from spatialdreamer.dvg import forward_warp
from spatialdreamer.stereo import FORMATS, compose, fill_holes, layout_tag, output_size, propagate_background


@pytest.fixture
def eyes():
    left = torch.rand(2, 3, 10, 14)
    right = torch.rand(2, 3, 10, 14)
    return left, right


def test_full_layouts_place_each_eye_unscaled(eyes):
    left, right = eyes
    sbs = compose(left, right, "full-sbs")
    assert sbs.shape == (2, 3, 10, 28)
    assert torch.equal(sbs[..., :14], left) and torch.equal(sbs[..., 14:], right)
    tb = compose(left, right, "full-tb")
    assert tb.shape == (2, 3, 20, 14)
    assert torch.equal(tb[..., :10, :], left) and torch.equal(tb[..., 10:, :], right)


def test_half_layouts_keep_the_source_size_and_squeeze_each_eye(eyes):
    left, right = eyes
    sbs = compose(left, right, "half-sbs")
    assert sbs.shape == (2, 3, 10, 14)
    assert torch.allclose(sbs[..., :7], (left[..., 0::2] + left[..., 1::2]) / 2, atol=1e-6)
    tb = compose(left, right, "half-tb")
    assert tb.shape == (2, 3, 10, 14)
    assert torch.allclose(tb[..., 5:, :], (right[..., 0::2, :] + right[..., 1::2, :]) / 2, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_size_matches_composition(eyes, fmt):
    left, right = eyes
    assert compose(left, right, fmt).shape[-2:] == output_size(10, 14, fmt)


def test_anaglyph_sends_left_to_red_and_right_to_cyan():
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    only_left = compose(white, black, "anaglyph")
    only_right = compose(black, white, "anaglyph")
    assert only_left[0, 0].mean() > 0.6 and only_left[0, 1:].max() < 0.05
    assert only_right[0, 1:].mean() > 0.6 and only_right[0, 0].max() < 0.05
    assert float(only_right.min()) >= 0 and float(only_right.max()) <= 1


def test_layout_tags_are_the_names_players_detect():
    assert layout_tag("full-sbs") == "_LRF_Full_SBS"
    assert layout_tag("half-sbs") == "_LR_Half_SBS"
    assert "TB" in layout_tag("full-tb") and "TB" in layout_tag("half-tb")
    with pytest.raises(ValueError, match="unknown stereo format"):
        layout_tag("checkerboard")
    with pytest.raises(ValueError, match="unknown stereo format"):
        compose(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), "checkerboard")


def test_holes_are_filled_from_the_background_side():
    img = torch.zeros(1, 1, 1, 10)
    img[..., :4] = 0.9  # foreground, near
    img[..., 7:] = 0.2  # background, far
    disp = torch.zeros(1, 1, 1, 10)
    disp[..., :4] = 8.0
    holes = torch.zeros(1, 1, 1, 10, dtype=torch.bool)
    holes[..., 4:7] = True
    filled, source = propagate_background(img, holes, disp)
    assert filled[0, 0, 0, 4:7].tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert source[0, 0, 4:7].tolist() == [7, 7, 7]
    # without disparity the background side is given
    filled_left, _ = propagate_background(img, holes, background_side="left")
    assert filled_left[0, 0, 0, 4:7].tolist() == pytest.approx([0.9, 0.9, 0.9])


def test_fill_keeps_valid_pixels_and_fills_holes_with_background(scenes):
    errors = {"inpaint": 0.0, "propagate": 0.0, "zero": 0.0}
    for scene in scenes:
        warped = forward_warp(scene.left, scene.disparity)
        inside = (warped.holes & scene.occlusion).expand_as(warped.image)
        for name, image in (
            ("inpaint", fill_holes(warped.image, warped.holes, warped.disparity)),
            ("propagate", fill_holes(warped.image, warped.holes, warped.disparity, inpaint=False)),
            ("zero", warped.image),
        ):
            keep = (~warped.holes).expand_as(image)
            assert torch.equal(image[keep], warped.image[keep])
            errors[name] += float(((image - scene.right) ** 2)[inside].mean())
    assert errors["propagate"] < errors["zero"] / 5
    assert errors["inpaint"] < errors["zero"] / 5
    assert errors["inpaint"] < 1.25 * errors["propagate"]


def test_fill_with_no_holes_is_identity_and_rejects_bad_masks():
    img = torch.rand(1, 3, 4, 4)
    assert torch.equal(fill_holes(img, torch.zeros(1, 1, 4, 4, dtype=torch.bool)), img)
    with pytest.raises(ValueError, match=r"holes a bool \[B,1,H,W\]"):
        fill_holes(img, torch.zeros(1, 1, 4, 4))
