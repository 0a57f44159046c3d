"""The stages of the stereo-corpus job, as plain callables over rows and batches.

``pipelines.build_dataset`` composes them with Ray Data; nothing here imports Ray, so each
stage runs (and is tested) in-process too. Progress is kept in small per-record files
(see :mod:`spatialdreamer.data.manifest`) so that a rerun does only what is missing.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from spatialdreamer.data import storage
from spatialdreamer.data.ids import clip_id, config_hash, video_id
from spatialdreamer.data.shards import ClipArrays, write_clip
from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
from spatialdreamer.dvg import disparity_from_normalized
from spatialdreamer.dvg.sample import make_dvg_sample
from spatialdreamer.video import VideoError, probe_video, stream_frames
from spatialdreamer.video.clips import resize_and_crop
from spatialdreamer.video.shots import CutDetector

__all__ = [
    "CorpusConfig",
    "DepthDVGStage",
    "VIDEO_SUFFIXES",
    "list_sources",
    "record_failure",
    "split_video",
    "write_clip_stage",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


@dataclass
class CorpusConfig:
    """Settings of a corpus build; ``content_hash`` covers those that change clip content."""

    clip_length: int = 16
    stride: int = 16
    min_length: int = 8
    width: int = 512
    height: int = 320
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    budget_range: tuple[float, float] = (2.0, 4.0)
    convergence: float = 0.0
    cut_threshold: float = 0.45
    min_shot: int = 8
    refine_masks: bool = True
    crf: int = 17
    decode_chunk: int = 32
    depth_batch: int = 16
    # resources (do not change content)
    dvg_concurrency: list[int] = field(default_factory=lambda: [1, 2])
    split_concurrency: int = 2
    write_concurrency: int = 2
    gpus_per_dvg_actor: float = 1.0

    _RESOURCE_FIELDS = ("dvg_concurrency", "split_concurrency", "write_concurrency", "gpus_per_dvg_actor")

    @classmethod
    def from_dict(cls, values: dict) -> CorpusConfig:
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        if "budget_range" in values:
            values["budget_range"] = tuple(float(v) for v in values["budget_range"])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if not 1 <= self.min_length <= self.clip_length or self.stride < 1:
            raise ValueError("need 1 <= min_length <= clip_length and stride >= 1")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"training resolution must be at least 16x16, got {self.width}x{self.height}")
        lo, hi = self.budget_range
        if not 0 <= lo <= hi <= 20:
            raise ValueError(
                f"budget_range must satisfy 0 <= low <= high <= 20 (% of width), got {self.budget_range}"
            )

    def content(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self._RESOURCE_FIELDS}

    def content_hash(self) -> str:
        return config_hash(self.content())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, default=str).encode("utf-8")


def record_failure(
    root: str, path: str, stage: str, error: BaseException | str, clip: str | None = None
) -> dict:
    """Write one failure record (deterministic name: a rerun overwrites, never duplicates)."""
    vid = video_id(path)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, BaseException) and not isinstance(error, VideoError):
        message = f"{type(error).__name__}: {message}"
        log.debug("failure in %s for %s:\n%s", stage, path, "".join(traceback.format_exception(error)))
    record = {
        "path": path,
        "video_id": vid,
        "clip_id": clip,
        "stage": stage,
        "error": message,
        "created_time": _now(),
    }
    key = f"{clip or vid}-{stage}"
    storage.write_bytes(storage.join(root, "_failures", f"{key}.json"), _json(record))
    return record


def _read_sources_table(path: str) -> pd.DataFrame:
    data = storage.read_bytes(path)
    if path.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.DataFrame(list(csv.DictReader(io.StringIO(data.decode("utf-8")))))


def list_sources(spec: str) -> list[dict]:
    """Source videos from a folder, a glob, or a CSV/Parquet manifest with a ``path`` column
    (optional ``source``, ``license``, ``tags``: ``;``-separated in CSV, a list in Parquet).

    Relative paths in a manifest are resolved against the manifest's folder.
    """
    spec = str(spec)
    rows: list[dict] = []
    if spec.lower().endswith((".csv", ".parquet")):
        table = _read_sources_table(spec)
        if "path" not in table.columns:
            raise ValueError(f"{spec}: an input manifest needs a 'path' column, found {list(table.columns)}")
        base = spec.rsplit("/", 1)[0] if storage.is_uri(spec) else os.path.dirname(os.path.abspath(spec))
        for record in table.to_dict("records"):
            path = str(record["path"]).strip()
            if not path:
                continue
            if not storage.is_uri(path) and not os.path.isabs(path):
                path = storage.join(base, path)
            tags = record.get("tags")
            if isinstance(tags, str):
                tags = [t.strip() for t in tags.split(";") if t.strip()]
            elif tags is None or (isinstance(tags, float) and np.isnan(tags)):
                tags = []
            rows.append(
                {
                    "path": path,
                    "source": str(record.get("source") or "") or _default_source(path),
                    "license": str(record.get("license") or ""),
                    "tags": [str(t) for t in tags],
                }
            )
    elif any(ch in spec for ch in "*?[") and not storage.is_uri(spec):
        rows = [
            {"path": os.path.abspath(p)} for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)
        ]
    elif storage.exists(spec) and not _is_file(spec):
        rows = [{"path": p} for p in storage.list_files(spec, VIDEO_SUFFIXES)]
    elif storage.exists(spec):
        rows = [{"path": spec if storage.is_uri(spec) else os.path.abspath(spec)}]
    else:
        raise FileNotFoundError(
            f"input {spec} does not exist (expected a folder, glob, video or CSV/Parquet manifest)"
        )
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["path"] in seen:
            continue
        seen.add(row["path"])
        row.setdefault("source", _default_source(row["path"]))
        row.setdefault("license", "")
        row.setdefault("tags", [])
        row["video_id"] = video_id(row["path"])
        out.append(row)
    return out


def _is_file(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, inner = storage.open_filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def _default_source(path: str) -> str:
    parent = path.rstrip("/").rsplit("/", 2)
    return parent[-2] if len(parent) >= 2 else ""


def _video_record_path(root: str, vid: str) -> str:
    return storage.join(root, "_videos", f"{vid}.json")


def _done_clips(root: str, vid: str) -> set[str]:
    rows = storage.list_files(storage.join(root, "_rows", vid), (".json",))
    return {os.path.basename(p)[: -len(".json")] for p in rows}


def split_video(row: dict, root: str, config: CorpusConfig) -> Iterator[dict]:
    """Decode one source video in bounded chunks and cut it into clips at the training size.

    A generator: clips are handed on as soon as they are complete, so memory holds one chunk
    and one clip whatever the video's length. Clips never cross a shot cut. Clips already in
    the corpus are skipped; a video whose every clip is done is not decoded at all. Any failure
    is recorded, and the clips decoded before it are kept.
    """
    path, vid = row["path"], row["video_id"]
    done = _done_clips(root, vid)
    record_path = _video_record_path(root, vid)
    if storage.exists(record_path):
        record = json.loads(storage.read_bytes(record_path))
        if record.get("config_hash") == config.content_hash() and set(record["clips"]) <= done:
            return
    emitted: list[str] = []
    status, frames_seen = "complete", 0
    try:
        with storage.local_copy(path) as local:
            info = probe_video(local)
            splitter = _ClipSplitter(config)
            cuts = CutDetector(config.cut_threshold, config.min_shot)
            for chunk in stream_frames(local, config.decode_chunk, info=info):
                frames = resize_and_crop(chunk.frames, config.width, config.height)
                flags = cuts(chunk.frames)
                for i in range(len(chunk)):
                    for clip in splitter.push(frames[i], float(chunk.timestamps[i]), flags[i]):
                        emitted.append(clip_id(vid, clip["start"], clip["stop"]))
                        if emitted[-1] not in done:
                            yield _clip_row(row, info, clip)
                frames_seen += len(chunk)
            for clip in splitter.finish():
                emitted.append(clip_id(vid, clip["start"], clip["stop"]))
                if emitted[-1] not in done:
                    yield _clip_row(row, info, clip)
    except Exception as exc:  # the video is recorded as failed; clips before the failure are kept
        stage = "probe" if frames_seen == 0 else "decode"
        record_failure(root, path, stage, exc)
        status = f"failed in {stage}"
        if frames_seen == 0:
            return
    record = {
        "video_id": vid,
        "path": path,
        "status": status,
        "frames": frames_seen,
        "clips": emitted,
        "config_hash": config.content_hash(),
    }
    storage.write_bytes(record_path, _json(record))


class _ClipSplitter:
    """Streams frames into clips of ``clip_length`` every ``stride`` frames within a shot."""

    def __init__(self, config: CorpusConfig):
        self.config = config
        self.buffer: list[tuple[int, torch.Tensor, float]] = []  # (index, frame, time)
        self.index = -1
        self.shot = -1
        self.next_start = 0

    def push(self, frame: torch.Tensor, stamp: float, cut: bool) -> list[dict]:
        self.index += 1
        ready = []
        if cut or self.shot < 0:
            ready.extend(self._flush_tail())
            self.shot += 1
            self.buffer = []
            self.next_start = self.index
        self.buffer.append((self.index, frame, stamp))
        length = self.config.clip_length
        if self.index - self.next_start + 1 == length:
            ready.append(self._make(self.next_start, self.index + 1))
            self.next_start += self.config.stride
            self.buffer = [b for b in self.buffer if b[0] >= self.next_start]
        return ready

    def _flush_tail(self) -> list[dict]:
        start, stop = self.next_start, self.index  # stop is exclusive: the frame before the cut + 1
        if self.shot < 0 or stop <= start or stop - start < self.config.min_length:
            return []
        if stop - start >= self.config.clip_length:  # already emitted as a full window
            return []
        return [self._make(start, stop)]

    def finish(self) -> list[dict]:
        self.index += 1
        tail = self._flush_tail()
        self.buffer = []
        return tail

    def _make(self, start: int, stop: int) -> dict:
        items = [b for b in self.buffer if start <= b[0] < stop]
        return {
            "shot": self.shot,
            "start": start,
            "stop": stop,
            "frames": torch.stack([b[1] for b in items]),
            "t0": items[0][2],
            "t1": items[-1][2],
        }


def _clip_row(row: dict, info, clip: dict) -> dict:
    frames = clip["frames"]
    return {
        "clip_id": clip_id(row["video_id"], clip["start"], clip["stop"]),
        "video_id": row["video_id"],
        "shot_id": clip["shot"],
        "source_path": row["path"],
        "source": row["source"],
        "license": row["license"],
        "tags": json.dumps(list(row["tags"])),
        "start_frame": clip["start"],
        "end_frame": clip["stop"],
        "start_time": clip["t0"],
        "end_time": clip["t1"] + 1.0 / info.fps,
        "fps": info.fps,
        "source_width": info.width,
        "source_height": info.height,
        "frames": frames.permute(0, 2, 3, 1).numpy(),  # [T,H,W,3] uint8
    }


def _clip_budget(cid: str, budget_range: tuple[float, float]) -> float:
    """A per-clip depth budget drawn deterministically from the clip ID (variety, reproducible)."""
    lo, hi = budget_range
    u = int(hashlib.sha1(cid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return lo + (hi - lo) * u


class DepthDVGStage:
    """Depth → shot-normalised disparity → DVG views for a batch of clips (a Ray Data actor:
    the depth model loads once per actor)."""

    def __init__(self, config: CorpusConfig, root: str, device: str = "auto"):
        self.config = config
        self.root = root
        self.estimator = load_depth_estimator(config.depth_model, device=device)
        self.depth_name = self.estimator.name

    def _clip(self, frames_u8: np.ndarray, cid: str) -> dict:
        device = self.estimator.device
        frames = (
            torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2).to(device).float() / 255.0
        )
        self.estimator.reset()
        inverse = torch.cat(
            [
                self.estimator(frames[i : i + self.config.depth_batch])
                for i in range(0, len(frames), self.config.depth_batch)
            ]
        )
        normalized = TemporalNormalizer()(inverse)
        budget = _clip_budget(cid, self.config.budget_range)
        disparity = disparity_from_normalized(normalized, frames.shape[-1], budget, self.config.convergence)
        sample = make_dvg_sample(frames.cpu(), disparity.float().cpu(), refine_masks=self.config.refine_masks)
        q = torch.quantile(
            sample.disparity.flatten()[:: max(1, sample.disparity.numel() // 200_000)],
            torch.tensor([0.05, 0.5, 0.95]),
        )
        to_u8 = lambda x: (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
        return {
            "right": to_u8(sample.right),
            "back": to_u8(sample.back),
            "right_holes": sample.right_holes[:, 0].numpy(),
            "back_holes": sample.back_holes[:, 0].numpy(),
            "disparity": sample.disparity[:, 0].numpy().astype(np.float32),
            "budget": np.float32(budget),
            "disparity_p05": np.float32(q[0]),
            "disparity_p50": np.float32(q[1]),
            "disparity_p95": np.float32(q[2]),
            "hole_ratio": np.float32(sample.back_holes.float().mean()),
            "right_hole_ratio": np.float32(sample.right_holes.float().mean()),
            "motion_score": np.float32(sample.motion),
            "depth_model": self.depth_name,
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {}
        keep: list[int] = []
        results = []
        for i, cid in enumerate(batch["clip_id"]):
            try:
                results.append(self._clip(batch["frames"][i], str(cid)))
                keep.append(i)
            except Exception as exc:  # recorded; the rest of the batch goes on
                record_failure(self.root, str(batch["source_path"][i]), "depth_dvg", exc, clip=str(cid))
        for key, values in batch.items():
            out[key] = [values[i] for i in keep]
        for key in results[0] if results else []:
            out[key] = [r[key] for r in results]
        return {k: _stack(v) for k, v in out.items()}


def _stack(values: list):
    if values and isinstance(values[0], np.ndarray) and values[0].ndim > 0:
        return np.stack(values)
    return np.array(values)


def write_clip_stage(batch: dict[str, np.ndarray], root: str, config: CorpusConfig) -> dict[str, np.ndarray]:
    """Encode each clip's shard, then write its manifest record last (the clip's commit)."""
    done_ids, done_frames = [], []
    digest = config.content_hash()
    for i, cid in enumerate(batch["clip_id"]):
        cid, vid = str(cid), str(batch["video_id"][i])
        try:
            as_float = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
            arrays = ClipArrays(
                rgb=as_float(batch["frames"][i]),
                right=as_float(batch["right"][i]),
                right_holes=torch.from_numpy(np.asarray(batch["right_holes"][i])).unsqueeze(1),
                back=as_float(batch["back"][i]),
                back_holes=torch.from_numpy(np.asarray(batch["back_holes"][i])).unsqueeze(1),
                disparity=torch.from_numpy(np.asarray(batch["disparity"][i])).unsqueeze(1),
            )
            fps = float(batch["fps"][i])
            paths = write_clip(root, vid, cid, arrays, fps, crf=config.crf)
            n = int(arrays.rgb.shape[0])
            record = {
                "clip_id": cid,
                "video_id": vid,
                "shot_id": int(batch["shot_id"][i]),
                "source_path": str(batch["source_path"][i]),
                "source": str(batch["source"][i]),
                "license": str(batch["license"][i]),
                "tags": json.loads(str(batch["tags"][i])),
                "start_frame": int(batch["start_frame"][i]),
                "end_frame": int(batch["end_frame"][i]),
                "num_frames": n,
                "start_time": float(batch["start_time"][i]),
                "end_time": float(batch["end_time"][i]),
                "duration": n / fps,
                "fps": fps,
                "width": int(arrays.rgb.shape[-1]),
                "height": int(arrays.rgb.shape[-2]),
                "source_width": int(batch["source_width"][i]),
                "source_height": int(batch["source_height"][i]),
                "depth_model": str(batch["depth_model"][i]),
                "budget": float(batch["budget"][i]),
                "disparity_p05": float(batch["disparity_p05"][i]),
                "disparity_p50": float(batch["disparity_p50"][i]),
                "disparity_p95": float(batch["disparity_p95"][i]),
                "hole_ratio": float(batch["hole_ratio"][i]),
                "right_hole_ratio": float(batch["right_hole_ratio"][i]),
                "motion_score": float(batch["motion_score"][i]),
                **paths,
                "config_hash": digest,
                "created_time": _now(),
            }
            storage.write_bytes(storage.join(root, "_rows", vid, f"{cid}.json"), _json(record))
            done_ids.append(cid)
            done_frames.append(n)
        except Exception as exc:
            record_failure(root, str(batch["source_path"][i]), "write", exc, clip=cid)
    return {"clip_id": np.array(done_ids, dtype=object), "num_frames": np.array(done_frames, dtype=np.int64)}


def job_summary(root: str, began: float, clips: int, frames: int) -> dict:
    """Figures printed at the end of a job (and stored in ``_SUCCESS.json``)."""
    elapsed = time.perf_counter() - began
    return {
        "clips_written": clips,
        "frames_written": frames,
        "wall_seconds": elapsed,
        "frames_per_second": frames / elapsed if elapsed > 0 else 0.0,
    }
