"""The stages of the stereo-corpus job, as plain callables over rows and batches.

``pipelines.build_dataset`` composes them with Ray Data; nothing here imports Ray, so each
stage also runs in-process (:func:`build_in_process`, used by tests and the benchmark).

Progress lives in small per-record files under the corpus root, written last and atomically:

    _rows/<video_id>/<clip_id>.json       a finished clip (its shards are complete)
    _failures/<video_id>/<key>.json       a failed video or clip, with the stage and reason
    _videos/<video_id>.json               a split video: the clips it yields, frames, status

A rerun skips every clip with a row or a failure record, and does not even decode a video
whose clips are all accounted for; so a job killed at any moment resumes with only the
missing work, and the tables compacted from these records come out the same.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import traceback
from collections.abc import Iterable, Iterator
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
from spatialdreamer.video.clips import ClipSplitter, resize_and_crop
from spatialdreamer.video.shots import CutDetector

__all__ = [
    "CorpusConfig",
    "DepthDVGStage",
    "VIDEO_SUFFIXES",
    "build_in_process",
    "list_sources",
    "record_failure",
    "rows_to_batch",
    "split_video",
    "write_clip_stage",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


@dataclass
class CorpusConfig:
    """Settings of a corpus build. ``content_hash`` covers the ones that change clip content;
    the resource settings (actor counts, CPUs, batch sizes) do not, so a corpus can be resumed
    on another machine with other resources."""

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
    # resources (do not change content)
    decode_chunk: int = 8
    depth_batch: int = 16
    dvg_batch_size: int = 1
    dvg_actors: list[int] = field(default_factory=lambda: [1, 2])
    dvg_num_cpus: float = 1.0
    gpus_per_dvg_actor: float = 1.0
    split_tasks: int = 2
    split_num_cpus: float = 1.0
    write_tasks: int = 2
    write_num_cpus: float = 1.0

    _RESOURCE_FIELDS = (
        "decode_chunk",
        "depth_batch",
        "dvg_batch_size",
        "dvg_actors",
        "dvg_num_cpus",
        "gpus_per_dvg_actor",
        "split_tasks",
        "split_num_cpus",
        "write_tasks",
        "write_num_cpus",
    )

    @classmethod
    def from_dict(cls, values: dict) -> CorpusConfig:
        """Build and validate a config; unknown keys are an error that lists the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"a corpus config must be a mapping of settings, got {type(values).__name__}")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        try:
            if "budget_range" in values:
                values["budget_range"] = tuple(float(v) for v in values["budget_range"])
            if "dvg_actors" in values:
                actors = values["dvg_actors"]
                actors = [actors, actors] if isinstance(actors, int) else [int(v) for v in actors]
                values["dvg_actors"] = actors
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad config value: {exc}") from exc
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("clip_length", "stride", "min_length", "width", "height", "crf", "min_shot"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"config {name} must be an integer, got {getattr(self, name)!r}")
        if not 1 <= self.min_length <= self.clip_length or self.stride < 1:
            raise ValueError(
                f"need 1 <= min_length <= clip_length and stride >= 1, got min_length={self.min_length}, "
                f"clip_length={self.clip_length}, stride={self.stride}"
            )
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"training resolution must be even and at least 16x16, got {self.width}x{self.height}"
            )
        if len(self.budget_range) != 2 or not 0 <= self.budget_range[0] <= self.budget_range[1] <= 20:
            raise ValueError(
                f"budget_range must be [low, high] with 0 <= low <= high <= 20 (% of width), "
                f"got {list(self.budget_range)}"
            )
        if not 0.0 <= self.convergence <= 1.0:
            raise ValueError(f"convergence must be in [0, 1], got {self.convergence}")
        if not 0.0 < self.cut_threshold < 1.0:
            raise ValueError(f"cut_threshold must be in (0, 1), got {self.cut_threshold}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if len(self.dvg_actors) != 2 or not 1 <= self.dvg_actors[0] <= self.dvg_actors[1]:
            raise ValueError(f"dvg_actors must be [min, max] with 1 <= min <= max, got {self.dvg_actors}")
        for name in ("decode_chunk", "depth_batch", "dvg_batch_size", "split_tasks", "write_tasks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config {name} must be >= 1, got {getattr(self, name)}")
        for name in ("dvg_num_cpus", "split_num_cpus", "write_num_cpus", "gpus_per_dvg_actor"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"config {name} must be >= 0, got {getattr(self, name)}")
        if not str(self.depth_model).strip():
            raise ValueError("depth_model is empty; name a Hugging Face id, a local directory or 'parallax'")

    def content(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self._RESOURCE_FIELDS}

    def content_hash(self) -> str:
        return config_hash(self.content())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, default=str).encode("utf-8")


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, BaseException) and not isinstance(error, VideoError):
        return f"{type(error).__name__}: {first}" if first else type(error).__name__
    return first or "unknown error"


def record_failure(
    root: str, path: str, stage: str, error: BaseException | str, clip: str | None = None
) -> dict:
    """Write one failure record. Its name is deterministic, so a rerun overwrites, never adds."""
    vid = video_id(path)
    if isinstance(error, BaseException) and not isinstance(error, VideoError):
        log.warning("%s failed in %s: %s", path, stage, "".join(traceback.format_exception(error)))
    record = {
        "path": path,
        "video_id": vid,
        "clip_id": clip,
        "stage": stage,
        "error": _one_line(error),
        "created_time": _now(),
    }
    storage.write_bytes(
        storage.join(root, "_failures", vid, f"{clip or 'video'}.{stage}.json"), _json(record)
    )
    return record


# ---------------------------------------------------------------------------------------------
# list sources


def _read_sources_table(path: str) -> pd.DataFrame:
    data = storage.read_bytes(path)
    if path.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.DataFrame(list(csv.DictReader(io.StringIO(data.decode("utf-8-sig")))))


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _tags(value) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(";") if t.strip()]
    return [str(t) for t in value]


def list_sources(spec: str) -> list[dict]:
    """Source videos from a folder, a glob, one video, or a CSV/Parquet input manifest with a
    ``path`` column (optional ``source``, ``license``, ``tags``: ``;``-separated in CSV, a list
    in Parquet). Relative paths in a manifest are resolved against the manifest's folder.

    Every row gets ``path``, ``source`` (default: the parent folder's name), ``license``,
    ``tags`` and ``video_id``. Paths are only listed here; missing or broken files are found
    (and recorded) by the split stage, so one bad row never stops the job.
    """
    spec = str(spec)
    rows: list[dict] = []
    if spec.lower().endswith((".csv", ".parquet")):
        if not storage.exists(spec):
            raise FileNotFoundError(f"input manifest {spec} does not exist")
        try:
            table = _read_sources_table(spec)
        except Exception as exc:
            raise ValueError(f"{spec}: cannot read it as an input manifest ({_one_line(exc)})") from exc
        if "path" not in table.columns:
            raise ValueError(f"{spec}: an input manifest needs a 'path' column, found {list(table.columns)}")
        base = spec.rsplit("/", 1)[0] if storage.is_uri(spec) else os.path.dirname(os.path.abspath(spec))
        for record in table.to_dict("records"):
            path = "" if _is_missing(record["path"]) else str(record["path"]).strip()
            if not path:
                continue
            if not storage.is_uri(path) and not os.path.isabs(path):
                path = (
                    os.path.normpath(storage.join(base, path))
                    if not storage.is_uri(base)
                    else f"{base}/{path}"
                )
            source = record.get("source")
            license_ = record.get("license")
            rows.append(
                {
                    "path": path,
                    "source": "" if _is_missing(source) else str(source),
                    "license": "" if _is_missing(license_) else str(license_),
                    "tags": _tags(record.get("tags")),
                }
            )
    elif any(ch in spec for ch in "*?[") and not storage.is_uri(spec):
        rows = [
            {"path": os.path.abspath(p)} for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)
        ]
        if not rows:
            raise FileNotFoundError(f"no files match {spec}")
    elif storage.exists(spec) and not _is_file(spec):
        rows = [{"path": p} for p in storage.list_files(spec, VIDEO_SUFFIXES)]
        if not rows:
            raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {spec}")
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
        if not row.get("source"):
            row["source"] = _default_source(row["path"])
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
    parts = path.rstrip("/").rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 else ""


# ---------------------------------------------------------------------------------------------
# split: probe, decode, cuts, clips


def _video_record_path(root: str, vid: str) -> str:
    return storage.join(root, "_videos", f"{vid}.json")


def accounted_clips(root: str, vid: str) -> set[str]:
    """Clips of a video already finished or already recorded as failed."""
    done = {
        os.path.basename(p)[: -len(".json")]
        for p in storage.list_files(storage.join(root, "_rows", vid), (".json",), recursive=False)
    }
    for p in storage.list_files(storage.join(root, "_failures", vid), (".json",), recursive=False):
        owner = os.path.basename(p).split(".", 1)[0]  # "<clip_id>.<stage>.json" or "video.<stage>.json"
        if owner != "video":
            done.add(owner)
    return done


def video_is_done(root: str, vid: str, config: CorpusConfig) -> bool:
    """Whether a previous run split this video and all its clips are accounted for."""
    record_path = _video_record_path(root, vid)
    if not storage.exists(record_path):
        return False
    record = json.loads(storage.read_bytes(record_path))
    if record.get("config_hash") != config.content_hash():
        return False
    return set(record["clips"]) <= accounted_clips(root, vid)


def split_video(row: dict, root: str, config: CorpusConfig) -> Iterator[dict]:
    """Decode one source video in bounded chunks and cut it into clips at the training size.

    A generator: clips are handed on as soon as they are complete, so memory holds one decode
    chunk and one clip whatever the video's length. Clips never cross a shot cut. Clips already
    accounted for are skipped; a video whose clips are all accounted for is not decoded. A
    failure is recorded with its stage (``probe`` before the first frame, ``decode`` after), and
    the clips completed before it are kept.
    """
    path, vid = row["path"], row["video_id"]
    if video_is_done(root, vid, config):
        return
    done = accounted_clips(root, vid)
    emitted: list[str] = []
    status, frames_seen, error = "complete", 0, None
    try:
        with storage.local_copy(path) as local:
            info = probe_video(local)
            splitter = ClipSplitter(config.clip_length, config.stride, config.min_length)
            cuts = CutDetector(config.cut_threshold, config.min_shot)
            for chunk in stream_frames(local, config.decode_chunk, info=info):
                frames = resize_and_crop(chunk.frames, config.width, config.height)
                flags = cuts(frames)
                for i in range(len(chunk)):
                    for clip in splitter.push(frames[i], float(chunk.timestamps[i]), flags[i]):
                        emitted.append(clip_id(vid, clip.start, clip.stop))
                        if emitted[-1] not in done:
                            yield _clip_row(row, info.fps, info.width, info.height, clip)
                frames_seen += len(chunk)
            for clip in splitter.finish():
                emitted.append(clip_id(vid, clip.start, clip.stop))
                if emitted[-1] not in done:
                    yield _clip_row(row, info.fps, info.width, info.height, clip)
    except Exception as exc:  # recorded; clips emitted before the failure are kept
        stage = "probe" if frames_seen == 0 and not emitted else "decode"
        record_failure(root, path, stage, exc)
        status, error = f"failed in {stage}", _one_line(exc)
    record = {
        "video_id": vid,
        "path": path,
        "status": status,
        "error": error,
        "frames": frames_seen,
        "clips": emitted,
        "config_hash": config.content_hash(),
    }
    storage.write_bytes(_video_record_path(root, vid), _json(record))


def _clip_row(row: dict, fps: float, source_width: int, source_height: int, clip) -> dict:
    return {
        "clip_id": clip_id(row["video_id"], clip.start, clip.stop),
        "video_id": row["video_id"],
        "shot_id": clip.shot,
        "source_path": row["path"],
        "source": row["source"],
        "license": row["license"],
        "tags": json.dumps(list(row["tags"])),
        "start_frame": clip.start,
        "end_frame": clip.stop,
        "start_time": clip.start_time,
        "end_time": clip.end_time + 1.0 / fps,
        "fps": fps,
        "source_width": source_width,
        "source_height": source_height,
        "frames": clip.frames.permute(0, 2, 3, 1).numpy(),  # [T,H,W,3] uint8
    }


# ---------------------------------------------------------------------------------------------
# depth + DVG


def clip_budget(cid: str, budget_range: tuple[float, float]) -> float:
    """A per-clip depth budget drawn deterministically from the clip ID (variety, reproducible)."""
    lo, hi = budget_range
    u = int(hashlib.sha1(cid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return lo + (hi - lo) * u


class DepthDVGStage:
    """Depth → shot-normalised disparity → DVG views, for a batch of clips.

    A Ray Data actor: the depth model loads once in ``__init__``. With a stateless depth model
    the frames of all clips in the batch go through it together (``depth_batch`` frames at a
    time), which is what fills a GPU; a stateful one (``parallax``) runs clip by clip, reset at
    each clip. A clip that fails is recorded and dropped; the rest of the batch goes on.
    """

    def __init__(self, config: CorpusConfig, root: str, device: str = "auto"):
        self.config = config
        self.root = root
        self.estimator = load_depth_estimator(config.depth_model, device=device)
        self.device = self.estimator.device
        self.depth_name = self.estimator.name

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

    def _dvg(self, frames: torch.Tensor, inverse: torch.Tensor, cid: str) -> dict:
        normalized = TemporalNormalizer()(inverse.float())
        budget = clip_budget(cid, self.config.budget_range)
        disparity = disparity_from_normalized(normalized, frames.shape[-1], budget, self.config.convergence)
        sample = make_dvg_sample(frames, disparity.float(), refine_masks=self.config.refine_masks)
        flat = sample.disparity.flatten()
        q = torch.quantile(
            flat[:: max(1, flat.numel() // 200_000)].float(), torch.tensor([0.05, 0.5, 0.95]).to(flat)
        )

        def to_u8(x: torch.Tensor) -> np.ndarray:
            return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

        q = q.cpu()
        return {
            "right": to_u8(sample.right),
            "back": to_u8(sample.back),
            "right_holes": sample.right_holes[:, 0].cpu().numpy(),
            "back_holes": sample.back_holes[:, 0].cpu().numpy(),
            "disparity": sample.disparity[:, 0].float().cpu().numpy(),
            "budget": float(budget),
            "disparity_p05": float(q[0]),
            "disparity_p50": float(q[1]),
            "disparity_p95": float(q[2]),
            "hole_ratio": float(sample.back_holes.float().mean()),
            "right_hole_ratio": float(sample.right_holes.float().mean()),
            "motion_score": float(sample.motion),
            "depth_model": self.depth_name,
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(c) for c in batch["clip_id"]]
        results: dict[int, dict] = {}
        frames = [
            _tensor(batch["frames"][i]).permute(0, 3, 1, 2).to(self.device).float() / 255.0
            for i in range(len(ids))
        ]
        try:
            inverse = self._depth(frames)
        except Exception as exc:  # the batch's depth failed: try clip by clip to find the culprit
            if len(frames) == 1:
                inverse = [exc]
            else:
                inverse = []
                for f in frames:
                    try:
                        inverse.append(self._depth([f])[0])
                    except Exception as single:
                        inverse.append(single)
        for i, cid in enumerate(ids):
            try:
                if isinstance(inverse[i], BaseException):
                    raise inverse[i]
                results[i] = self._dvg(frames[i], inverse[i], cid)
            except Exception as exc:  # recorded; the rest of the batch goes on
                record_failure(self.root, str(batch["source_path"][i]), "depth_dvg", exc, clip=cid)
        keep = sorted(results)
        out: dict[str, list] = {key: [values[i] for i in keep] for key, values in batch.items()}
        for key in results[keep[0]] if keep else ():
            out[key] = [results[i][key] for i in keep]
        return {k: _column(v) for k, v in out.items()}


def _column(values: list) -> np.ndarray:
    """A batch column: stacked when the arrays share a shape, else an object array (ragged)."""
    if values and isinstance(values[0], np.ndarray) and values[0].ndim > 0:
        if all(v.shape == values[0].shape for v in values):
            return np.stack(values)
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    if values and isinstance(values[0], str):
        return np.array(values, dtype=object)
    return np.array(values)


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows → a batch dict (what Ray Data hands a ``map_batches`` stage)."""
    return {key: _column([r[key] for r in rows]) for key in rows[0]}


# ---------------------------------------------------------------------------------------------
# write


def _tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
    """A tensor of a batch column's entry (copied: Ray hands out read-only views of its store)."""
    return torch.from_numpy(np.array(a, dtype=dtype, copy=True))


def _as_float(a: np.ndarray) -> torch.Tensor:
    return _tensor(a).permute(0, 3, 1, 2).float() / 255.0


def write_clip_stage(batch: dict[str, np.ndarray], root: str, config: CorpusConfig) -> dict[str, np.ndarray]:
    """Encode each clip's shard files, then write its row record last: the row is the clip's
    commit, so a clip with a row has complete shards, and a clip without one is redone."""
    done_ids, done_frames = [], []
    digest = config.content_hash()
    for i, cid in enumerate(batch["clip_id"]):
        cid, vid = str(cid), str(batch["video_id"][i])
        try:
            arrays = ClipArrays(
                rgb=_as_float(batch["frames"][i]),
                right=_as_float(batch["right"][i]),
                right_holes=_tensor(batch["right_holes"][i], bool).unsqueeze(1),
                back=_as_float(batch["back"][i]),
                back_holes=_tensor(batch["back_holes"][i], bool).unsqueeze(1),
                disparity=_tensor(batch["disparity"][i], np.float32).unsqueeze(1),
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


# ---------------------------------------------------------------------------------------------
# the same stages without Ray


def build_in_process(
    sources: Iterable[dict], root: str, config: CorpusConfig, device: str = "cpu"
) -> tuple[int, int]:
    """Run split → depth + DVG → write in one process, clip by clip: the reference the Ray job
    is measured against (and checked equal to). Returns ``(clips, frames)`` written."""
    stage = DepthDVGStage(config, root, device=device)
    clips = frames = 0
    for row in sources:
        for clip in split_video(row, root, config):
            out = stage(rows_to_batch([clip]))
            if len(out["clip_id"]):
                written = write_clip_stage(out, root, config)
                clips += len(written["clip_id"])
                frames += int(written["num_frames"].sum())
    return clips, frames
