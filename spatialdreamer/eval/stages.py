"""The evaluation job's stages, as plain classes over batch dicts (Ray Data composes them in
``pipelines/evaluate.py``; they run just as well in a loop).

    scenes ─► PredictStage (baselines; writes each prediction losslessly) ─► ScoreStage ─► rows

A batch is a dict of equal-length sequences. Failures are rows with an ``error``, never a
crash, so one bad video does not lose the others' work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from spatialdreamer.dvg import dis_flow
from spatialdreamer.eval.baselines import build_baselines
from spatialdreamer.eval.benchmark import load_scene, scene_files
from spatialdreamer.eval.harness import score_files
from spatialdreamer.metrics import LPIPS, I3DFeatures, RAFTFlow
from spatialdreamer.video import VideoWriter

__all__ = ["PredictStage", "ScoreStage", "pred_path"]

log = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def pred_path(out_dir: str | os.PathLike, method: str, scene: str) -> Path:
    """Where a method's prediction for a scene is written: ``OUT/pred/<method>/<scene>.mkv``."""
    return Path(out_dir) / "pred" / method / f"{scene}.mkv"


class PredictStage:
    """Run every baseline on benchmark scenes; write each right view as lossless FFV1.

    ``__call__({"scene": [...]})`` → one row per (scene, method): ``scene``, ``method``,
    ``pred``, ``gt`` and ``mask`` (file paths), ``seconds`` (prediction time) and ``error``
    ("" when it worked).
    """

    def __init__(
        self,
        bench_root: str | os.PathLike,
        out_dir: str | os.PathLike,
        methods: Sequence[str],
        *,
        pipeline: str | os.PathLike | None = None,
        depth_model: str = "parallax",
        refiner_steps: int = 25,
        device: str = "cpu",
        threads: int | None = 1,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.root, self.out = Path(bench_root), Path(out_dir)
        self.baselines = build_baselines(
            methods, pipeline=pipeline, depth_model=depth_model, refiner_steps=refiner_steps, device=device
        )
        self.device = device

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, list]:
        keys = ("scene", "method", "pred", "gt", "mask", "seconds", "error")
        rows: dict[str, list] = {k: [] for k in keys}
        for scene_name in batch["scene"]:
            scene_name = str(scene_name)
            try:
                scene = load_scene(self.root, scene_name)
            except Exception as exc:
                log.debug("loading %s failed", scene_name, exc_info=True)
                scene, error = None, f"{scene_name}: {_one_line(exc)}"
            for key, baseline in self.baselines.items():
                path, seconds, err = pred_path(self.out, key, scene_name), float("nan"), ""
                if scene is None:
                    err = error
                else:
                    try:
                        began = time.perf_counter()
                        left = scene.left.to(self.device)
                        out = baseline(left, scene.disparity.to(self.device)).clamp(0, 1).cpu()
                        seconds = time.perf_counter() - began
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with VideoWriter(path, scene.fps, codec="ffv1") as writer:
                            writer.write(out)
                    except Exception as exc:
                        log.debug("%s on %s failed", key, scene_name, exc_info=True)
                        err = f"{key} on {scene_name}: {_one_line(exc)}"
                rows["scene"].append(scene_name)
                rows["method"].append(key)
                rows["pred"].append(str(path))
                rows["gt"].append(str(scene_files(self.root, scene_name)["right"]))
                rows["mask"].append(str(scene_files(self.root, scene_name)["occlusion"]))
                rows["seconds"].append(seconds)
                rows["error"].append(err)
        return rows


class ScoreStage:
    """Score predicted videos against their ground truth.

    ``__call__`` takes rows with ``scene``, ``method``, ``pred``, ``gt``, ``mask`` (a hole-mask
    video or "") and ``error`` (a row that already failed passes through) and adds the metric
    columns (see :func:`spatialdreamer.eval.harness.score_files`); FVD features travel
    as float32 bytes (``b""`` when not computed), so rows stay flat for Ray Data and Parquet.

    Args:
        lpips: ``{"net", "backbone_weights", "lpips_weights"}`` to build :class:`LPIPS`, or None.
        i3d: path of I3D weights for FVD features, or None.
        raft_weights: RAFT checkpoint for E_warp's flow, or None (OpenCV DIS).
    """

    METRICS = (
        "frames",
        "psnr",
        "ssim",
        "lpips",
        "psnr_holes",
        "ssim_holes",
        "lpips_holes",
        "e_warp_x1e3",
        "e_warp_gt_x1e3",
    )

    def __init__(
        self,
        *,
        lpips: Mapping[str, object] | None = None,
        i3d: str | os.PathLike | None = None,
        raft_weights: str | os.PathLike | None = None,
        fvd_frames: int = 16,
        chunk_size: int = 16,
        device: str = "cpu",
        threads: int | None = 1,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.lpips_model = LPIPS(**lpips).to(device) if lpips else None
        self.extractor = I3DFeatures(i3d, device) if i3d else None
        self.flow_fn = RAFTFlow(raft_weights, device) if raft_weights else dis_flow
        self.fvd_frames, self.chunk_size = fvd_frames, chunk_size

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, list]:
        keep = ("scene", "method", "pred", "gt", "mask", "seconds")
        rows: dict[str, list] = {k: list(batch[k]) for k in keep if k in batch}
        rows.update({k: [] for k in (*self.METRICS, "fvd_pred", "fvd_gt", "error")})
        for i in range(len(batch["pred"])):
            error = str(batch["error"][i]) if "error" in batch else ""
            result: dict[str, object] = {}
            if not error:
                mask = str(batch["mask"][i]) if "mask" in batch else ""
                try:
                    result = score_files(
                        str(batch["pred"][i]),
                        str(batch["gt"][i]),
                        mask or None,
                        lpips_model=self.lpips_model,
                        extractor=self.extractor,
                        fvd_frames=self.fvd_frames,
                        chunk_size=self.chunk_size,
                        flow_fn=self.flow_fn,
                    )
                except Exception as exc:
                    log.debug("scoring %s failed", batch["pred"][i], exc_info=True)
                    error = f"{Path(str(batch['pred'][i])).name}: {_one_line(exc)}"
            for key in self.METRICS:
                rows[key].append(float(result.get(key, float("nan"))))
            for key in ("fvd_pred", "fvd_gt"):
                value = result.get(key)
                rows[key].append(b"" if value is None else np.asarray(value, np.float32).tobytes())
            rows["error"].append(error)
        return rows
