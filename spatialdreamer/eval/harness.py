"""Score predicted right views against ground truth, and write the results tables.

:class:`VideoScorer` takes a video chunk by chunk (bounded memory on any length) and returns
one row of per-video scores; :func:`score_files` streams a predicted file and its ground truth
in step; :func:`summarise` averages rows per method and adds FVD (a set-level metric) from the
per-video features; :func:`write_results` writes CSV + Markdown.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spatialdreamer.dvg import dis_flow
from spatialdreamer.metrics import LPIPS, e_warp, feature_statistics, frechet_distance, lpips, psnr, ssim
from spatialdreamer.video import stream_frames

__all__ = [
    "COLUMNS",
    "VIDEO_SUFFIXES",
    "VideoPair",
    "VideoScorer",
    "evaluate_pairs",
    "format_markdown",
    "list_videos",
    "pair_videos",
    "score_files",
    "score_video",
    "summarise",
    "write_results",
]

log = logging.getLogger(__name__)

# (column, header, format); all columns are per-video means except FVD (one number per set)
COLUMNS = [
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("lpips", "LPIPS ↓", "{:.4f}"),
    ("fvd", "FVD ↓", "{:.1f}"),
    ("e_warp_x1e3", "E_warp ×10³ ↓", "{:.3f}"),
    ("psnr_holes", "PSNR holes ↑", "{:.2f}"),
    ("ssim_holes", "SSIM holes ↑", "{:.4f}"),
    ("lpips_holes", "LPIPS holes ↓", "{:.4f}"),
]
_PER_FRAME = ("psnr", "ssim", "lpips", "psnr_holes", "ssim_holes", "lpips_holes")
VIDEO_SUFFIXES = (".mkv", ".mp4", ".mov", ".avi", ".webm", ".m4v")

Extractor = Callable[[torch.Tensor], torch.Tensor]
FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class VideoScorer:
    """Accumulate per-frame metrics over chunks of one predicted video and its ground truth.

    Args:
        lpips_model: a loaded :class:`~spatialdreamer.metrics.LPIPS`, or ``None`` (no LPIPS).
        extractor: FVD feature extractor (videos ``[N,T,3,H,W]`` → ``[N,D]``), or ``None``.
        fvd_frames: frames from the start of each video that go into its FVD features.
        flow_fn: optical flow ``(source [B,C,H,W], target) → [B,2,H,W]`` for E_warp; OpenCV DIS
            by default.

    ``update(pred, target, holes)`` takes ``[T,3,H,W]`` float in [0, 1] chunks in order and an
    optional ``[T,1,H,W]`` bool hole mask (the ``*_holes`` scores). E_warp uses optical flow of
    the ground truth (true motion, its occlusions) applied to the prediction, across chunk
    boundaries; the same flow scores the ground truth itself (``e_warp_gt``), the floor that
    flow error and disocclusions set.
    """

    def __init__(
        self,
        lpips_model: LPIPS | None = None,
        extractor: Extractor | None = None,
        fvd_frames: int = 16,
        flow_fn: FlowFn = dis_flow,
    ) -> None:
        self.lpips_model, self.extractor, self.fvd_frames = lpips_model, extractor, fvd_frames
        self.flow_fn = flow_fn
        self.values: dict[str, list[torch.Tensor]] = {k: [] for k in _PER_FRAME}
        self.warp: list[torch.Tensor] = []
        self.warp_gt: list[torch.Tensor] = []
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fvd_pred: list[torch.Tensor] = []
        self.fvd_gt: list[torch.Tensor] = []
        self.frames = 0
        self.holes_given = False

    def update(self, pred: torch.Tensor, target: torch.Tensor, holes: torch.Tensor | None = None) -> None:
        if pred.ndim != 4 or pred.shape[1] != 3 or target.shape != pred.shape:
            raise ValueError(
                f"pred and target chunks must both be [T,3,H,W], got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        if self.last is not None and self.last[0].shape[1:] != pred.shape[1:]:
            raise ValueError(f"frame size changed within the video: {tuple(pred.shape[1:])}")
        pred, target = pred.float().clamp(0, 1), target.float().clamp(0, 1)
        v = self.values
        v["psnr"].append(psnr(pred, target, reduction="none"))
        v["ssim"].append(ssim(pred, target, reduction="none"))
        if self.lpips_model is not None:
            v["lpips"].append(lpips(pred, target, model=self.lpips_model, reduction="none"))
        if holes is not None:
            self.holes_given = True
            v["psnr_holes"].append(psnr(pred, target, holes, reduction="none"))
            v["ssim_holes"].append(ssim(pred, target, holes, reduction="none"))
            if self.lpips_model is not None:
                v["lpips_holes"].append(lpips(pred, target, holes, model=self.lpips_model, reduction="none"))
        p, g = (
            (pred, target)
            if self.last is None
            else (torch.cat([self.last[0], pred]), torch.cat([self.last[1], target]))
        )
        if p.shape[0] >= 2:
            fwd, bwd = self.flow_fn(g[:-1], g[1:]), self.flow_fn(g[1:], g[:-1])
            self.warp.append(e_warp(p, flow=fwd, backward_flow=bwd, reduction="none"))
            self.warp_gt.append(e_warp(g, flow=fwd, backward_flow=bwd, reduction="none"))
        self.last = (pred[-1:], target[-1:])
        if self.extractor is not None and self.frames < self.fvd_frames:
            take = self.fvd_frames - self.frames
            self.fvd_pred.append(pred[:take])
            self.fvd_gt.append(target[:take])
        self.frames += pred.shape[0]

    @staticmethod
    def _mean(chunks: list[torch.Tensor]) -> float:
        if not chunks:
            return float("nan")
        v = torch.cat(chunks).double()
        v = v[~torch.isnan(v)]
        return float(v.mean()) if v.numel() else float("nan")

    def result(self) -> dict[str, object]:
        """``frames``, the metric columns, ``e_warp_gt_x1e3``, and ``fvd_pred``/``fvd_gt``
        feature vectors (``None`` without an extractor). NaN where a metric was not computed."""
        if self.frames == 0:
            raise ValueError("no frames were scored")
        row: dict[str, object] = {"frames": self.frames}
        for key in _PER_FRAME:
            row[key] = self._mean(self.values[key])
        row["e_warp_x1e3"] = self._mean(self.warp) * 1e3
        row["e_warp_gt_x1e3"] = self._mean(self.warp_gt) * 1e3
        row["fvd_pred"] = row["fvd_gt"] = None
        if self.extractor is not None:
            if self.frames < self.fvd_frames:
                raise ValueError(f"FVD needs {self.fvd_frames} frames per video, got {self.frames}")
            pair = torch.stack([torch.cat(self.fvd_pred), torch.cat(self.fvd_gt)])
            feats = self.extractor(pair).double().numpy()
            row["fvd_pred"], row["fvd_gt"] = feats[0], feats[1]
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
    flow_fn: FlowFn = dis_flow,
) -> dict[str, object]:
    """Score a whole predicted video ``[T,3,H,W]`` against ``target`` (see :class:`VideoScorer`)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    scorer = VideoScorer(lpips_model, extractor, fvd_frames, flow_fn)
    for s in range(0, pred.shape[0], chunk_size):
        chunk_holes = None if holes is None else holes[s : s + chunk_size]
        scorer.update(pred[s : s + chunk_size], target[s : s + chunk_size], chunk_holes)
    return scorer.result()


def _chunks(path: str | os.PathLike, chunk_size: int) -> Iterator[torch.Tensor]:
    for chunk in stream_frames(path, chunk_size):
        yield chunk.frames


def _count_rest(it: Iterator[torch.Tensor]) -> int:
    return sum(c.shape[0] for c in it)


def score_files(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    mask: str | os.PathLike | None = None,
    *,
    lpips_model: LPIPS | None = None,
    extractor: Extractor | None = None,
    fvd_frames: int = 16,
    chunk_size: int = 16,
    flow_fn: FlowFn = dis_flow,
) -> dict[str, object]:
    """Stream a predicted video, its ground truth and an optional mask video (white = hole) in
    step and score them. Frame counts and sizes must match: a mismatch is a one-line
    ``ValueError`` naming both."""
    scorer = VideoScorer(lpips_model, extractor, fvd_frames, flow_fn)
    streams = [_chunks(pred, chunk_size), _chunks(gt, chunk_size)]
    if mask is not None:
        streams.append(_chunks(mask, chunk_size))
    names = ["pred", "gt", "mask"]
    seen = 0
    for chunks in itertools.zip_longest(*streams):
        if any(c is None for c in chunks) or len({c.shape[0] for c in chunks}) > 1:
            counts = [
                seen + (0 if c is None else c.shape[0]) + _count_rest(s)
                for c, s in zip(chunks, streams, strict=True)
            ]
            listed = ", ".join(f"{n} has {k}" for n, k in zip(names, counts, strict=False))
            raise ValueError(f"frame counts differ: {listed} frames")
        sizes = [tuple(c.shape[-2:]) for c in chunks]
        if len(set(sizes)) > 1:
            listed = ", ".join(f"{n} is {s[1]}x{s[0]}" for n, s in zip(names, sizes, strict=False))
            raise ValueError(f"frame sizes differ: {listed}")
        holes = chunks[2][:, :1] > 127 if mask is not None else None
        scorer.update(chunks[0].float() / 255.0, chunks[1].float() / 255.0, holes)
        seen += chunks[0].shape[0]
    return scorer.result()


@dataclass(frozen=True)
class VideoPair:
    """One video to score: its name, prediction, ground truth, optional hole mask and left view."""

    name: str
    pred: Path
    gt: Path
    mask: Path | None = None
    left: Path | None = None


def list_videos(folder: str | os.PathLike, what: str = "folder") -> dict[str, Path]:
    """Video files directly in ``folder`` by stem (``bench_0000.mkv`` → ``bench_0000``)."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} {root} is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith("."):
            if path.stem in found:
                raise ValueError(
                    f"{what} {root} has two videos named {path.stem}: {found[path.stem].name}, {path.name}"
                )
            found[path.stem] = path
    return found


def pair_videos(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    left: str | os.PathLike | None = None,
) -> list[VideoPair]:
    """Pair the videos of ``pred`` with those of ``gt`` (and ``masks``/``left``) by file stem.

    Every prediction needs a ground truth and every ground truth a prediction (a method that
    skipped videos would otherwise look better); the error lists what is unmatched.
    """
    preds = list_videos(pred, "--pred")
    gts = list_videos(gt, "--gt")
    if not preds:
        raise ValueError(f"--pred {pred} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    extra = sorted(set(preds) - set(gts))
    if extra:
        raise ValueError(f"{len(extra)} predictions have no ground truth in {gt}: {', '.join(extra[:5])}")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise ValueError(
            f"{len(missing)} ground-truth videos have no prediction in {pred}: {', '.join(missing[:5])}"
        )
    extras: dict[str, dict[str, Path]] = {}
    for flag, folder in (("--masks", masks), ("--left", left)):
        if folder is not None:
            videos = list_videos(folder, flag)
            lacking = sorted(set(preds) - set(videos))
            if lacking:
                raise ValueError(f"{flag} {folder} lacks {len(lacking)} videos: {', '.join(lacking[:5])}")
            extras[flag] = videos
    return [
        VideoPair(
            name,
            preds[name],
            gts[name],
            extras["--masks"][name] if "--masks" in extras else None,
            extras["--left"][name] if "--left" in extras else None,
        )
        for name in sorted(preds)
    ]


def evaluate_pairs(
    pairs: Sequence[VideoPair],
    method: str,
    *,
    lpips_model: LPIPS | None = None,
    extractor: Extractor | None = None,
    fvd_frames: int = 16,
    chunk_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    flow_fn: FlowFn = dis_flow,
) -> pd.DataFrame:
    """Per-video rows for ``method`` and, where pairs have a left view, for the copy-the-left-view
    baseline (``identity``). A video that cannot be scored is kept as a row with its ``error``."""
    rows = []
    jobs = [(method, p, p.pred) for p in pairs]
    jobs += [("identity", p, p.left) for p in pairs if p.left is not None]
    for i, (name, pair, source) in enumerate(jobs):
        row: dict[str, object] = {"method": name, "video": pair.name, "error": ""}
        try:
            row.update(
                score_files(
                    source,
                    pair.gt,
                    pair.mask,
                    lpips_model=lpips_model,
                    extractor=extractor,
                    fvd_frames=fvd_frames,
                    chunk_size=chunk_size,
                    flow_fn=flow_fn,
                )
            )
        except Exception as exc:  # recorded with its reason; the other videos go on
            log.debug("scoring %s of %s failed", pair.name, name, exc_info=True)
            row["error"] = f"{source.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(jobs))
    return pd.DataFrame(rows)


def _features(value: object) -> np.ndarray | None:
    """A feature vector from a row: array, list or float32 bytes; ``None`` when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes | bytearray):
        return np.frombuffer(value, dtype=np.float32).astype(np.float64) if len(value) else None
    arr = np.asarray(value, dtype=np.float64)
    return arr if arr.size else None


def _fvd(group: pd.DataFrame) -> float:
    if "fvd_pred" not in group or "fvd_gt" not in group:
        return float("nan")
    pred = [_features(v) for v in group["fvd_pred"]]
    gt = [_features(v) for v in group["fvd_gt"]]
    if len(pred) < 2 or any(f is None for f in pred + gt):
        return float("nan")
    return frechet_distance(*feature_statistics(np.stack(pred)), *feature_statistics(np.stack(gt)))


def summarise(rows: Sequence[Mapping] | pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """Mean per method over its scored videos (failed ones excluded and counted), plus FVD.

    ``rows`` need ``method`` and the metric columns; ``fvd_pred``/``fvd_gt`` and ``error`` are
    optional. Methods come in ``order`` first, then in first-seen order. FVD needs at least
    two videos per method (it compares distributions).
    """
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows.copy()
    if df.empty:
        raise ValueError("no rows to summarise")
    df["error"] = df["error"].fillna("") if "error" in df else ""
    methods = [m for m in order if m in set(df["method"])] + [
        m for m in dict.fromkeys(df["method"]) if m not in order
    ]
    out = []
    for method in methods:
        group = df[df["method"] == method]
        good = group[group["error"] == ""]
        entry: dict[str, object] = {"method": method, "videos": len(good), "failed": len(group) - len(good)}
        for col, *_ in COLUMNS:
            if col == "fvd":
                entry[col] = _fvd(good)
            else:
                vals = (
                    pd.to_numeric(good[col], errors="coerce").dropna()
                    if col in good
                    else pd.Series([], dtype=float)
                )
                entry[col] = float(vals.mean()) if len(vals) else float("nan")
        gt_floor = pd.to_numeric(
            good.get("e_warp_gt_x1e3", pd.Series([], dtype=float)), errors="coerce"
        ).dropna()
        entry["e_warp_gt_x1e3"] = float(gt_floor.mean()) if len(gt_floor) else float("nan")
        out.append(entry)
    return pd.DataFrame(out)


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def shown_columns(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The metric columns with at least one value (a metric nobody could compute is omitted)."""
    return [
        c for c in COLUMNS if c[0] in summary and pd.to_numeric(summary[c[0]], errors="coerce").notna().any()
    ]


def format_markdown(
    summary: pd.DataFrame, notes: Sequence[str] = (), names: Mapping[str, str] | None = None
) -> str:
    """The summary as a Markdown table (metrics nobody computed are left out), then notes.

    ``names`` maps method keys to the labels shown (default: the keys).
    """
    cols = shown_columns(summary)
    headers = ["Method", *[h for _, h, _ in cols], "Videos"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for _, r in summary.iterrows():
        label = (names or {}).get(str(r["method"]), str(r["method"]))
        cells = [label, *[_cell(r.get(c), f) for c, _, f in cols]]
        failed = int(r.get("failed", 0) or 0)
        videos = f"{int(r['videos'])}" + (f" ({failed} failed)" if failed else "")
        lines.append("| " + " | ".join([*cells, videos]) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_results(
    per_video: pd.DataFrame,
    summary: pd.DataFrame,
    out_dir: str | os.PathLike,
    notes: Sequence[str] = (),
    names: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``results.csv`` (summary), ``per_video.csv`` and ``results.md``; returns (csv, md).

    The CSVs keep every column (NaN where not computed); the Markdown omits empty metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    table = summary.copy()
    if names:
        table.insert(1, "label", [names.get(m, m) for m in table["method"]])
    table.to_csv(csv_path, index=False, float_format="%.6g")
    per_video.drop(columns=[c for c in ("fvd_pred", "fvd_gt") if c in per_video]).to_csv(
        out / "per_video.csv", index=False, float_format="%.6g"
    )
    md_path.write_text(format_markdown(summary, notes, names))
    return csv_path, md_path
