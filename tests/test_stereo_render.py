"""Rendering the eyes: both or one, edge dilation, screen borders, steady depth, comfort per shot."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spatialdreamer.dvg import forward_warp
from spatialdreamer.dvg.disparity import dilate_foreground
from spatialdreamer.stereo import fill_holes
from spatialdreamer.stereo.comfort import ComfortBound, ConvergencePlanner, check_report_path, salient_depth
from spatialdreamer.stereo.render import RefinedEye, StereoRenderer, warp_with_borders
from spatialdreamer.stereo.stabilize import DepthStabilizer
from spatialdreamer.synth.scenes import Layer, SceneSpec, render_frame

_WAVES = ((0.7, 0.3, 0.0), (0.25, -0.6, 1.0), (1.1, 0.1, 2.0))


def _edge_scene(h: int = 64, w: int = 128) -> dict[str, torch.Tensor]:
    """A textured wall behind the screen and a near card cut by the right frame edge."""
    wall = Layer(
        "plane", (w / 2, h / 2), (0, 0), -6.0, (0, 0), (0, 0), ((0.1, 0.2, 0.7), (0.9, 0.8, 0.3)), _WAVES
    )
    card = Layer(
        "rect", (w - 10, h / 2), (24, 40), 8.0, (0, 0), (0, 0), ((0.8, 0.1, 0.1), (0.2, 0.9, 0.2)), _WAVES
    )
    frame = render_frame(SceneSpec(h, w, 1, 24.0, 0.0, 8.0, 16.0, 6.0, (wall, card)), 0)
    return {k: v[None] for k, v in frame.items()}


def _texture(image: torch.Tensor) -> float:
    return float(image.diff(dim=-1).abs().mean())


def test_both_eyes_get_half_the_disparity_each():
    frames = torch.rand(2, 3, 8, 32)
    left, right = StereoRenderer("both", edge_dilation=(0, 0))(frames, torch.full((2, 1, 8, 32), 4.0))
    assert torch.equal(right[..., 4:28], frames[..., 6:30])  # moved 2 px left
    assert torch.equal(left[..., 4:28], frames[..., 2:26])  # moved 2 px right


@pytest.mark.parametrize("eye", ["right", "left"])
def test_one_synthesized_eye_gets_the_whole_disparity_and_the_source_is_the_other(eye):
    frames = torch.rand(1, 3, 8, 32)
    left, right = StereoRenderer(eye, edge_dilation=(0, 0))(frames, torch.full((1, 1, 8, 32), 4.0))
    synthesized, source = (right, left) if eye == "right" else (left, right)
    assert source is None
    expected = frames[..., 8:28] if eye == "right" else frames[..., 4:24]
    got = synthesized[..., 4:24] if eye == "right" else synthesized[..., 8:28]
    assert torch.equal(got, expected)


def test_screen_borders_show_the_mirrored_scene_not_a_smear():
    scene = _edge_scene()
    left, right, disparity = scene["left"], scene["right"], scene["disparity"]
    old = forward_warp(left, disparity)
    smeared = fill_holes(old.image, old.holes, old.disparity)
    new = warp_with_borders(left, disparity)
    bordered = fill_holes(new.image, new.holes, new.disparity)
    band = slice(0, 6)  # the wall behind the screen moves 6 px right: the left band is exposed
    assert _texture(smeared[..., band]) < 0.2 * _texture(right[..., band])  # one colour per row
    assert _texture(bordered[..., band]) > 0.7 * _texture(right[..., band])
    assert not new.holes[..., band].any() and old.holes[..., band].all()
    right_band = slice(128 - 8, 128)  # the near card moves 8 px left, off its frame edge
    assert not new.holes[..., right_band].any()
    card_red = right[:, 0, 20:44, right_band].mean()
    assert abs(float(bordered[:, 0, 20:44, right_band].mean() - card_red)) < 0.1


def test_edge_dilation_grows_the_near_side_only():
    d = torch.zeros(1, 1, 5, 9)
    d[..., 2, 4] = 3.0
    grown = dilate_foreground(d, (2, 1))
    assert grown[0, 0, 1:4, 2:7].eq(3.0).all() and grown.eq(3.0).sum() == 15
    assert torch.equal(dilate_foreground(d, (0, 0)), d)
    noise = torch.rand(2, 1, 9, 13)
    for rx, ry in ((2, 1), (3, 0), (0, 2)):  # the same as a flat max filter
        reference = F.max_pool2d(noise, (2 * ry + 1, 2 * rx + 1), stride=1, padding=(ry, rx))
        assert torch.equal(dilate_foreground(noise, (rx, ry)), reference)


def test_edge_dilation_removes_the_halo_of_soft_depth(scenes):
    """Soft model depth leaves foreground colour on the background; dilating it gets closer to
    the true right view (measured on a synth scene with its exact depth blurred)."""
    scene = scenes[0]
    soft = F.avg_pool2d(F.pad(scene.disparity[:1], (3, 3, 0, 0), mode="replicate"), (1, 7), 1)

    def psnr(radius):
        out = forward_warp(scene.left[:1], dilate_foreground(soft, radius))
        filled = fill_holes(out.image, out.holes, out.disparity)
        return float(10 * torch.log10(1 / ((filled - scene.right[:1]) ** 2).mean()))

    assert psnr((2, 1)) > psnr((0, 0)) + 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: StereoRenderer("up"), "--eye"),
        (lambda: StereoRenderer(thin_holes=-1), "thin_holes"),
        (lambda: dilate_foreground(torch.zeros(1, 1, 4, 4), (-1, 0)), "radius"),
        (lambda: dilate_foreground(torch.zeros(1, 4, 4), (1, 0)), r"\[B,1,H,W\]"),
        (lambda: DepthStabilizer(strength=1.0), "strength"),
        (lambda: DepthStabilizer()(torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4)), "differ"),
        (lambda: ComfortBound(crossed=0.0), "comfort"),
        (lambda: ConvergencePlanner(convergence=1.5), "convergence"),
        (lambda: ConvergencePlanner(lookahead=-1), "lookahead"),
        (lambda: check_report_path("shots.txt"), ".csv or .json"),
        (lambda: check_report_path("/no/such/folder/shots.csv"), "does not exist"),
    ],
)
def test_bad_rendering_options_raise_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_still_pixels_keep_their_depth_and_moving_ones_follow_at_once():
    torch.manual_seed(0)
    still = torch.rand(1, 3, 32, 48)
    frames = still.repeat(6, 1, 1, 1)
    for t in range(6):  # a bright square moving 4 px per frame through the bottom rows
        frames[t, :, 24:32, 4 * t : 4 * t + 8] = 1.0
    depth = 0.3 + 0.05 * torch.randn(6, 1, 32, 48)  # depth that wobbles everywhere
    steady = DepthStabilizer(strength=0.9)(frames, depth)
    top = slice(0, 12)  # never touched by the square, nor within its widened mask
    raw_wobble = (depth[1:, :, top] - depth[:-1, :, top]).abs().mean()
    assert (steady[1:, :, top] - steady[:-1, :, top]).abs().mean() < 0.2 * raw_wobble
    for t in range(1, 6):  # what the square covers and uncovers takes the new depth: no ghost
        for band in (slice(4 * t - 4, 4 * t), slice(4 * t + 4, 4 * t + 8)):  # trailing, leading
            assert torch.equal(steady[t, :, 24:32, band], depth[t, :, 24:32, band])


def test_auto_convergence_puts_the_salient_depth_on_the_screen_within_the_comfort_bound():
    normalized = torch.full((4, 1, 36, 64), 0.1)
    normalized[..., 6:30, 12:52] = 0.9  # a near subject filling the centre
    planner = ConvergencePlanner(budget=6.0, convergence=None, bound=ComfortBound(2.0, 1.5))
    disparity = planner(normalized)
    assert abs(float(salient_depth(normalized)[0]) - 0.9) < 1e-6
    assert disparity[:, :, 18, 32].abs().max() < 1e-5  # the subject sits on the screen
    row = planner.report(fps=24.0).iloc[0]
    width = 64
    assert float(disparity.max()) <= 2.0 / 100 * width + 1e-5  # in front: within 2 %
    assert float(-disparity.min()) <= 1.5 / 100 * width + 1e-5  # behind: within 1.5 %
    assert row.crossed_pct_max <= 2.0 + 1e-6 and row.uncrossed_pct_max <= 1.5 + 1e-6
    assert row.budget_pct_mean < 6.0  # the budget was cut to stay comfortable


def test_the_screen_plane_moves_smoothly_in_a_shot_and_restarts_at_a_cut(tmp_path):
    planner = ConvergencePlanner(budget=3.0, convergence=None, max_step=0.05)
    width = 640
    near = torch.full((8, 1, 36, width), 0.8)
    far = torch.full((8, 1, 36, width), 0.2)
    conv_near, _ = planner.plan(near)
    conv_far, budget = planner.plan(far)  # the subject changes within the shot
    steps = (conv_far - torch.cat([conv_near[-1:], conv_far[:-1]])).abs() * budget / 100 * width
    assert float(steps.max()) <= 0.051  # no jump: a bounded step per frame (at the budget it started from)
    planner.reset()  # a cut: the new shot takes its own plane at once
    conv_cut, _ = planner.plan(far)
    assert abs(float(conv_cut[0]) - 0.2) < 1e-6
    table = planner.report(fps=24.0)
    assert table["frames"].tolist() == [16, 8] and table["first_frame"].tolist() == [0, 16]
    assert table["start_s"].iloc[1] == pytest.approx(16 / 24)
    for name in ("shots.csv", "shots.json"):
        path = planner.write_report(tmp_path / name, fps=24.0)
        read = pd.read_csv(path) if name.endswith(".csv") else pd.read_json(path)
        assert read["frames"].tolist() == [16, 8]


def test_fixed_convergence_passes_the_budget_through():
    planner = ConvergencePlanner(budget=4.0, convergence=0.25)
    normalized = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
    disparity = planner(normalized)
    assert torch.allclose(disparity[0, 0, 0], torch.tensor([-0.03, 0.0, 0.09]), atol=1e-6)
    assert planner.report(fps=10.0)["mode"].tolist() == ["fixed"]


class _GreyFill:
    """Stands in for a StreamingRefiner: fills holes with grey, holds nothing back."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def push(self, image, holes, source, disparity):
        self.seen.append(source)
        return torch.where(holes, torch.full_like(image, 0.5), image)

    def flush(self):
        return torch.empty(0, 3, 8, 32)


@pytest.mark.parametrize("eye", ["right", "left"])
def test_a_refined_left_eye_is_the_mirrored_right_eye_problem(eye):
    frames = torch.rand(2, 3, 8, 32)
    disparity = torch.rand(2, 1, 8, 32) * 6
    fill = _GreyFill()
    refined = RefinedEye(fill, eye, edge_dilation=(0, 0)).push(frames, disparity)
    warped = warp_with_borders(frames, disparity, towards=eye)
    assert torch.equal(refined, torch.where(warped.holes, torch.full_like(warped.image, 0.5), warped.image))
    # the model sees a right-eye problem: a left source, mirrored when the left eye is made
    assert torch.equal(fill.seen[0], frames if eye == "right" else frames.flip(-1))
    with pytest.raises(ValueError, match="one eye"):
        RefinedEye(fill, "both")


@pytest.mark.parametrize("fmt", ["full-sbs", "full-tb"])
@pytest.mark.parametrize("eye", ["both", "right", "left"])
def test_rendering_straight_into_the_output_frames_gives_the_pixels_of_the_float_path(scenes, eye, fmt):
    """``render_layout`` (uint8 warp into the output buffer, fill in windows around the holes)
    equals ``pack_eyes`` of the float eyes to the last bit; with noise disparity (many holes,
    far apart and close together) and with a scene's own."""
    pytest.importorskip("numba")
    from spatialdreamer.convert import pack_eyes, render_layout

    g = torch.Generator().manual_seed(1)
    noise = torch.rand(2, 3, 40, 90, generator=g)
    noise_disparity = (torch.rand(2, 1, 40, 90, generator=g) * 12).round() - 3
    cases = [(noise, noise_disparity)] + [(s.left, s.disparity) for s in scenes]
    for frames, disparity in cases:
        renderer = StereoRenderer(eye)
        source = (frames * 255 + 0.5).to(torch.uint8)
        expected = pack_eyes(source, *renderer(frames, disparity), fmt)
        packed = render_layout(renderer, source, frames, disparity, fmt)
        assert packed is not None and packed.dtype == torch.uint8
        assert torch.equal(packed, expected)


def test_rendering_into_the_output_frames_steps_aside_where_it_cannot(monkeypatch):
    """Half layouts and no inpainting take the float path; so does a frame with a row that
    is all hole (the float fill gives it the frame's mean colour)."""
    pytest.importorskip("numba")
    import numpy as np

    from spatialdreamer.convert import render_layout
    from spatialdreamer.stereo import render
    from spatialdreamer.stereo.fill import fill_holes_u8

    frames = torch.rand(1, 3, 6, 40)
    source = (frames * 255 + 0.5).to(torch.uint8)
    disparity = torch.ones(1, 1, 6, 40)
    assert render_layout(StereoRenderer("both"), source, frames, disparity, "half-sbs") is None
    assert render_layout(StereoRenderer("both", inpaint=False), source, frames, disparity, "full-sbs") is None
    pixels = np.zeros((1, 6, 40, 3), np.uint8)
    holes = np.zeros((1, 6, 40), np.bool_)
    holes[0, 2] = True
    assert not fill_holes_u8(pixels, holes, np.zeros((1, 6, 40), np.float32))
    monkeypatch.setattr(render, "fill_holes_u8", lambda *args, **kwargs: False)
    assert render_layout(StereoRenderer("both"), source, frames, disparity, "full-sbs") is None


def test_the_renderer_fills_thin_seams_without_inpainting_in_both_paths():
    """A disparity step of 1.5 pixels per eye opens a two-pixel seam in the left eye: the
    renderer copies its background-side (farther) neighbour there instead of inpainting it, in
    the float and the uint8 path alike."""
    pytest.importorskip("numba")
    from spatialdreamer.convert import pack_eyes, render_layout

    g = torch.Generator().manual_seed(5)
    frames = torch.rand(1, 3, 24, 64, generator=g)
    disparity = torch.zeros(1, 1, 24, 64)
    disparity[..., 30:] = 3.0  # nearer on the right: the left eye sees a gap open at column 30
    renderer = StereoRenderer("both", edge_dilation=(0, 0))
    left, right = renderer(frames, disparity)
    inpainted, _ = StereoRenderer("both", edge_dilation=(0, 0), thin_holes=0)(frames, disparity)
    holes = warp_with_borders(frames, disparity * 0.5, towards="left").holes
    assert int(holes.sum()) == 48 and bool(holes[..., 30:32].all())  # two pixels in each row
    seam = left[..., 30:32]
    assert torch.equal(seam, left[..., 29:30].expand_as(seam))  # the farther (left) neighbour
    assert not torch.equal(inpainted[..., 30:32], seam)
    source = (frames * 255 + 0.5).to(torch.uint8)
    packed = render_layout(renderer, source, frames, disparity, "full-sbs")
    assert torch.equal(packed, pack_eyes(source, left, right, "full-sbs"))
