"""LPIPS (Zhang et al. 2018) with AlexNet or VGG16 written in plain torch (no torchvision).

The backbones use torchvision's state-dict keys (``features.0.weight`` ...), so the official
ImageNet checkpoints load as they are: ``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth``
from a path you give or from the torch hub cache (``$TORCH_HOME/hub/checkpoints`` or
``~/.cache/torch/hub/checkpoints``). The LPIPS linear layers (``alex.pth`` / ``vgg.pth`` of
the ``lpips`` package, v0.1, keys ``lin0.model.1.weight`` ...) come from a path you give or
from an installed ``lpips`` package (``pip install --no-deps lpips`` ships them).
Nothing is downloaded: a missing file is a one-line :class:`LPIPSWeightsError` naming what to
pass.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialdreamer.metrics._checks import as_video_pair, masked_nanmean
from spatialdreamer.metrics._weights import read_state_dict

__all__ = ["LPIPS", "LPIPSWeightsError", "find_backbone_weights", "find_lpips_weights", "lpips"]

Net = Literal["alex", "vgg"]
_BACKBONE_FILES = {"alex": "alexnet-owt-*.pth", "vgg": "vgg16-*.pth"}
_LPIPS_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
# (layer spec, indices of the ReLUs whose outputs LPIPS compares), torchvision's layouts
_ALEX = [("C", 3, 64, 11, 4, 2), "R", "M", ("C", 64, 192, 5, 1, 2), "R", "M", ("C", 192, 384, 3, 1, 1), "R",
         ("C", 384, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R"]  # fmt: skip
_ALEX_TAPS = (1, 4, 7, 9, 11)
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (3, 8, 15, 22, 29)


class LPIPSWeightsError(FileNotFoundError):
    """A backbone or LPIPS linear-layer checkpoint is missing; the message says what to pass."""


def _alexnet_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    for spec in _ALEX:
        if spec == "R":
            layers.append(nn.ReLU(inplace=False))
        elif spec == "M":
            layers.append(nn.MaxPool2d(3, 2))
        else:
            _, cin, cout, k, s, p = spec
            layers.append(nn.Conv2d(cin, cout, k, s, p))
    return nn.Sequential(*layers)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


def _hub_checkpoint_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("TORCH_HOME"):
        dirs.append(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints")
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    dirs.append(Path("~/.cache/torch/hub/checkpoints").expanduser())
    return list(dict.fromkeys(dirs))


def find_backbone_weights(net: Net) -> Path | None:
    """The torchvision ImageNet checkpoint for ``net`` in the torch hub cache, if present."""
    for d in _hub_checkpoint_dirs():
        hits = sorted(glob.glob(str(d / _BACKBONE_FILES[net])))
        if hits:
            return Path(hits[0])
    return None


def find_lpips_weights(net: Net) -> Path | None:
    """The v0.1 linear-layer file shipped inside an installed ``lpips`` package, if any.

    Only the package's location is looked up; it is not imported (it needs torchvision).
    """
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "weights" / "v0.1" / _LPIPS_FILES[net]
        if candidate.is_file():
            return candidate
    return None


def _load_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LPIPSWeightsError(f"{what} not found at {path}")
    return read_state_dict(path, LPIPSWeightsError, what)


class LPIPS(nn.Module):
    """LPIPS distance: unit-normalised backbone activations, squared difference, learned 1x1
    weights, spatial mean, sum over five layers. 0 = identical, larger = more different.

    Args:
        net: ``"alex"`` (the LPIPS default) or ``"vgg"``.
        backbone_weights: torchvision checkpoint path; ``None`` → the torch hub cache.
        lpips_weights: LPIPS v0.1 linear-layer checkpoint path (``alex.pth`` / ``vgg.pth``);
            ``None`` → the copy inside an installed ``lpips`` package.
        pretrained: ``False`` builds random weights (tests of the architecture only; the linear
            weights are then random non-negative, as LPIPS constrains them).

    Example:
        >>> m = LPIPS("alex", pretrained=False)
        >>> x = torch.rand(2, 3, 64, 64)
        >>> float(m(x, x).abs().max()) < 1e-6
        True
    """

    def __init__(
        self,
        net: Net = "alex",
        *,
        backbone_weights: str | os.PathLike | None = None,
        lpips_weights: str | os.PathLike | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if net not in _BACKBONE_FILES:
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        self.taps = _ALEX_TAPS if net == "alex" else _VGG_TAPS
        channels = [self.features[i - 1].out_channels for i in self.taps]
        self.lins = nn.ParameterList([nn.Parameter(torch.rand(1, c, 1, 1) / c) for c in channels])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        if pretrained:
            self._load(backbone_weights, lpips_weights)
        self.eval().requires_grad_(False)

    def _load(self, backbone: str | os.PathLike | None, linear: str | os.PathLike | None) -> None:
        hint = (
            f"pass backbone_weights=PATH to torchvision's {_BACKBONE_FILES[self.net].replace('*', '…')} "
            f"(or put it in {_hub_checkpoint_dirs()[0]}) and lpips_weights=PATH to LPIPS v0.1 "
            f"{_LPIPS_FILES[self.net]}"
        )
        backbone = backbone or find_backbone_weights(self.net)
        if backbone is None:
            raise LPIPSWeightsError(f"LPIPS({self.net}): no ImageNet backbone weights found; {hint}")
        linear = linear or find_lpips_weights(self.net)
        if linear is None:
            raise LPIPSWeightsError(f"LPIPS({self.net}): no linear-layer weights found; {hint}")
        state = _load_state(backbone, f"LPIPS({self.net}) backbone weights")
        feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        missing = set(self.features.state_dict()) - set(feats)
        if missing:
            raise LPIPSWeightsError(
                f"LPIPS({self.net}): {backbone} lacks {sorted(missing)[:3]}... (torchvision keys expected)"
            )
        self.features.load_state_dict({k: feats[k] for k in self.features.state_dict()})
        lin_state = _load_state(linear, f"LPIPS({self.net}) linear-layer weights")
        found: dict[int, torch.Tensor] = {}
        for key, value in lin_state.items():
            m = re.fullmatch(r"lin(\d)\.(?:model\.1\.)?weight", key)
            if m:
                found[int(m.group(1))] = value
        if sorted(found) != list(range(len(self.lins))):
            raise LPIPSWeightsError(
                f"LPIPS({self.net}): {linear} lacks lin0..lin4 weights (keys lin0.model.1.weight ...)"
            )
        for i, lin in enumerate(self.lins):
            if found[i].shape != lin.shape:
                raise LPIPSWeightsError(
                    f"LPIPS({self.net}): {linear} lin{i} has shape {tuple(found[i].shape)}, expected "
                    f"{tuple(lin.shape)}; is it the {_LPIPS_FILES[self.net]} of the same network?"
                )
            lin.data.copy_(found[i])

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x * 2 - 1 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i >= self.taps[-1]:
                break
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """``a``, ``b`` ``[N,3,H,W]`` in [0, 1] → ``[N]`` distances, or ``[N,1,H,W]`` maps when
        ``spatial`` (each layer's map upsampled bilinearly to the input size, then summed)."""
        if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f"a and b must both be [N,3,H,W], got {tuple(a.shape)} and {tuple(b.shape)}")
        total = None
        for fa, fb, lin in zip(self._activations(a), self._activations(b), self.lins, strict=True):
            d = ((fa - fb) ** 2 * lin).sum(1, keepdim=True)
            d = (
                F.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False)
                if spatial
                else d.mean((2, 3))
            )
            total = d if total is None else total + d
        return total if spatial else total.flatten()


def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    model: LPIPS | None = None,
    net: Net = "alex",
    reduction: Literal["mean", "none"] = "mean",
    batch_size: int = 8,
) -> float | torch.Tensor:
    """LPIPS of two videos ``[T,3,H,W]`` in [0, 1]: mean over frames (lower is better).

    Args:
        mask: optional ``[T,1,H,W]`` bool; the per-pixel LPIPS map is averaged over it.
        model: a loaded :class:`LPIPS` (reuse it across calls); ``None`` builds one for ``net``
            from the torch hub cache and an installed ``lpips`` package (an error if absent).
        reduction: ``"none"`` → ``[T]`` per frame (NaN where the mask is empty).
    """
    pred, target, mask = as_video_pair(pred, target, mask)
    if pred.shape[1] != 3:
        raise ValueError(f"LPIPS needs RGB videos [T,3,H,W], got {tuple(pred.shape)}")
    model = model if model is not None else LPIPS(net)
    device = next(model.parameters()).device
    values = []
    with torch.no_grad():
        for s in range(0, pred.shape[0], batch_size):
            a, b = pred[s : s + batch_size].to(device), target[s : s + batch_size].to(device)
            if mask is None:
                values.append(model(a, b).cpu())
            else:
                m = mask[s : s + batch_size].to(device)
                d = model(a, b, spatial=True)
                count = m.flatten(1).sum(1)
                v = torch.where(count > 0, (d * m).flatten(1).sum(1) / count.clamp(min=1), float("nan"))
                values.append(v.cpu())
    out = torch.cat(values).float()
    return out if reduction == "none" else masked_nanmean(out)
