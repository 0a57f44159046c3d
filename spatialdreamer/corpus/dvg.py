"""Depth + DVG: the GPU stage (an actor per GPU; on CPU when the cluster has none).

Frames of all clips in a batch go through the depth model together (``depth_batch`` frames
per forward pass, float16 on CUDA), then each clip is normalised over time, warped to the
other eye and back, and its masks refined with the flow computed once per pair of frames
(handed in by the prepare stage, or a learned flow run here on the GPU). Nothing CPU-heavy
runs here, and what leaves is compact: uint8 views, bit-packed masks, uint16 disparity codes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from spatialdreamer.corpus.batches import column, pack_mask, select, view_tensor
from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.prepare import FILTER_STAGE
from spatialdreamer.corpus.records import TransientError, is_transient, record_failure, retry_transient
from spatialdreamer.corpus.scores import depth_scores, flow_scores, quality_problem
from spatialdreamer.data.codecs import DISPARITY_OFFSET, DISPARITY_SCALE
from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
from spatialdreamer.depth.factory import PARALLAX
from spatialdreamer.dvg import disparity_from_normalized
from spatialdreamer.dvg.flow import upscale_flow
from spatialdreamer.dvg.sample import make_dvg_sample

__all__ = ["DROPPED_COLUMNS", "DepthDVGStage", "clip_budget", "disparity_codes"]

#: columns consumed here and not handed on (the source clip travels as ``rgb_mp4`` bytes)
DROPPED_COLUMNS = ("frames", "flow_forward", "flow_backward")


def clip_budget(cid: str, budget_range: tuple[float, float]) -> float:
    """A per-clip depth budget drawn deterministically from the clip ID (variety, reproducible)."""
    lo, hi = budget_range
    u = int(hashlib.sha1(cid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return lo + (hi - lo) * u


def disparity_codes(disparity: torch.Tensor) -> np.ndarray:
    """Pixels → the uint16 storage codes of :func:`spatialdreamer.data.disparity_to_u16`,
    computed where the tensor is (only 2 bytes a pixel leave the device)."""
    codes = torch.round(disparity.float() * DISPARITY_SCALE) + DISPARITY_OFFSET
    return codes.clamp_(0, 65535).to(torch.int32).to(torch.uint16).cpu().numpy()


class DepthDVGStage:
    """Depth → shot-normalised disparity → DVG views, for a batch of clips.

    A Ray Data actor: the depth model (and a learned flow, when ``config.flow_model`` names
    RAFT weights) loads once in ``__init__``. A stateful depth model (``parallax``) runs clip
    by clip, reset at each clip. A clip that fails is recorded and dropped; the rest of the
    batch goes on. Out of GPU memory, the batch is retried clip by clip; a clip that still
    does not fit raises :class:`TransientError` for Ray to retry (bounded), unrecorded.
    """

    def __init__(self, config: CorpusConfig, root: str, device: str = "auto"):
        self.config = config
        self.root = root
        options = (
            {}
            if str(config.depth_model).strip().lower() == PARALLAX
            else {"max_batch_size": config.depth_batch}
        )
        self.estimator = load_depth_estimator(config.depth_model, device=device, **options)
        self.device = self.estimator.device
        self.depth_name = self.estimator.name
        self.flow_fn = None
        if config.learned_flow:
            from spatialdreamer.metrics.raft import RAFTFlow

            self.flow_fn = RAFTFlow(config.flow_model, device=self.device, batch_size=config.depth_batch)

    @torch.inference_mode()
    def _depth(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        step = self.config.depth_batch
        if self.estimator.stateful:
            out = []
            for frames in clips:
                self.estimator.reset()
                out.append(
                    torch.cat([self.estimator(frames[i : i + step]) for i in range(0, len(frames), step)])
                )
            return out
        frames = torch.cat(clips)
        inverse = torch.cat([self.estimator(frames[i : i + step]) for i in range(0, len(frames), step)])
        return list(inverse.split([len(c) for c in clips]))

    def _flows(self, batch: dict, i: int, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Forward and backward flow of clip ``i``: the learned flow here, or DIS from the batch."""
        t = len(frames)
        if t < 2:
            return None
        if self.flow_fn is not None:  # both directions in one batched pass
            both = self.flow_fn(torch.cat([frames[:-1], frames[1:]]), torch.cat([frames[1:], frames[:-1]]))
            return both[: t - 1], both[t - 1 :]
        h, w = frames.shape[-2:]
        forward, backward = (
            upscale_flow(view_tensor(batch[key][i]).to(self.device).float(), h, w)
            for key in ("flow_forward", "flow_backward")
        )
        return forward, backward

    @torch.inference_mode()
    def _dvg(self, batch: dict, i: int, frames: torch.Tensor, inverse: torch.Tensor, cid: str) -> dict:
        normalized = TemporalNormalizer()(inverse.float())
        budget = clip_budget(cid, self.config.budget_range)
        disparity = disparity_from_normalized(normalized, frames.shape[-1], budget, self.config.convergence)
        flows = self._flows(batch, i, frames)
        kwargs = {"flow_forward": flows[0], "flow_backward": flows[1]} if flows else {}
        sample = make_dvg_sample(frames, disparity.float(), refine_masks=self.config.refine_masks, **kwargs)
        flat = sample.disparity.flatten()
        step = max(1, flat.numel() // 200_000)
        q = torch.quantile(flat[::step].float(), torch.tensor([0.05, 0.5, 0.95], device=flat.device)).cpu()

        def to_u8(x: torch.Tensor) -> np.ndarray:
            return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

        out = {
            "right": to_u8(sample.right),
            "back": to_u8(sample.back),
            "right_holes_bits": pack_mask(sample.right_holes[:, 0]),
            "back_holes_bits": pack_mask(sample.back_holes[:, 0]),
            "disparity_u16": disparity_codes(sample.disparity[:, 0]),
            "budget": float(budget),
            "disparity_p05": float(q[0]),
            "disparity_p50": float(q[1]),
            "disparity_p95": float(q[2]),
            "hole_ratio": float(sample.back_holes.float().mean()),
            "right_hole_ratio": float(sample.right_holes.float().mean()),
            "depth_model": self.depth_name,
            **depth_scores(normalized),
        }
        if self.flow_fn is not None:  # motion scores come from the learned flow, here
            out |= flow_scores(flows[0]) if flows else {"motion_score": 0.0, "camera_motion": 0.0}
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(c) for c in batch.get("clip_id", [])]
        if not ids:  # every clip of the block was filtered or failed upstream
            return {key: values for key, values in batch.items() if key not in DROPPED_COLUMNS}
        results: dict[int, dict] = {}
        frames = [
            view_tensor(batch["frames"][i]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            for i in range(len(ids))
        ]
        try:
            inverse: list = self._depth(frames)
        except Exception as exc:  # the batch's depth failed: clip by clip, to find the culprit
            if len(frames) == 1 and not is_transient(exc):
                inverse = [exc]
            else:
                inverse = []
                for f in frames:
                    try:
                        inverse.append(retry_transient(lambda f=f: self._depth([f])[0], "depth"))
                    except TransientError:
                        raise
                    except Exception as single:
                        inverse.append(single)
        for i, cid in enumerate(ids):
            path = str(batch["source_path"][i])
            try:
                if isinstance(inverse[i], BaseException):
                    raise inverse[i]
                results[i] = retry_transient(
                    lambda i=i, cid=cid: self._dvg(batch, i, frames[i], inverse[i], cid), "dvg"
                )
                if self.flow_fn is not None:
                    problem = quality_problem({"camera_motion": results[i]["camera_motion"]}, self.config)
                    if problem:
                        del results[i]
                        record_failure(self.root, path, FILTER_STAGE, problem, clip=cid)
            except TransientError:
                raise
            except Exception as exc:  # recorded; the rest of the batch goes on
                record_failure(self.root, path, "depth_dvg", exc, clip=cid)
        keep = sorted(results)
        out = select(batch, keep, drop=DROPPED_COLUMNS)
        for key in results[keep[0]] if keep else ():
            out[key] = [results[i][key] for i in keep]
        return {k: column(v) for k, v in out.items()}
