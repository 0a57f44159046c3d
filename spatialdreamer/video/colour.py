"""Which YUV<->RGB matrix and range a video uses, and the tags that tell players so.

Players read untagged HD video as BT.709 and untagged SD video as BT.601; a file converted
with the wrong matrix shifts every colour (33/255 on a saturated bar). Decoding honours the
source's tags (or that convention when it has none); encoding writes the matrix it used, its
range, primaries and transfer, so players need not guess. Numbers are FFmpeg's ``AVCOL_*``.
"""

from __future__ import annotations

from dataclasses import dataclass

from av.video.reformatter import ColorRange, Colorspace

__all__ = ["Colour", "colour_of_frame", "standard_colour", "sws_colorspace"]

BT709, UNSPECIFIED, BT470BG, SMPTE170M, BT2020 = 1, 2, 5, 6, 9
_SWS = {  # matrix coefficients (AVCOL_SPC) -> swscale's colour space
    BT709: Colorspace.ITU709,
    4: Colorspace.FCC,
    BT470BG: Colorspace.ITU601,
    SMPTE170M: Colorspace.ITU601,
    7: Colorspace.SMPTE240M,
    BT2020: Colorspace.BT2020,
    10: Colorspace.BT2020,
}
_FULL_RANGE_FORMATS = ("yuvj420p", "yuvj422p", "yuvj444p")


@dataclass(frozen=True)
class Colour:
    """Matrix, primaries and transfer (``AVCOL_SPC``/``PRI``/``TRC`` numbers) and range.

    Example:
        >>> standard_colour(1280, 720)
        Colour(matrix=1, primaries=1, transfer=1, full_range=False)
        >>> standard_colour(720, 576).matrix
        5
    """

    matrix: int = BT709
    primaries: int = BT709
    transfer: int = BT709
    full_range: bool = False

    @property
    def is_hdr(self) -> bool:
        """PQ (SMPTE 2084) or HLG (ARIB STD-B67) transfer."""
        return self.transfer in (16, 18)


def standard_colour(width: int, height: int) -> Colour:
    """What players assume for an untagged picture: BT.709 from 720 lines (or 1280 columns)
    up, else BT.601 (625-line primaries at 576 lines, 525-line ones otherwise)."""
    if height >= 720 or width >= 1280:
        return Colour(BT709, BT709, BT709)
    if height in (576, 288):
        return Colour(BT470BG, BT470BG, SMPTE170M)
    return Colour(SMPTE170M, SMPTE170M, SMPTE170M)


def colour_of_frame(frame, width: int, height: int) -> Colour:
    """A decoded frame's own colour, each unspecified part filled in by :func:`standard_colour`
    for the displayed ``width`` x ``height``."""
    standard = standard_colour(width, height)
    if frame.format.name in _FULL_RANGE_FORMATS and frame.colorspace not in _SWS:
        standard = Colour(BT470BG, standard.primaries, standard.transfer)  # JPEG (JFIF) is BT.601
    matrix = frame.colorspace if frame.colorspace in _SWS else standard.matrix
    primaries = frame.color_primaries if frame.color_primaries not in (0, UNSPECIFIED) else standard.primaries
    transfer = frame.color_trc if frame.color_trc not in (0, UNSPECIFIED) else standard.transfer
    full = frame.color_range == int(ColorRange.JPEG) or frame.format.name in _FULL_RANGE_FORMATS
    return Colour(int(matrix), int(primaries), int(transfer), full)


def sws_colorspace(matrix: int) -> Colorspace:
    """swscale's name for matrix coefficients ``matrix`` (BT.601 for anything it lacks)."""
    return _SWS.get(matrix, Colorspace.ITU601)


def sws_range(colour: Colour) -> ColorRange:
    return ColorRange.JPEG if colour.full_range else ColorRange.MPEG
