"""The records that make resume exact, and the failure policy.

Progress lives in small per-record files under the corpus root, written last and atomically:

    _rows/<video_id>/<clip_id>.json       a finished clip (its shards are complete), until packed
    _failures/<video_id>/<key>.json       a video or clip that cannot be used: stage and reason
    _videos/<video_id>.json               a planned video: its segments (corpus.segments)

A rerun skips every clip with a row, a failure record or a pack, and does not even decode a
segment whose clips are all accounted for; so a job killed at any moment resumes with only the
missing work, and the tables compacted from these records come out the same.

Errors are classified. Bad input (a corrupt file, a clip a model cannot take, a clip below a
quality threshold) is permanent: recorded with its reason, never retried. Transient errors
(GPU out of memory, storage throttling, lost connections) are retried a bounded number of
times and never recorded as a failure of the video: if they persist, the job stops with a
clear line and a rerun resumes from the records.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from spatialdreamer.data import storage
from spatialdreamer.data.ids import video_id
from spatialdreamer.video import VideoError

__all__ = [
    "TransientError",
    "accounted_clips",
    "is_transient",
    "one_line",
    "record_failure",
    "retry_transient",
    "video_record_path",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}
_TRANSIENT_TEXT = re.compile(
    r"out of memory|slow ?down|throttl|too many requests|rate exceeded|\b503\b|\b429\b|"
    r"service unavailable|temporar(il)?y unavailable|temporary failure|"
    r"connection (reset|refused|aborted)|timed? ?out",
    re.IGNORECASE,
)


class TransientError(RuntimeError):
    """A transient error that outlived its retries in a stage: Ray retries the task (bounded);
    the video is not recorded as failed, so a rerun tries it again."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may go away on a retry (GPU memory, storage throttling, network).

    Example:
        >>> import torch
        >>> is_transient(torch.OutOfMemoryError("CUDA out of memory")), is_transient(ValueError("bad"))
        (True, False)
    """
    if isinstance(error, VideoError):
        return False
    if isinstance(error, TransientError | ConnectionError | TimeoutError):
        return True
    torch = sys.modules.get("torch")  # a torch error comes only from a process that loaded torch
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(error, OSError | RuntimeError):
        return bool(_TRANSIENT_TEXT.search(str(error)))
    return False


def retry_transient(call: Callable[[], T], what: str, attempts: int = 3, delay: float = 0.5) -> T:
    """Run ``call``; retry transient errors with back-off (``attempts`` in all), then raise
    :class:`TransientError`. Permanent errors are raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if attempt == attempts:
                raise TransientError(f"{what}: {one_line(exc)} (after {attempts} attempts)") from exc
            log.warning("%s: transient error, retry %d of %d: %s", what, attempt, attempts - 1, one_line(exc))
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def now() -> str:
    return datetime.now(UTC).isoformat()


def to_json(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, default=str).encode("utf-8")


def one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, BaseException) and not isinstance(error, VideoError):
        return f"{type(error).__name__}: {first}" if first else type(error).__name__
    return first or "unknown error"


def record_failure(
    root: str, path: str, stage: str, error: BaseException | str, clip: str | None = None
) -> dict:
    """Write one permanent-failure record. Its name is deterministic: a rerun overwrites, never adds.

    A transient error is not a failure of the input: it is raised as :class:`TransientError`
    (Ray retries the task, bounded) instead of being recorded.
    """
    if isinstance(error, BaseException) and is_transient(error):
        raise TransientError(f"{stage} of {path}: {one_line(error)}") from error
    vid = video_id(path)
    if isinstance(error, BaseException) and not isinstance(error, VideoError):
        log.warning("%s failed in %s: %s", path, stage, "".join(traceback.format_exception(error)))
    record = {
        "path": path,
        "video_id": vid,
        "clip_id": clip,
        "stage": stage,
        "error": one_line(error),
        "created_time": now(),
    }
    key = f"{clip or 'video'}.{stage}.json"
    retry_transient(
        lambda: storage.write_bytes(storage.join(root, "_failures", vid, key), to_json(record)),
        f"recording a failure of {path}",
    )
    return record


def video_record_path(root: str, vid: str) -> str:
    return storage.join(root, "_videos", f"{vid}.json")


def accounted_clips(root: str, vid: str) -> set[str]:
    """Clips of a video already finished or already recorded as failed or filtered."""
    done = {
        os.path.basename(p)[: -len(".json")]
        for p in storage.list_files(storage.join(root, "_rows", vid), (".json",), recursive=False)
    }
    for p in storage.list_files(storage.join(root, "_failures", vid), (".json",), recursive=False):
        owner = os.path.basename(p).split(".", 1)[0]  # "<clip_id>.<stage>.json" or "video.<stage>.json"
        if owner != "video":
            done.add(owner)
    return done
