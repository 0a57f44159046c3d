"""A still image in, a stereo image out: PNG (lossless) or JPEG, written atomically.

:class:`StereoImageWriter` takes the same calls as :class:`~spatialdreamer.video.VideoWriter`,
so the converter hands a picture's stereo frame to either one alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import torch

from spatialdreamer.video.writer import sibling_path

__all__ = ["IMAGE_SUFFIXES", "StereoImageWriter"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class StereoImageWriter:
    """Write the one frame of a stereo picture to ``path`` (``.png``, ``.jpg``/``.jpeg``).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "pic_LR.png"
        >>> writer = StereoImageWriter(out)
        >>> writer.write(torch.zeros(1, 3, 4, 8, dtype=torch.uint8))
        >>> writer.close().name
        'pic_LR.png'
    """

    def __init__(self, path: str | os.PathLike, jpeg_quality: int = 95) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"a stereo image is written as {'/'.join(IMAGE_SUFFIXES)}, got {self.path.name}")
        self.jpeg_quality = int(jpeg_quality)
        self._frame: torch.Tensor | None = None

    def __enter__(self) -> StereoImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: torch.Tensor, timestamps=None) -> None:
        """Keep the first frame of ``frames`` ``[T,3,H,W]`` uint8 (a picture has one)."""
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be [T,3,H,W] uint8, got {tuple(frames.shape)} {frames.dtype}")
        if self._frame is None and len(frames):
            self._frame = frames[0].detach().cpu()

    def abort(self) -> None:
        self._frame = None
        sibling_path(self.path, "partial").unlink(missing_ok=True)

    def close(self) -> Path:
        if self._frame is None:
            raise ValueError(f"no picture was written to {self.path}")
        bgr = cv2.cvtColor(self._frame.permute(1, 2, 0).contiguous().numpy(), cv2.COLOR_RGB2BGR)
        suffix = self.path.suffix.lower()
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if suffix != ".png" else []
        ok, data = cv2.imencode(suffix, bgr, params)
        if not ok:
            raise ValueError(f"cannot encode {self.path.name}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = sibling_path(self.path, "partial")
        try:
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.path
