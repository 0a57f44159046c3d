"""The one error type users see from video I/O: a single line saying what is wrong."""

from __future__ import annotations

__all__ = ["VideoError"]


class VideoError(RuntimeError):
    """A file cannot be used as a video (missing, empty, not a video, no frames, truncated)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # Ray and multiprocessing pickle errors raised in workers; the default would call
        # __init__ with the message alone and fail.
        return (type(self), (self.path, self.reason))
