"""Prepare: the CPU work a clip needs before the GPU stage (a CPU task per clip).

Cheap scores and the quality filters (a clip below a threshold never reaches a GPU), the
source clip encoded once (only its bytes travel on), and — unless a learned flow runs on the
GPU — DIS optical flow for each pair of frames, computed once, both directions, at
``flow_scale`` of the clip's size and handed on as float16.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from spatialdreamer.corpus.batches import column, select
from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.records import record_failure
from spatialdreamer.corpus.scores import flow_scores, frame_scores, quality_problem
from spatialdreamer.data.shards import encode_rgb_array
from spatialdreamer.dvg.dis import dis_pair_flows

__all__ = ["FILTER_STAGE", "encode_rgb_bytes", "prepare_clips"]

#: the failures-table stage of clips left out by a quality threshold
FILTER_STAGE = "filter"


def encode_rgb_bytes(frames: np.ndarray, fps: float, crf: int) -> bytes:
    """``[T,H,W,3]`` uint8 → the bytes of the clip's ``rgb.mp4`` (H.264 RGB 4:4:4)."""
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-rgb-") as tmp:
        path = os.path.join(tmp, "rgb.mp4")
        encode_rgb_array(path, np.ascontiguousarray(frames), fps, crf=crf)
        with open(path, "rb") as handle:
            return handle.read()


def prepare_clips(batch: dict[str, np.ndarray], root: str, config: CorpusConfig) -> dict[str, np.ndarray]:
    """Scores, filters, ``rgb_mp4`` bytes and (DIS) flows for each clip of a batch.

    Adds ``brightness``, ``sharpness``, ``black_border``, ``phash``, ``rgb_mp4`` and, with DIS,
    ``flow_forward``/``flow_backward`` (``[T-1,2,h,w]`` float16), ``motion_score`` and
    ``camera_motion``. A clip that fails a threshold is recorded (stage ``filter``, with the
    reason) and dropped; one that cannot be processed is recorded (stage ``prepare``).
    """
    added: dict[int, dict] = {}
    for i, cid in enumerate(batch["clip_id"]):
        cid = str(cid)
        try:
            frames = np.asarray(batch["frames"][i])
            scores = frame_scores(frames)
            if not config.learned_flow:
                forward, backward = dis_pair_flows(frames, scale=config.flow_scale)
                scores |= flow_scores(forward, config.flow_scale)
                scores["flow_forward"] = forward.astype(np.float16)
                scores["flow_backward"] = backward.astype(np.float16)
            problem = quality_problem(scores, config)
            if problem:
                record_failure(root, str(batch["source_path"][i]), FILTER_STAGE, problem, clip=cid)
                continue
            scores["rgb_mp4"] = encode_rgb_bytes(frames, float(batch["fps"][i]), config.crf)
            added[i] = scores
        except Exception as exc:  # permanent: recorded (transient ones are raised for a retry)
            record_failure(root, str(batch["source_path"][i]), "prepare", exc, clip=cid)
    keep = sorted(added)
    out = select(batch, keep)
    for key in added[keep[0]] if keep else ():
        out[key] = [added[i][key] for i in keep]
    return {k: column(v) for k, v in out.items()}
