"""Score predicted right views against ground truth, and write the results tables.

:class:`VideoScorer` takes a video chunk by chunk (bounded memory on any length) and returns
one row of per-video scores; :func:`summarise` averages rows per method and adds FVD (a
set-level metric) from the per-video features; :func:`write_results` writes CSV + Markdown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spatialdreamer.metrics import LPIPS, e_warp, feature_statistics, frechet_distance, lpips, psnr, ssim

__all__ = ["COLUMNS", "VideoScorer", "format_markdown", "score_video", "summarise", "write_results"]

# (column, header, format, higher-is-better)
COLUMNS = [
    ("psnr", "PSNR ↑", "{:.2f}", True),
    ("ssim", "SSIM ↑", "{:.4f}", True),
    ("lpips", "LPIPS ↓", "{:.4f}", False),
    ("fvd", "FVD ↓", "{:.1f}", False),
    ("e_warp_x1e3", "E_warp ×10³ ↓", "{:.3f}", False),
    ("psnr_holes", "PSNR holes ↑", "{:.2f}", True),
]

Extractor = Callable[[torch.Tensor], torch.Tensor]


class VideoScorer:
    """Accumulate per-frame metrics over chunks of one predicted video and its ground truth.

    Args:
        lpips_model: a loaded :class:`~spatialdreamer.metrics.LPIPS`, or ``None`` (LPIPS = NaN).
        extractor: FVD feature extractor (videos ``[N,T,3,H,W]`` → ``[N,D]``), or ``None``.
        fvd_frames: frames from the start of each video that go into the FVD features.

    ``update(pred, target, holes)`` takes ``[T,3,H,W]`` float in [0, 1] chunks in order and an
    optional ``[T,1,H,W]`` bool hole mask; E_warp uses flow of the ground truth (true motion,
    consistent occlusions) applied to the prediction, across chunk boundaries.
    """

    def __init__(
        self, lpips_model: LPIPS | None = None, extractor: Extractor | None = None, fvd_frames: int = 16
    ) -> None:
        self.lpips_model, self.extractor, self.fvd_frames = lpips_model, extractor, fvd_frames
        self.values: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "lpips": [], "psnr_holes": []}
        self.warp_values: list[torch.Tensor] = []
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fvd_pred: list[torch.Tensor] = []
        self.fvd_gt: list[torch.Tensor] = []
        self.frames = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, holes: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"pred and target chunks must both be [T,3,H,W], got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        pred, target = pred.float().clamp(0, 1), target.float()
        self.values["psnr"].append(psnr(pred, target, reduction="none"))
        self.values["ssim"].append(ssim(pred, target, reduction="none"))
        if self.lpips_model is not None:
            self.values["lpips"].append(lpips(pred, target, model=self.lpips_model, reduction="none"))
        if holes is not None:
            self.values["psnr_holes"].append(psnr(pred, target, holes, reduction="none"))
        p, g = pred, target
        if self.last is not None:
            p, g = torch.cat([self.last[0], pred]), torch.cat([self.last[1], target])
        if p.shape[0] >= 2:
            self.warp_values.append(e_warp(p, reference=g, reduction="none"))
        self.last = (pred[-1:], target[-1:])
        if self.extractor is not None and self.frames < self.fvd_frames:
            take = self.fvd_frames - self.frames
            self.fvd_pred.append(pred[:take])
            self.fvd_gt.append(target[:take])
        self.frames += pred.shape[0]

    def result(self) -> dict[str, object]:
        """``{"frames", "psnr", "ssim", "lpips", "e_warp_x1e3", "psnr_holes", "fvd_pred", "fvd_gt"}``;
        NaN where a metric was not computed, feature lists empty without an extractor."""
        if self.frames == 0:
            raise ValueError("no frames were scored")

        def mean(key: str) -> float:
            v = torch.cat(self.values[key]) if self.values[key] else torch.tensor([float("nan")])
            v = v[~torch.isnan(v)]
            return float(v.double().mean()) if v.numel() else float("nan")

        warp = torch.cat(self.warp_values) if self.warp_values else torch.tensor([float("nan")])
        warp = warp[~torch.isnan(warp)]
        row: dict[str, object] = {
            "frames": self.frames,
            "psnr": mean("psnr"),
            "ssim": mean("ssim"),
            "lpips": mean("lpips"),
            "e_warp_x1e3": float(warp.double().mean()) * 1e3 if warp.numel() else float("nan"),
            "psnr_holes": mean("psnr_holes"),
            "fvd_pred": [],
            "fvd_gt": [],
        }
        if self.extractor is not None:
            if self.frames < self.fvd_frames:
                raise ValueError(f"FVD needs {self.fvd_frames} frames per video, got {self.frames}")
            row["fvd_pred"] = self.extractor(torch.cat(self.fvd_pred)[None])[0].tolist()
            row["fvd_gt"] = self.extractor(torch.cat(self.fvd_gt)[None])[0].tolist()
        return row


def score_video(
    pred: torch.Tensor,
    target: torch.Tensor,
    holes: torch.Tensor | None = None,
    *,
    lpips_model: LPIPS | None = None,
    extractor: Extractor | None = None,
    fvd_frames: int = 16,
    chunk_size: int = 16,
) -> dict[str, object]:
    """Score a whole predicted video ``[T,3,H,W]`` against ``target`` (see :class:`VideoScorer`)."""
    scorer = VideoScorer(lpips_model, extractor, fvd_frames)
    for s in range(0, pred.shape[0], chunk_size):
        scorer.update(
            pred[s : s + chunk_size],
            target[s : s + chunk_size],
            None if holes is None else holes[s : s + chunk_size],
        )
    return scorer.result()


def _fvd(group: pd.DataFrame) -> float:
    pred = [f for f in group["fvd_pred"] if len(f)]
    gt = [f for f in group["fvd_gt"] if len(f)]
    if len(pred) < 2 or len(pred) != len(group) or len(gt) != len(pred):
        return float("nan")
    return frechet_distance(*feature_statistics(np.array(pred)), *feature_statistics(np.array(gt)))


def summarise(rows: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """Mean per method over its videos (failed videos excluded and counted), plus FVD.

    ``rows`` need ``method``, the metric columns, ``fvd_pred``/``fvd_gt`` and optionally
    ``error``. Returns one row per method (in first-seen order) with ``videos`` and ``failed``.
    """
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows.copy()
    if "error" not in df:
        df["error"] = ""
    df["error"] = df["error"].fillna("")
    out = []
    for method in dict.fromkeys(df["method"]):
        group = df[df["method"] == method]
        good = group[group["error"] == ""]
        entry: dict[str, object] = {"method": method, "videos": len(good), "failed": len(group) - len(good)}
        for col, *_ in COLUMNS:
            if col == "fvd":
                entry[col] = _fvd(good) if len(good) and "fvd_pred" in good else float("nan")
            else:
                vals = (
                    pd.to_numeric(good[col], errors="coerce").dropna()
                    if col in good
                    else pd.Series([], dtype=float)
                )
                entry[col] = float(vals.mean()) if len(vals) else float("nan")
        out.append(entry)
    return pd.DataFrame(out)


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def format_markdown(summary: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The summary as a Markdown table (n/a where a metric was not available), then notes."""
    headers = ["Method", *[h for _, h, _, _ in COLUMNS], "Videos"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for _, r in summary.iterrows():
        cells = [str(r["method"]), *[_cell(r.get(c), f) for c, _, f, _ in COLUMNS]]
        videos = f"{int(r['videos'])}" + (f" ({int(r['failed'])} failed)" if int(r.get("failed", 0)) else "")
        lines.append("| " + " | ".join([*cells, videos]) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_results(
    per_video: pd.DataFrame, summary: pd.DataFrame, out_dir: str | os.PathLike, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write ``results.csv`` (summary), ``per_video.csv`` and ``results.md``; returns (csv, md)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    summary.to_csv(csv_path, index=False, float_format="%.6g")
    per_video.drop(columns=[c for c in ("fvd_pred", "fvd_gt") if c in per_video]).to_csv(
        out / "per_video.csv", index=False, float_format="%.6g"
    )
    md_path.write_text(format_markdown(summary, notes))
    return csv_path, md_path
