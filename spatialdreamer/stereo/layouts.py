"""Stereo output layouts and the file-name tags VR players use to detect them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatialdreamer.choices import FORMATS

__all__ = ["FORMATS", "compose", "anaglyph_dubois", "layout_tag", "output_size"]


# Tags understood by common players (DeoVR, Skybox, Pigasus, Heresphere, iw3 naming).
_TAGS = {
    "full-sbs": "_LRF_Full_SBS",
    "half-sbs": "_LR_Half_SBS",
    "full-tb": "_TBF_fulltb",
    "half-tb": "_TB_Half_TB",
    "anaglyph": "_redcyan_dubois",
}

# Dubois least-squares red-cyan matrices (rows: output R, G, B; columns: input R, G, B),
# applied to linear RGB.
_DUBOIS_LEFT = torch.tensor(
    [[0.437, 0.449, 0.164], [-0.062, -0.062, -0.024], [-0.048, -0.050, -0.017]], dtype=torch.float32
)
_DUBOIS_RIGHT = torch.tensor(
    [[-0.011, -0.032, -0.007], [0.377, 0.761, 0.009], [-0.026, -0.093, 1.234]], dtype=torch.float32
)


def _check(left: torch.Tensor, right: torch.Tensor) -> None:
    if left.shape != right.shape or left.ndim != 4 or left.shape[1] != 3:
        raise ValueError(
            f"left and right must both be [T,3,H,W], got {tuple(left.shape)} and {tuple(right.shape)}"
        )


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def anaglyph_dubois(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Red-cyan anaglyph with Dubois' matrices; ``[T,3,H,W]`` float in [0, 1]."""
    _check(left, right)
    lin_l, lin_r = _srgb_to_linear(left.float()), _srgb_to_linear(right.float())
    mixed = torch.einsum("oc,tchw->tohw", _DUBOIS_LEFT.to(left.device), lin_l) + torch.einsum(
        "oc,tchw->tohw", _DUBOIS_RIGHT.to(left.device), lin_r
    )
    return _linear_to_srgb(mixed)


def _half(x: torch.Tensor, dim: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = (h, max(1, w // 2)) if dim == -1 else (max(1, h // 2), w)
    return F.interpolate(x.float(), size=size, mode="area")


def compose(left: torch.Tensor, right: torch.Tensor, fmt: str) -> torch.Tensor:
    """Pack two eyes into one frame: ``[T,3,H,W]`` each, float in [0, 1] → ``[T,3,H',W']``.

    Full layouts double the width (SBS) or height (TB); half layouts squeeze each eye to half
    so the frame keeps the source size; anaglyph keeps the source size.

    Example:
        >>> l, r = torch.zeros(1, 3, 4, 6), torch.ones(1, 3, 4, 6)
        >>> compose(l, r, "full-sbs").shape, compose(l, r, "half-tb").shape
        (torch.Size([1, 3, 4, 12]), torch.Size([1, 3, 4, 6]))
    """
    _check(left, right)
    if fmt == "full-sbs":
        return torch.cat([left, right], -1)
    if fmt == "half-sbs":
        return torch.cat([_half(left, -1), _half(right, -1)], -1)
    if fmt == "full-tb":
        return torch.cat([left, right], -2)
    if fmt == "half-tb":
        return torch.cat([_half(left, -2), _half(right, -2)], -2)
    if fmt == "anaglyph":
        return anaglyph_dubois(left, right)
    raise ValueError(f"unknown stereo format {fmt!r}; choose one of {', '.join(FORMATS)}")


def output_size(height: int, width: int, fmt: str) -> tuple[int, int]:
    """``(height, width)`` of a composed frame."""
    if fmt == "full-sbs":
        return height, 2 * width
    if fmt == "half-sbs":
        return height, 2 * max(1, width // 2)
    if fmt == "full-tb":
        return 2 * height, width
    if fmt == "half-tb":
        return 2 * max(1, height // 2), width
    if fmt == "anaglyph":
        return height, width
    raise ValueError(f"unknown stereo format {fmt!r}; choose one of {', '.join(FORMATS)}")


def layout_tag(fmt: str) -> str:
    """File-name suffix that tells VR players the layout, e.g. ``_LRF_Full_SBS``."""
    if fmt not in _TAGS:
        raise ValueError(f"unknown stereo format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _TAGS[fmt]
