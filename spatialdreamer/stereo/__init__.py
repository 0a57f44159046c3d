"""Stereo output: rendering the eyes (both or one, edges, borders), steady depth, comfort per
shot, frame layouts (SBS, TB, anaglyph), player naming, classical hole filling."""

from spatialdreamer.stereo.comfort import ComfortBound, ConvergencePlanner
from spatialdreamer.stereo.fill import fill_holes, propagate_background
from spatialdreamer.stereo.layouts import FORMATS, anaglyph_dubois, compose, layout_tag, output_size
from spatialdreamer.stereo.render import EYES, RefinedEye, StereoRenderer, warp_with_borders
from spatialdreamer.stereo.stabilize import DepthStabilizer

__all__ = [
    "EYES",
    "FORMATS",
    "ComfortBound",
    "ConvergencePlanner",
    "DepthStabilizer",
    "RefinedEye",
    "StereoRenderer",
    "anaglyph_dubois",
    "compose",
    "fill_holes",
    "layout_tag",
    "output_size",
    "propagate_background",
    "warp_with_borders",
]
