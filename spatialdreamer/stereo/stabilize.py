"""Temporal stabilisation of depth where the picture does not move.

Depth models (and the shot normalisation after them) wobble from frame to frame by a fraction
of a pixel of disparity even where nothing moves; the forward warp turns every such wobble into
a resampled, shifted texture, and the synthesized eye shimmers while the source is still.
:class:`DepthStabilizer` gates a temporal filter by the source itself: where consecutive
frames are equal (up to noise) the depth is pulled only slowly towards the new estimate, where
they differ (a moving object, a pan) the new estimate is taken at once, so moving things never
drag a ghost of their old depth behind them. With stable depth the warp of a static region is
the same every frame, and so are its holes and their fill.

An exponential average alone does not hold a still picture steady: a depth model's error drifts
slowly (a shot's depth range, cues that come and go), and an average passes slow drift through.
So the longer a pixel has been still, the slower it follows: after ``n`` still frames at
``1 / (n + 1)²`` of the rate, down to ``slowest`` of it; any motion at the pixel restarts the
count. On Big Buck Bunny (grass in the wind around still rocks and sky) this cut the
disparity's change on still regions from 0.29 to about 0.02 px per frame
(``benchmarks/stability.py``). The motion mask is widened by only a few pixels: widened by 1 %
of the width, as it was, it marked a third of the still regions among the grass as moving.

And a still pixel follows only the part of its gap to the estimate beyond a dead band (1 px at
1280 wide): an estimate that wanders back and forth by less than that leaves it exactly where
it is, so the warp of a still region is the same, bit for bit, frame after frame (Big Buck
Bunny's still regions: 1.42× → 1.30× the source's change, not encoded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spatialdreamer.dvg.disparity import dilate_foreground
from spatialdreamer.stereo import _stabilize_kernel

__all__ = ["DepthStabilizer", "OutputHold"]

_SEAM = 0.9  # px: a disparity step between neighbours that the warp still takes for one surface
_DEADBAND = 0.0008  # of the width: the default dead band of a still pixel (1 px at 1280)


def _compiled(t: torch.Tensor) -> bool:
    """Whether ``t``'s maps take the compiled passes (float32 on a CPU, numba available)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and _stabilize_kernel.available()


class DepthStabilizer:
    """Difference-gated temporal smoothing of a per-frame depth map over a shot, with look-ahead.

    For frame ``t`` with source ``I_t`` and new estimate ``D_t``:
    ``out_t = out_{t-1} + a * (T_t - out_{t-1})``. Where the source changed by more than
    ``threshold`` (grey levels in [0, 1], max over channels, widened by ``radius`` pixels so the
    depth of a moving edge follows it) ``a = 1`` and ``T_t = D_t``: moving pixels take the fresh
    estimate at once. A pixel still for ``n`` frames (this one included) has
    ``a = (1 - strength) * max(1 / (n + 1)², slowest)`` (blended linearly up to 1 between
    ``threshold`` and twice it), and its target ``T_t`` is the mean of ``D_t … D_{t+j}`` over
    the next ``j <= lookahead`` frames through which the pixel stays still: the estimate's
    frame-to-frame noise averaged over up to ``lookahead + 1`` frames, centred on ``t`` rather
    than lagging it, and never mixed with the depth of something that moves in later. A fully
    still pixel's gap ``T_t - out_{t-1}`` is first shrunk towards 0 by ``deadband``.

    Optionally (``feather``) the rate is feathered spatially (raised, never lowered) around
    seams: where a held pixel meets one that took the fresh estimate and the two end up more
    than 0.9 px of disparity apart while the estimate has no such step, the rate ramps down
    over ``feather`` pixels, so the difference becomes a gentle ramp instead of a step (a step
    of more than a pixel between neighbours is a depth edge to the warp, and opens a hole).
    The price: the pixels on the ramp follow the fresh estimate, and its wobble, sooner.

    Streaming: :meth:`push` takes frames as they come and returns the stabilised depth of the
    frames whose look-ahead is complete, ``lookahead`` frames behind; :meth:`flush` returns the
    rest (the look-ahead cut short), to call at the end of a shot or of the video. Calling the
    stabiliser pushes and flushes at once (the look-ahead stays within the call).

    Args:
        strength: sets how much of its previous depth a still pixel keeps per frame (at least
            ``strength``, more the longer it is still), in [0, 1); 0 = off (no delay either).
        threshold: per-pixel source change that counts as motion (default 6/255, above
            compression noise).
        radius: widening of the motion mask in pixels; default 0.25 % of the width (3 px at
            1280).
        slowest: the least share of the first still frame's rate a long-still pixel keeps, in
            (0, 1]: new estimates still land there, in about ``1 / ((1 - strength) * slowest)``
            frames (5 s at 25 fps with the defaults); 1 = a plain moving average.
        lookahead: later frames a still pixel's target averages over (and the delay of
            :meth:`push`), >= 0.
        deadband: the gap (in the map's units) between a still pixel's target and its held
            depth that it does not follow; None = 0.08 % of the width (1 px at 1280), for
            disparity in pixels; 0 = none.
        feather: width in pixels of the ramp from a high rate to a low one around seams
            (neighbours more than 0.9 px of disparity apart where the estimate is not); None =
            1 % of the width (13 px at 1280); 0 = none (the default: on Big Buck Bunny it cut
            the holes from 0.85 % to 0.11 % of the pixels but doubled the disparity's change
            on still regions, see ``benchmarks/stability.py``).

    Example:
        >>> stab = DepthStabilizer(strength=0.9)
        >>> frames = torch.rand(1, 3, 8, 8).expand(3, 3, 8, 8)  # a still picture
        >>> depth = torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 8, 8)
        >>> [round(float(v), 2) for v in stab(frames, depth)[:, 0, 0, 0]]
        [0.0, 0.02, 0.04]
    """

    def __init__(
        self,
        strength: float = 0.85,
        threshold: float = 6 / 255,
        radius: int | None = None,
        slowest: float = 0.05,
        lookahead: int = 0,
        feather: int | None = 0,
        deadband: float | None = None,
    ) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing strength must be in [0, 1), got {strength}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if radius is not None and radius < 0:
            raise ValueError(f"radius must be >= 0 pixels, got {radius}")
        if not 0.0 < slowest <= 1.0:
            raise ValueError(f"slowest must be in (0, 1], got {slowest}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0 frames, got {lookahead}")
        if feather is not None and feather < 0:
            raise ValueError(f"feather must be >= 0 pixels, got {feather}")
        if deadband is not None and not deadband >= 0:
            raise ValueError(f"deadband must be >= 0, got {deadband}")
        self.strength = float(strength)
        self.threshold = float(threshold)
        self.radius = radius
        self.slowest = float(slowest)
        self.lookahead = int(lookahead)
        self.feather = feather
        self.deadband = deadband
        self._still: torch.Tensor | None = None  # frames each pixel has been still
        self._frame: torch.Tensor | None = None  # the last frame pushed
        self._depth: torch.Tensor | None = None  # the last stabilised depth
        # frames pushed but not yet stabilised: (depth [1,H,W], motion [1,H,W] from the frame
        # before and 1.0 where it is 0, or None, None for the first frame of a shot)
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []

    @property
    def pending(self) -> int:
        """Frames pushed whose stabilised depth has not been returned yet."""
        return len(self._pending)

    def reset(self) -> None:
        """A cut: the next frame's depth is taken as it is. Frames still pending are dropped
        (:meth:`flush` them first)."""
        self._frame = None
        self._depth = None
        self._still = None
        self._pending = []

    def motion(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """``[B,1,H,W]`` in [0, 1]: how much each pixel counts as moving between two frames.

        Each pixel's share of its change above the threshold, widened by ``radius`` with a max
        filter (which commutes with that monotone share: the same mask as widening first)."""
        if _compiled(current) and current.shape[0] == 1:
            share = _stabilize_kernel.change(previous, current, self.threshold)
        else:
            change = (current - previous).abs().amax(1, keepdim=True)
            share = ((change - self.threshold) / self.threshold).clamp_(0.0, 1.0)
        r = self.radius if self.radius is not None else max(1, round(current.shape[-1] / 400))
        h, w = share.shape[-2:]
        cell = max(1, min(r // 2, 8))  # widen on a grid of cells: the cost stays flat in r
        if cell > 1:
            share = F.max_pool2d(share, cell, ceil_mode=True)
        share = dilate_foreground(share, (-(-r // cell), -(-r // cell)))  # a max filter
        if cell > 1:
            share = F.interpolate(share, scale_factor=cell, mode="nearest")[..., :h, :w]
        return share

    def feathered(self, rate: torch.Tensor) -> torch.Tensor:
        """``rate`` ``[B,1,H,W]`` raised around its high values so that it falls to the low ones
        over about ``feather`` pixels (on a grid of cells of a third of that: the cost stays
        flat); unchanged where it is highest."""
        h, w = rate.shape[-2:]
        width = self.feather if self.feather is not None else max(1, round(w / 100))
        cell = max(1, width // 3)
        if width <= 1:
            return rate
        low = F.max_pool2d(rate, cell, ceil_mode=True) if cell > 1 else rate
        low = F.max_pool2d(low, 3, stride=1, padding=1)  # the ramp starts a cell away
        low = F.avg_pool2d(low, 3, stride=1, padding=1, count_include_pad=False)
        if cell > 1:
            low = F.interpolate(low, scale_factor=cell, mode="bilinear", align_corners=False)[..., :h, :w]
        return torch.maximum(rate, low)

    def push(self, frames: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Take consecutive frames of one shot (continuing the previous push) and return the
        stabilised depth of the oldest frames whose look-ahead is now complete:
        ``[N,1,H,W]``, N = what was pending plus ``len(frames)`` minus ``lookahead`` (or 0).

        Args:
            frames: ``[B,C,H,W]`` float source frames in [0, 1].
            depth: ``[B,1,H,W]`` float, any depth-like map (disparity in pixels here).
        """
        if frames.ndim != 4 or depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(
                f"need frames [B,C,H,W] and depth [B,1,H,W], got {tuple(frames.shape)}, {tuple(depth.shape)}"
            )
        if frames.shape[0] != depth.shape[0] or frames.shape[-2:] != depth.shape[-2:]:
            raise ValueError(
                f"frames {tuple(frames.shape)} and depth {tuple(depth.shape)} differ in count or size"
            )
        if self.strength == 0.0:
            return depth
        frames = frames.float()
        out = []
        for i in range(frames.shape[0]):
            frame = frames[i : i + 1]
            if self._frame is None or self._frame.shape != frame.shape:
                moving = None  # a new shot (or size): nothing to compare with
                if self._pending:
                    out.extend(self._flush_all())
                self._depth = None
            else:
                moving = self.motion(self._frame, frame)[0]
            self._frame = frame
            still = None  # made where the torch step needs it
            if moving is not None and not (self.feather == 0 and _compiled(moving)):
                still = (moving == 0).to(torch.float32)
            self._pending.append((depth[i].float(), moving, still))
            if len(self._pending) > self.lookahead:
                out.append(self._step())
        return self._stack(out, depth)

    def flush(self) -> torch.Tensor:
        """The stabilised depth of every pending frame, ``[N,1,H,W]`` (the look-ahead cut
        short at the last frame pushed)."""
        return self._stack(self._flush_all(), None)

    def _flush_all(self) -> list[torch.Tensor]:
        return [self._step() for _ in range(len(self._pending))]

    def _stack(self, out: list[torch.Tensor], like: torch.Tensor | None) -> torch.Tensor:
        if out:
            stacked = torch.stack(out)
            return stacked.to(like.dtype) if like is not None else stacked
        if like is not None:
            return like.new_empty((0, *like.shape[1:]))
        if self._frame is not None:
            return self._frame.new_empty((0, 1, *self._frame.shape[-2:]))
        return torch.empty(0, 1, 0, 0)

    def _step(self) -> torch.Tensor:
        """Stabilise the oldest pending frame: ``[1,H,W]``."""
        depth, moving, _ = self._pending.pop(0)
        if self.feather == 0 and _compiled(depth):
            return self._step_compiled(depth, moving)
        # the look-ahead mean: later estimates while the pixel stays still through them
        target, count, alive = depth, None, None
        for later, later_moving, still in self._pending[: self.lookahead]:
            if later_moving is None:
                break
            if still is None:
                still = (later_moving == 0).to(torch.float32)
            if alive is None:
                alive, target, count = still, depth + still * later, still + 1.0
            else:
                alive = alive * still
                target.addcmul_(alive, later)
                count.add_(alive)
        if count is not None:
            target = target.div_(count)
        if moving is None or self._depth is None:
            self._depth = target
            self._still = torch.zeros_like(target)
            return self._depth
        self._still = torch.where(moving > 0, 0.0, self._still + 1.0)
        still = (1.0 - self.strength) * (self._still + 1.0).pow_(-2).clamp_(min=self.slowest)
        rate = still + (1.0 - still) * moving
        gap = target - self._depth
        band = self._band(depth)
        if band > 0:  # a still pixel follows only the part of its gap beyond the dead band
            gap = gap.sign() * (gap.abs() - band).clamp_(min=0.0)
        gap = torch.where(moving > 0, depth - self._depth, gap)
        held = self._depth + rate * gap
        if self.feather != 0:
            # seams: neighbours more than a pixel apart where the fresh estimate is not (a step
            # the hold made, not a depth edge); only around them the rate is feathered
            target = torch.where(moving > 0, depth, target)
            step = (held[..., 1:] - held[..., :-1]).abs() > _SEAM
            step &= (target[..., 1:] - target[..., :-1]).abs() <= _SEAM
            if bool(step.any()):
                seam = F.pad(step, (0, 1)) | F.pad(step, (1, 0))
                near = self.feathered(seam[None].to(rate.dtype))[0] > 0
                rate = torch.where(near, self.feathered(rate[None])[0], rate)
                held = self._depth + rate * gap
        self._depth = held
        return self._depth

    def _step_compiled(self, depth: torch.Tensor, moving: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_step` (without feathering) in compiled passes: the same maps."""
        laters = []
        for later, later_moving, _ in self._pending[: self.lookahead]:
            if later_moving is None:
                break
            laters.append((later, later_moving))
        target, count = _stabilize_kernel.look_ahead(depth, laters)
        if moving is None or self._depth is None:
            self._depth = target.div_(count)
            self._still = torch.zeros_like(target)
            return self._depth
        self._depth, self._still = _stabilize_kernel.update(
            self._depth,
            self._still,
            depth,
            target,
            count,
            moving,
            1.0 - self.strength,
            self.slowest,
            self._band(depth),
        )
        return self._depth

    def _band(self, depth: torch.Tensor) -> float:
        """The dead band for maps as wide as ``depth``."""
        if self.deadband is not None:
            return self.deadband
        return _DEADBAND * depth.shape[-1]

    def __call__(self, frames: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Stabilise consecutive frames of one shot, continuing the previous call: :meth:`push`
        then :meth:`flush`, so the look-ahead stays within ``frames``.

        Args:
            frames: ``[B,C,H,W]`` float source frames in [0, 1], continuing the previous call.
            depth: ``[B,1,H,W]`` float, any depth-like map (normalised inverse depth here).

        Returns:
            ``[B,1,H,W]`` stabilised depth, same dtype and device as ``depth`` (plus any
            frames left pending by an earlier :meth:`push`, first).
        """
        ready = self.push(frames, depth)
        if self.strength == 0.0 or not self._pending:
            return ready
        return torch.cat([ready, self.flush().to(ready.dtype)])


class OutputHold:
    """A temporal hold of the synthesized eyes' pixels: where nothing an output pixel can show
    has changed, the previous output pixel is kept instead of a fresh rendering.

    This is a temporal denoiser of the output, with a bounded error. An eye pixel at column
    ``x`` shows source pixels within ``reach`` columns of ``x`` (the disparity's range, plus
    2 px) and the rows next to it. Each source pixel has a reference: its colour and disparity
    when it last changed. A source pixel is *stale* when its colour differs from its reference
    by more than ``tolerance`` (max over channels) or its disparity by more than ``disparity``
    pixels, and its reference is then renewed. An output pixel is rendered fresh when any source
    pixel it can show is stale, and kept from the previous output otherwise: so a kept pixel
    was rendered from colours within ``2 * tolerance`` and disparities within ``2 * disparity``
    of the current ones. What it removes is the re-rendering of the same still picture with a
    disparity that wobbles by a fraction of a pixel, and the resampling and fill noise that
    comes with it; what it cannot remove is a real change of depth larger than ``disparity``
    (it is rendered, as it should be).

    The output is laid out by the caller (:func:`~spatialdreamer.stereo.compose` layouts);
    :meth:`__call__` works on those ``uint8``/``uint16`` frames in place. The source eye of a
    one-eye conversion is never held. :meth:`reset` at a cut (and wherever a run must be able
    to restart exactly, such as the start of a part of a resumable conversion).

    Args:
        tolerance: colour change (in [0, 1]) a source pixel may make before it counts as
            stale; default 2.5/255, above a decoded video's noise on a still picture.
        disparity: disparity change in pixels before a source pixel counts as stale (default
            0.25).
        cell: the width of the grid the mask is widened on (cost flat in ``reach``).

    Example:
        >>> hold = OutputHold()
        >>> frames = torch.rand(1, 3, 4, 8).expand(2, 3, 4, 8)  # a still picture
        >>> disparity = torch.tensor([1.0, 1.1]).view(2, 1, 1, 1).expand(2, 1, 4, 8)
        >>> out = torch.randint(0, 255, (2, 3, 4, 16), dtype=torch.uint8)  # full SBS, both eyes
        >>> held = hold(frames, disparity, out.clone(), "full-sbs", ("left", "right"))
        >>> torch.equal(held[1], out[0])  # 0.1 px of change: the first frame is kept
        True
    """

    def __init__(self, tolerance: float = 2.5 / 255, disparity: float = 0.25, cell: int = 4) -> None:
        if not tolerance >= 0 or not disparity >= 0:
            raise ValueError(f"tolerance and disparity must be >= 0, got {tolerance}, {disparity}")
        self.tolerance = float(tolerance)
        self.disparity = float(disparity)
        self.cell = max(1, int(cell))
        self._source: torch.Tensor | None = None  # [1,C,H,W] reference colours
        self._depth: torch.Tensor | None = None  # [1,1,H,W] reference disparities
        self._out: torch.Tensor | None = None  # [C,H',W'] the previous output frame
        self.held = 0.0  # share of synthesized-eye pixels kept, summed over frames
        self.frames = 0

    def reset(self) -> None:
        """Render the next frame fresh everywhere."""
        self._source = self._depth = self._out = None

    def _fresh(self, frame: torch.Tensor, depth: torch.Tensor, reach: int) -> torch.Tensor:
        """``[1,1,H,W]`` bool: output pixels that must be rendered fresh (source space)."""
        stale = (frame - self._source).abs().amax(1, keepdim=True) > self.tolerance
        stale |= (depth - self._depth).abs() > self.disparity
        self._source = torch.where(stale, frame, self._source)
        self._depth = torch.where(stale, depth, self._depth)
        h, w = stale.shape[-2:]
        grown = stale.float()
        c = self.cell
        if c > 1:
            grown = F.max_pool2d(grown, c, ceil_mode=True)
        rx = -(-reach // c)
        grown = F.max_pool2d(grown, (3, 2 * rx + 1), stride=1, padding=(1, rx))
        if c > 1:
            grown = F.interpolate(grown, scale_factor=c, mode="nearest")[..., :h, :w]
        return grown > 0

    def __call__(
        self,
        frames: torch.Tensor,
        disparity: torch.Tensor,
        out: torch.Tensor,
        fmt: str,
        synthesized,
        shares: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Hold the pixels of ``out`` that may be held, in place, and return it.

        Args:
            frames: ``[T,C,H,W]`` float source frames in [0, 1] (continuing the previous call).
            disparity: ``[T,1,H,W]`` disparity in pixels between the eyes.
            out: ``[T,C,H',W']`` the output frames in layout ``fmt``.
            fmt: the layout (:data:`~spatialdreamer.stereo.FORMATS`).
            synthesized: the eyes that are synthesized (``"left"``, ``"right"``).
            shares: the share of the disparity each synthesized eye gets (default: half each
                for two eyes, all for one); sets how far an eye pixel can look.
        """
        from spatialdreamer.stereo.layouts import compose

        synthesized = tuple(synthesized)
        if not synthesized or (fmt == "anaglyph" and len(synthesized) < 2):
            return out  # an anaglyph's pixels mix the source eye in
        if shares is None:
            shares = {eye: 1.0 / len(synthesized) for eye in synthesized}
        frames = frames.float()
        for t in range(frames.shape[0]):
            frame, depth = frames[t : t + 1], disparity[t : t + 1].float()
            if self._out is None or self._out.shape != out[t].shape:
                self._source, self._depth = frame.clone(), depth.clone()
                self._out = out[t].clone()
                self.frames += 1
                continue
            reach = math.ceil(float(depth.abs().amax()) * max(shares.values())) + 2
            keep = ~self._fresh(frame, depth, reach)
            nothing = torch.zeros_like(keep)
            eyes = [keep if eye in synthesized else nothing for eye in ("left", "right")]
            if fmt == "anaglyph":  # both eyes synthesized: one mask for both
                mask = keep[0]
            elif fmt in ("full-sbs", "full-tb"):
                mask = torch.cat(eyes, -1 if fmt == "full-sbs" else -2)[0]
            else:  # squeezed or mixed layouts: kept where every pixel folded into it is
                mask = compose(*(e.float().expand(-1, 3, -1, -1) for e in eyes), fmt)[0, :1] > 1 - 1e-6
            self.held += float(keep.float().mean())
            self.frames += 1
            out[t] = torch.where(mask.to(out.device), self._out, out[t])
            self._out = out[t].clone()
        return out
