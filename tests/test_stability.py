"""Shimmer: the synthesized eyes must stay as still as the source where the source is still,
without dragging old depth behind moving objects (``benchmarks/stability.py`` measures both)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
from spatialdreamer.stereo.comfort import ConvergencePlanner
from spatialdreamer.stereo.render import StereoRenderer
from spatialdreamer.stereo.stabilize import DepthStabilizer


def _wobbling_clip(frames: int = 60, h: int = 48, w: int = 96):
    """A still textured picture with a textured square moving 2 px per frame, its true disparity
    (background 2 px, square 8 px), and that disparity as a depth model gives it: drifting slowly
    (a range that swings, 0.6 px over 30 frames) plus new noise each frame."""
    gen = torch.Generator().manual_seed(0)
    background = torch.rand(1, 3, h, w, generator=gen)
    square = torch.rand(1, 3, 12, 12, generator=gen)
    video = background.repeat(frames, 1, 1, 1)
    truth = torch.full((frames, 1, h, w), 2.0)
    for t in range(frames):
        x = 4 + 2 * t % (w - 16)
        video[t, :, 30:42, x : x + 12] = square[0]
        truth[t, :, 30:42, x : x + 12] = 8.0
    drift = 0.3 * torch.sin(torch.arange(frames) / 30 * 2 * math.pi).view(-1, 1, 1, 1)
    raw = truth + drift + 0.1 * torch.randn(frames, 1, h, w, generator=gen)
    return video, truth, raw


@pytest.mark.parametrize("lookahead", [0, 4])
def test_stabilizer_holds_still_pixels_through_drift_and_noise_and_does_not_drag_moving_ones(lookahead):
    video, truth, raw = _wobbling_clip()
    steady = DepthStabilizer(0.85, lookahead=lookahead)(video, raw)
    plain_average = DepthStabilizer(0.85, slowest=1.0)(video, raw)  # the stabiliser before
    top = (slice(10, None), slice(None), slice(0, 20))  # never near the square, after 10 frames
    raw_change = (raw[1:] - raw[:-1])[top].abs().mean()
    change = (steady[1:] - steady[:-1])[top].abs().mean()
    assert change < 0.1 * raw_change
    assert change < 0.5 * (plain_average[1:] - plain_average[:-1])[top].abs().mean()
    # on the square and the background it uncovers, the depth follows the estimate at once
    moving = (video[1:] - video[:-1]).abs().amax(1, keepdim=True) > 0.1
    assert (steady[1:] - raw[1:])[moving].abs().max() < 1e-5
    square = truth[1:] == 8.0  # no ghost: off the truth there by no more than the estimate is
    assert (steady[1:] - truth[1:])[square].abs().mean() < (raw[1:] - truth[1:])[square].abs().mean() + 0.02


def _grey(frames: torch.Tensor) -> torch.Tensor:
    """8-bit grey as the encoder gets it (mean of the rounded channels)."""
    return (frames.clamp(0, 1) * 255 + 0.5).floor().mean(1, keepdim=True)


@pytest.fixture(scope="module")
def movie(real_video) -> Path:
    return real_video("bigbuckbunny.mp4")


def test_big_buck_bunny_eyes_shimmer_at_most_three_times_the_source_on_still_regions(movie):
    """The converter's chain with its defaults (``parallax`` depth, both eyes) on the real clip at
    half size, no encoding: on still regions (still over the stretch an eye pixel can show),
    each eye changes at most 3x as much per frame as the source (17x when the issue came in)."""
    from spatialdreamer.video import stream_frames

    source = torch.cat([c.frames for c in stream_frames(movie, 16)])[:96]
    source = F.interpolate(source.float(), size=(360, 640), mode="area").round().div_(255.0)
    estimator = load_depth_estimator("parallax", device="cpu")
    normalizer, planner = TemporalNormalizer(), ConvergencePlanner(3.0, 0.5)
    stabilizer, renderer = DepthStabilizer(0.85, lookahead=4), StereoRenderer("both")
    eyes = {"left": [], "right": []}
    done = 0
    for start in [*range(0, len(source), 16), None]:  # as convert runs it: 4 frames late
        if start is None:
            steady = stabilizer.flush()
        else:
            frames = source[start : start + 16]
            steady = stabilizer.push(frames, planner(normalizer(estimator(frames))))
        left, right = renderer(source[done : done + len(steady)], steady)
        done += len(steady)
        eyes["left"].append(_grey(left))
        eyes["right"].append(_grey(right))
    assert done == len(source)
    grey = _grey(source)
    change = (grey[1:] - grey[:-1]).abs()
    reach = int(0.03 * 640 / 4) + 2  # each eye: half the 3 % budget, half of it either side
    still = F.max_pool2d(change, (3, 2 * reach + 1), stride=1, padding=(1, reach)) < 2
    assert still.float().mean() > 0.2
    for name, eye in eyes.items():
        eye = torch.cat(eye)
        ratio = (eye[1:] - eye[:-1]).abs()[still].mean() / change[still].mean()
        assert ratio <= 3.0, f"{name} eye shimmers {float(ratio):.2f}x the source"


def _still_noisy(frames: int = 40, h: int = 24, w: int = 48, noise: float = 0.3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, h, w, generator=gen).repeat(frames, 1, 1, 1)
    raw = 4.0 + noise * torch.randn(frames, 1, h, w, generator=gen)
    return video, raw


def test_lookahead_averages_the_noise_of_still_pixels_centred_not_lagging():
    video, raw = _still_noisy()
    now = DepthStabilizer(0.85, lookahead=0, feather=0)(video, raw)
    ahead = DepthStabilizer(0.85, lookahead=4, feather=0)(video, raw)
    change = lambda d: (d[11:] - d[10:-1]).abs().mean()  # noqa: E731
    assert change(ahead) < 0.6 * change(now)  # the target averages 5 estimates: noise / sqrt(5)
    # a step of the estimate on a still picture: the look-ahead starts following before it
    step = torch.cat([torch.zeros(20, 1, 24, 48), torch.ones(20, 1, 24, 48)])
    ahead = DepthStabilizer(0.85, lookahead=4, feather=0)(video, step)
    assert float(ahead[19].mean()) > 0.0 and float(ahead[15].mean()) == 0.0


def test_lookahead_never_takes_depth_from_something_that_moves_in_later():
    """A square arrives at frame 10: before it does, the pixels it will cover keep their depth
    (no pre-echo of the square's depth); from then on they take the square's at once."""
    video, _ = _still_noisy(20)
    raw = torch.full((20, 1, 24, 48), 2.0)
    square = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    for t in range(10, 20):
        video[t, :, 8:16, 20:28] = square
        raw[t, :, 8:16, 20:28] = 9.0
    out = DepthStabilizer(0.85, lookahead=4)(video, raw)
    assert float((out[:10] - 2.0).abs().max()) < 1e-5
    assert float((out[10, :, 8:16, 20:28] - 9.0).abs().max()) < 1e-5


@pytest.mark.parametrize("sizes", [[40], [3, 5, 1, 31], [4] * 10])
def test_pushed_in_any_pieces_the_stabiliser_gives_the_same_depth_lookahead_frames_late(sizes):
    video, raw = _wobbling_clip(40)[0], _wobbling_clip(40)[2]
    reference = DepthStabilizer(0.85, lookahead=4)(video, raw)
    stab, out, start = DepthStabilizer(0.85, lookahead=4), [], 0
    for n in sizes:
        ready = stab.push(video[start : start + n], raw[start : start + n])
        start += n
        assert len(ready) == max(0, start - 4) - sum(len(o) for o in out)  # 4 frames behind
        out.append(ready)
    out.append(stab.flush())
    assert stab.pending == 0
    assert torch.equal(torch.cat(out), reference)


def test_feathering_turns_the_seam_between_held_and_fresh_depth_into_a_ramp():
    """A still picture whose estimate jumps by 4 px at frame 20 while a band in the middle
    starts to move: the band takes the new depth at once, the still pixels beside it hold the
    old one. Unfeathered the two meet in a 4 px step (a depth edge to the warp: a hole);
    feathered, the depth changes by less than 1 px from one column to the next."""
    frames, h, w = 24, 16, 96
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, h, w, generator=gen).repeat(frames, 1, 1, 1)
    for t in range(20, frames):
        video[t, :, :, 40:56] = torch.rand(3, h, 16, generator=gen)  # the band moves
    raw = torch.full((frames, 1, h, w), 2.0)
    raw[20:] = 6.0
    for feather, worst in ((0, 3.0), (12, 1.0)):
        out = DepthStabilizer(0.85, feather=feather)(video, raw)
        steps = (out[-1, 0, :, 1:] - out[-1, 0, :, :-1]).abs().max()
        assert (steps > worst) if feather == 0 else (steps < worst)
        assert float((out[20:, :, :, 40:56] - 6.0).abs().max()) < 1e-5  # the band: no ghost


def test_output_hold_keeps_still_pixels_renders_changes_and_bounds_the_error():
    from spatialdreamer.stereo.stabilize import OutputHold

    gen = torch.Generator().manual_seed(0)
    t, h, w = 6, 16, 64
    frames = torch.rand(1, 3, h, w, generator=gen).repeat(t, 1, 1, 1)
    frames[3:, :, 4:8, 50:54] = 0.0  # something changes far right from frame 3
    disparity = torch.full((t, 1, h, w), 2.0)
    disparity[1:] += 0.2  # a wobble under the tolerance (0.5 px)
    disparity[5] += 0.5  # a real change: 0.7 px from the reference
    fresh = torch.randint(0, 255, (t, 3, h, 2 * w), dtype=torch.uint8, generator=gen)
    out = OutputHold(disparity=0.5)(frames, disparity, fresh.clone(), "full-sbs", ("left", "right"))
    left, right = slice(0, 40), slice(w, w + 40)
    for eye in (left, right):
        for i in (1, 2, 3, 4):  # the wobble: the first frame is kept where nothing changed
            assert torch.equal(out[i, :, :, eye], fresh[0, :, :, eye])
        assert torch.equal(out[5, :, :, eye], fresh[5, :, :, eye])  # the real change is rendered
    # where the source changes (frame 3), both eyes are rendered fresh around it; once it is
    # still again (frame 4), that rendering is kept
    assert torch.equal(out[3, :, 2:10, 44:60], fresh[3, :, 2:10, 44:60])
    assert torch.equal(out[3, :, 2:10, w + 44 : w + 60], fresh[3, :, 2:10, w + 44 : w + 60])
    assert torch.equal(out[4, :, 2:10, 44:60], fresh[3, :, 2:10, 44:60])
    # one eye synthesized: the source eye is never held
    out = OutputHold(disparity=0.5)(frames, disparity, fresh.clone(), "full-sbs", ("right",))
    assert torch.equal(out[:, :, :, :w], fresh[:, :, :, :w])
    assert torch.equal(out[2, :, :, w : w + 40], fresh[0, :, :, w : w + 40])


def test_dead_band_holds_a_still_pixel_through_wobble_within_it_and_follows_beyond_it():
    """A still pixel follows only the part of its gap to the estimate beyond the dead band: an
    estimate wobbling by less than the band leaves it exactly unchanged (it had crept along
    every wobble), a lasting step of 5 px is followed to within the band."""
    video, _ = _still_noisy(frames=80, noise=0.0)
    wobble = 4.0 + 0.8 * torch.sin(torch.arange(80) / 7.0).view(-1, 1, 1, 1).expand(-1, 1, 24, 48)
    held = DepthStabilizer(0.85, deadband=1.0)(video, wobble)
    assert torch.equal(held[1:], held[:1].expand_as(held[1:]))
    crept = DepthStabilizer(0.85, deadband=0.0)(video, wobble)
    assert (crept[1:] - crept[:-1]).abs().sum() > 0.5
    step = torch.cat([torch.full((10, 1, 24, 48), 4.0), torch.full((400, 1, 24, 48), 9.0)])
    still = _still_noisy(frames=410, noise=0.0)[0]
    followed = DepthStabilizer(0.85, deadband=1.0)(still, step)
    assert 7.7 < float(followed[-1].mean()) <= 8.0 + 1e-4  # towards the band's edge, never past it
    default = DepthStabilizer(0.85)
    assert default._band(step) == pytest.approx(0.0008 * 48)  # 1 px at 1280 wide


@pytest.mark.parametrize("deadband", [0.0, 1.0])
@pytest.mark.parametrize("lookahead", [0, 3])
def test_compiled_stabiliser_gives_the_torch_ops_depth(monkeypatch, lookahead, deadband):
    """The compiled passes (CPU float32) and the torch ops (the CUDA path) are one algorithm:
    the same depth, bit for bit, through still pixels, a moving patch and a cut."""
    from spatialdreamer.stereo import _stabilize_kernel, stabilize

    if not _stabilize_kernel.available():
        pytest.skip("numba is not available")
    gen = torch.Generator().manual_seed(3)
    frames = torch.rand(1, 3, 40, 64, generator=gen).repeat(24, 1, 1, 1)
    frames += 0.01 * torch.rand(frames.shape, generator=gen)
    frames[8:12, :, 5:20, 10:30] = torch.rand(4, 3, 15, 20, generator=gen)
    depth = 20.0 + 3.0 * torch.rand(24, 1, 40, 64, generator=gen)
    runs = {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(stabilize, "_compiled", lambda t: False)
        stab = DepthStabilizer(0.85, lookahead=lookahead, deadband=deadband)
        first = torch.cat([stab.push(frames[:10], depth[:10]), stab.flush()])
        stab.reset()  # a cut
        runs[compiled] = torch.cat([first, stab(frames[10:], depth[10:])])
    assert runs[True].shape == depth.shape
    assert torch.equal(runs[True], runs[False])
    assert not torch.equal(runs[True], depth)  # it did stabilise
