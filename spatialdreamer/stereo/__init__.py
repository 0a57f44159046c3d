"""Stereo output: frame layouts (SBS, TB, anaglyph), player naming, classical hole filling."""

from spatialdreamer.stereo.fill import fill_holes, propagate_background
from spatialdreamer.stereo.layouts import FORMATS, anaglyph_dubois, compose, layout_tag, output_size

__all__ = [
    "FORMATS",
    "anaglyph_dubois",
    "compose",
    "fill_holes",
    "layout_tag",
    "output_size",
    "propagate_background",
]
