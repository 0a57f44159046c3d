"""Deterministic identifiers: reruns of a job produce the same names."""

from __future__ import annotations

import hashlib
import json

__all__ = ["clip_id", "config_hash", "video_id"]


def _digest(text: str, length: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def video_id(source: str) -> str:
    """ID of a source video from its path or URI (16 hex digits)."""
    return _digest(source.strip(), 16)


def clip_id(video: str, start_frame: int, end_frame: int) -> str:
    """ID of a clip: its video's ID plus its frame range ``[start, end)``, readable and unique.

    Example:
        >>> clip_id("0123456789abcdef", 32, 48)
        '0123456789abcdef-000032-000048'
    """
    if end_frame <= start_frame or start_frame < 0:
        raise ValueError(f"clip frame range must satisfy 0 <= start < end, got [{start_frame}, {end_frame})")
    return f"{video}-{start_frame:06d}-{end_frame:06d}"


def config_hash(config: dict) -> str:
    """Stable hash of the settings that change a clip's content (12 hex digits)."""
    return _digest(json.dumps(config, sort_keys=True, default=str), 12)
