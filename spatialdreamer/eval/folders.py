"""Score folders of videos in this process (the ``spatialdreamer eval`` command; no Ray).

Shared with the Ray job: :func:`resolve_lpips` decides whether the LPIPS column can be
filled, and :func:`notes_for` writes the lines under the table that say what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from spatialdreamer.dvg import dis_flow
from spatialdreamer.eval.baselines import BASELINES
from spatialdreamer.eval.harness import evaluate_pairs, pair_videos, summarise
from spatialdreamer.metrics import (
    LPIPS,
    I3DFeatures,
    RAFTFlow,
    find_backbone_weights,
    find_lpips_weights,
)

__all__ = ["evaluate_folders", "notes_for", "resolve_lpips"]


def resolve_lpips(
    net: str = "alex", backbone: str | None = None, linear: str | None = None
) -> tuple[dict | None, str | None]:
    """LPIPS settings for the scorers, or ``None`` and the note that says why not.

    Paths given explicitly must load (a one-line error otherwise); without them the torch hub
    cache and an installed ``lpips`` package are searched, and absence only omits the column.
    """
    explicit = backbone is not None or linear is not None
    found_backbone = find_backbone_weights(net)  # type: ignore[arg-type]
    found_linear = find_lpips_weights(net)  # type: ignore[arg-type]
    backbone = backbone or (str(found_backbone) if found_backbone else None)
    linear = linear or (str(found_linear) if found_linear else None)
    if not explicit and (backbone is None or linear is None):
        lacking = [
            w for w, p in (("ImageNet backbone", backbone), ("LPIPS linear-layer", linear)) if p is None
        ]
        return None, (
            f"LPIPS omitted: no {' or '.join(lacking)} weights found locally "
            "(pass --lpips-backbone PATH --lpips-weights PATH)."
        )
    settings = {"net": net, "backbone_weights": backbone, "lpips_weights": linear}
    LPIPS(**settings)  # fail here, once, with the loader's one-line error
    return settings, None


def notes_for(summary: pd.DataFrame, *, i3d: str | None, identity_scored: bool) -> list[str]:
    """The notes that go under a results table: missing FVD, missing copy-left row, E_warp floor."""
    notes = []
    if not i3d:
        notes.append("FVD omitted: no I3D weights given (pass --i3d PATH).")
    elif summary["fvd"].isna().all():
        notes.append("FVD n/a: it needs at least two scored videos per method.")
    if not identity_scored:
        notes.append("Copy-the-left-view baseline not scored (no --left): PSNR alone cannot be judged.")
    floor = summary["e_warp_gt_x1e3"].dropna()
    if len(floor):
        notes.append(
            f"E_warp of the ground-truth videos themselves: {floor.iloc[0]:.3f} ×10⁻³ "
            "(the floor set by flow error and occlusions)."
        )
    return notes


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    left: str | os.PathLike | None = None,
    name: str | None = None,
    lpips_backbone: str | None = None,
    lpips_weights: str | None = None,
    lpips_net: str = "alex",
    i3d: str | None = None,
    raft_weights: str | None = None,
    fvd_frames: int = 16,
    chunk_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Score ``pred`` against ``gt`` (videos paired by file name); returns (per-video rows,
    summary, notes). ``left`` adds the copy-the-left-view row, ``masks`` the hole columns;
    ``raft_weights`` computes E_warp's flow with RAFT instead of OpenCV DIS."""
    pairs = pair_videos(pred, gt, masks, left)
    method = name or Path(pred).expanduser().resolve().name
    if method == "identity" and left is not None:
        raise ValueError("--name identity is taken by the copy-the-left-view row; choose another name")
    lpips_settings, lpips_note = resolve_lpips(lpips_net, lpips_backbone, lpips_weights)
    per_video = evaluate_pairs(
        pairs,
        method,
        lpips_model=LPIPS(**lpips_settings) if lpips_settings else None,
        extractor=I3DFeatures(i3d) if i3d else None,
        fvd_frames=fvd_frames,
        chunk_size=chunk_size,
        progress=progress,
        flow_fn=RAFTFlow(raft_weights) if raft_weights else dis_flow,
    )
    summary = summarise(per_video, order=BASELINES)
    notes = ([lpips_note] if lpips_note else []) + notes_for(
        summary, i3d=i3d, identity_scored=left is not None
    )
    return per_video, summary, notes
