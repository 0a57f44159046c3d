"""Comfort-aware depth per shot: where the screen plane sits and how much depth a shot gets.

A fixed convergence puts the zero-parallax plane at the same *normalised* depth in every shot,
so a close-up of a face may sit half in front of the screen while a landscape recedes behind
it, and a fixed budget may push a shot's nearest point further out than eyes converge
comfortably. Here each frame proposes a screen plane on its salient depth (the centre-weighted
median of the normalised inverse depth: what the viewer looks at sits on the screen) and the
budget is then scaled down, if needed, so that the nearest point stays within ``crossed`` % of
the width in front of the screen and the farthest within ``uncrossed`` % behind it.
The proposals are smoothed over the shot and restart at cuts: an exponential moving average
that looks a few frames ahead (so it starts moving before a change rather than after it),
ignores changes smaller than a dead band, and moves the screen plane by at most ``max_step``
pixels of disparity per frame. A screen plane that drifts shifts every still pixel of the
frame a little each frame, which reads as shimmer; one that steps is a visible jump.
Every shot's choice is recorded for ``spatialdreamer convert --report``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["ComfortBound", "ConvergencePlanner", "check_report_path", "salient_depth"]

_REPORT_SUFFIXES = (".csv", ".json")


@dataclass(frozen=True)
class ComfortBound:
    """Largest parallax allowed, in % of the frame width: ``crossed`` in front of the screen
    (eyes converge), ``uncrossed`` behind it (eyes diverge towards parallel)."""

    crossed: float = 2.0
    uncrossed: float = 1.5

    def __post_init__(self) -> None:
        if not (0.0 < self.crossed <= 20.0 and 0.0 < self.uncrossed <= 20.0):
            raise ValueError(
                f"comfort bounds are % of the width in (0, 20], got crossed={self.crossed}, "
                f"uncrossed={self.uncrossed}"
            )


def salient_depth(normalized: torch.Tensor, samples: tuple[int, int] = (36, 64)) -> torch.Tensor:
    """Centre-weighted median of normalised inverse depth per frame: ``[B,1,H,W]`` → ``[B]``.

    The frame is averaged down to ``samples`` (rows, columns) first, so the cost does not grow
    with the resolution; a Gaussian centre weight (sigma = a third of each side) stands in for
    saliency, since viewers look at the centre of the frame most of the time.
    """
    if normalized.ndim != 4 or normalized.shape[1] != 1:
        raise ValueError(f"normalized must be [B,1,H,W], got {tuple(normalized.shape)}")
    small = F.adaptive_avg_pool2d(normalized.float(), samples).flatten(1)  # [B, N]
    ys = torch.linspace(-1.0, 1.0, samples[0], device=small.device)
    xs = torch.linspace(-1.0, 1.0, samples[1], device=small.device)
    weight = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * (2 / 3) ** 2)).flatten()
    values, order = small.sort(dim=1)
    cumulative = weight[order].cumsum(1)
    half = cumulative[:, -1:] / 2
    index = (cumulative < half).sum(1, keepdim=True).clamp_(max=values.shape[1] - 1)
    return values.gather(1, index)[:, 0]


@dataclass
class _Shot:
    first_frame: int
    convergence: list[float] = field(default_factory=list)
    budget: list[float] = field(default_factory=list)


class ConvergencePlanner:
    """Per-frame screen plane and depth budget for one video, shot by shot.

    Args:
        budget: depth budget in % of the width (the most a shot gets).
        convergence: a fixed screen plane (normalised inverse depth in [0, 1]; the budget is
            then used as given) or ``None`` for automatic: the salient depth on the screen and
            the budget held inside ``bound``.
        bound: the :class:`ComfortBound` for automatic mode.
        momentum: weight of each new frame's proposal in the moving average, in (0, 1].
        lookahead: how many later frames of the same call each proposal averages over (frames
            beyond the batch or a cut are not seen).
        dead_band: proposals closer than this (normalised depth) to the current plane are
            ignored.
        max_step: largest change of the screen plane per frame, in pixels of disparity.

    Example:
        >>> planner = ConvergencePlanner(budget=3.0, convergence=None)
        >>> near_centre = torch.zeros(2, 1, 36, 64); near_centre[..., 6:30, 12:52] = 0.8
        >>> disparity = planner(near_centre)
        >>> round(float(disparity[0, 0, 18, 32]), 3)  # the salient object sits on the screen
        0.0
        >>> planner.report(fps=25.0)[["frames", "convergence_mean"]].round(3).values.tolist()
        [[2.0, 0.8]]
    """

    def __init__(
        self,
        budget: float = 3.0,
        convergence: float | None = None,
        bound: ComfortBound | None = None,
        momentum: float = 0.1,
        lookahead: int = 4,
        dead_band: float = 0.05,
        max_step: float = 0.05,
    ) -> None:
        if not 0.0 <= budget <= 20.0:
            raise ValueError(f"budget is a % of the width in [0, 20], got {budget}")
        if convergence is not None and not 0.0 <= convergence <= 1.0:
            raise ValueError(f"convergence must be in [0, 1] or None (auto), got {convergence}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0 frames, got {lookahead}")
        self.budget = float(budget)
        self.convergence = convergence
        self.bound = bound or ComfortBound()
        self.momentum = float(momentum)
        self.lookahead = int(lookahead)
        if dead_band < 0 or max_step <= 0:
            raise ValueError(f"need dead_band >= 0 and max_step > 0, got {dead_band}, {max_step}")
        self.dead_band = float(dead_band)
        self.max_step = float(max_step)
        self._state: float | None = None
        self._frames = 0
        self._shots: list[_Shot] = []

    @property
    def auto(self) -> bool:
        return self.convergence is None

    def reset(self) -> None:
        """A cut: the next frame starts a new shot and its own screen plane."""
        self._state = None

    def plan(self, normalized: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(convergence [B], budget [B])`` for consecutive frames of one shot (continuing the
        previous call unless :meth:`reset` came between); ``width`` (default: the frames')
        turns ``max_step`` pixels into normalised depth."""
        width = width or normalized.shape[-1]
        b = normalized.shape[0]
        if self._state is None or not self._shots:
            self._shots.append(_Shot(self._frames))
        if self.auto:
            proposals = salient_depth(normalized).tolist()
            convergence = []
            for i in range(b):
                ahead = proposals[i : i + 1 + self.lookahead]
                target = sum(ahead) / len(ahead)
                if self._state is None:
                    self._state = target
                elif abs(target - self._state) > self.dead_band:
                    limit = self.max_step / max(self._comfortable_budget(self._state) / 100.0 * width, 1e-6)
                    step = self.momentum * (target - self._state)
                    self._state += max(-limit, min(limit, step))
                convergence.append(self._state)
            budget = [self._comfortable_budget(c) for c in convergence]
        else:
            self._state = float(self.convergence)
            convergence, budget = [self._state] * b, [self.budget] * b
        shot = self._shots[-1]
        shot.convergence += convergence
        shot.budget += budget
        self._frames += b
        return torch.tensor(convergence), torch.tensor(budget)

    def _comfortable_budget(self, convergence: float) -> float:
        budget = self.budget
        if convergence < 1.0:
            budget = min(budget, self.bound.crossed / (1.0 - convergence))
        if convergence > 0.0:
            budget = min(budget, self.bound.uncrossed / convergence)
        return budget

    def __call__(self, normalized: torch.Tensor) -> torch.Tensor:
        """Normalised inverse depth ``[B,1,H,W]`` in [0, 1] (1 = nearest) → disparity in pixels,
        positive = in front of the screen, as :func:`~spatialdreamer.dvg.forward_warp` takes it."""
        if normalized.ndim != 4 or normalized.shape[1] != 1:
            raise ValueError(f"normalized must be [B,1,H,W], got {tuple(normalized.shape)}")
        convergence, budget = self.plan(normalized)
        shape = (-1, 1, 1, 1)
        convergence = convergence.to(normalized.device, normalized.dtype).view(shape)
        scale = (budget / 100.0 * normalized.shape[-1]).to(normalized.device, normalized.dtype).view(shape)
        return (normalized - convergence) * scale

    def report(self, fps: float) -> pd.DataFrame:
        """One row per shot: its frames and times, the screen plane and budget chosen, and the
        largest parallax in front of and behind the screen, in % of the width."""
        rows = []
        for index, shot in enumerate(self._shots):
            if not shot.convergence:
                continue
            conv = torch.tensor(shot.convergence, dtype=torch.float64)
            budget = torch.tensor(shot.budget, dtype=torch.float64)
            frames = len(shot.convergence)
            rows.append(
                {
                    "shot": index,
                    "first_frame": shot.first_frame,
                    "frames": frames,
                    "start_s": shot.first_frame / fps,
                    "end_s": (shot.first_frame + frames) / fps,
                    "mode": "auto" if self.auto else "fixed",
                    "convergence_mean": float(conv.mean()),
                    "convergence_min": float(conv.min()),
                    "convergence_max": float(conv.max()),
                    "budget_pct_mean": float(budget.mean()),
                    "budget_pct_min": float(budget.min()),
                    "crossed_pct_max": float((budget * (1 - conv)).max()),
                    "uncrossed_pct_max": float((budget * conv).max()),
                }
            )
        return pd.DataFrame(rows, columns=_REPORT_COLUMNS)

    def write_report(self, path: str | os.PathLike, fps: float) -> Path:
        """Write :meth:`report` as CSV or JSON (records), by the file's suffix."""
        path = Path(path)
        table = self.report(fps)
        tmp = path.with_name(f".{path.name}.partial")
        if path.suffix.lower() == ".json":
            table.to_json(tmp, orient="records", indent=1)
        else:
            table.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
        return path


_REPORT_COLUMNS = [
    "shot",
    "first_frame",
    "frames",
    "start_s",
    "end_s",
    "mode",
    "convergence_mean",
    "convergence_min",
    "convergence_max",
    "budget_pct_mean",
    "budget_pct_min",
    "crossed_pct_max",
    "uncrossed_pct_max",
]


def check_report_path(path: str | os.PathLike) -> None:
    """A report path must end in .csv or .json and sit in an existing folder (checked before a
    long conversion starts, not after)."""
    path = Path(path)
    if path.suffix.lower() not in _REPORT_SUFFIXES:
        raise ValueError(f"--report must end in .csv or .json, got {path.name!r}")
    if not path.parent.resolve().is_dir():
        raise ValueError(f"--report folder {path.parent} does not exist")
