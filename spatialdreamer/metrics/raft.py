"""RAFT optical flow (Teed & Deng 2020), the full model, written in plain torch (no torchvision).

Module and parameter names follow the official princeton-vl/RAFT code, so its checkpoints
(``raft-things.pth``, ``raft-sintel.pth`` ...; keys ``module.fnet.conv1.weight`` ...) load as
they are, from a path you give: a state dict read with ``torch.load(weights_only=True)`` or a
``.safetensors`` file. Nothing is downloaded; a missing or mismatched file is a one-line
:class:`RAFTWeightsError` naming what to pass. :class:`RAFTFlow` plugs into
:func:`spatialdreamer.metrics.e_warp` as ``flow_fn``.

One deliberate difference from the reference: correlation lookups normalise sample positions
with ``align_corners=False`` (``(2x+1)/W - 1``), which samples the same points as the
reference's ``2x/(W-1) - 1`` with ``align_corners=True`` but stays finite when a pyramid level
is one pixel wide (inputs under 64 px), where the reference divides by zero.

This port has not been checked against the reference flows (no weights were available
offline); only the checkpoint layout, shapes and plumbing are tested.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialdreamer.metrics._weights import read_state_dict

__all__ = ["RAFT", "RAFTFlow", "RAFTWeightsError", "load_raft"]

_HINT = (
    "RAFT needs weights: pass raft_weights=PATH (CLI --raft-weights) to the official "
    "princeton-vl/RAFT full-model checkpoint (raft-things.pth / raft-sintel.pth, or .safetensors)"
)


class RAFTWeightsError(FileNotFoundError):
    """A RAFT checkpoint is missing or does not fit the full model; the message says what to pass."""


def _norm(kind: str, channels: int) -> nn.Module:
    # instance norm without affine parameters, as in the reference: fnet has no norm keys
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.InstanceNorm2d(channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a (strided 1x1) shortcut; names as in RAFT's ``extractor.py``."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, planes)
        self.norm2 = _norm(norm_fn, planes)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm_fn, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicEncoder(nn.Module):
    """1/8-resolution feature (``fnet``, instance norm) or context (``cnet``, batch norm) encoder."""

    def __init__(self, output_dim: int, norm_fn: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm_fn, 64)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, norm_fn), ResidualBlock(64, 64, norm_fn))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, norm_fn, 2), ResidualBlock(96, 96, norm_fn))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, norm_fn, 2), ResidualBlock(128, 128, norm_fn))
        self.conv2 = nn.Conv2d(128, output_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class FlowHead(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class SepConvGRU(nn.Module):
    """ConvGRU split into a horizontal (1x5) then a vertical (5x1) pass."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 256) -> None:
        super().__init__()
        c = hidden_dim + input_dim
        for gate in "zrq":
            setattr(self, f"conv{gate}1", nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2)))
            setattr(self, f"conv{gate}2", nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0)))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for i in ("1", "2"):
            hx = torch.cat([h, x], 1)
            z = torch.sigmoid(getattr(self, "convz" + i)(hx))
            r = torch.sigmoid(getattr(self, "convr" + i)(hx))
            q = torch.tanh(getattr(self, "convq" + i)(torch.cat([r * h, x], 1)))
            h = (1 - z) * h + z * q
        return h


class BasicMotionEncoder(nn.Module):
    """Encodes the correlation lookup and the current flow into 128 motion channels."""

    def __init__(self, corr_planes: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], 1))), flow], 1)


class BasicUpdateBlock(nn.Module):
    """One recurrent refinement step: new hidden state, upsampling mask and flow increment."""

    def __init__(self, corr_planes: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder(corr_planes)
        self.gru = SepConvGRU(hidden_dim, 128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, 256)
        self.mask = nn.Sequential(
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, 64 * 9, 1)
        )

    def forward(
        self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], 1))
        return net, 0.25 * self.mask(net), self.flow_head(net)


def _coords_grid(n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None].repeat(n, 1, 1, 1)


class CorrPyramid:
    """All-pairs correlation of 1/8 features, average-pooled into ``levels`` levels, looked up in a
    ``(2r+1)²`` window around each pixel's current match."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = 4, radius: int = 4) -> None:
        n, c, h, w = fmap1.shape
        corr = fmap1.flatten(2).transpose(1, 2) @ fmap2.flatten(2) / c**0.5
        corr = corr.reshape(n * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)
        self.radius = radius
        d = torch.linspace(-radius, radius, 2 * radius + 1, device=fmap1.device)
        # the reference stacks meshgrid(dy, dx) as (x, y) offsets: the window is transposed,
        # and the trained weights expect the 81 channels in that order
        a, b = torch.meshgrid(d, d, indexing="ij")
        self.delta = torch.stack([a, b], -1).view(1, 2 * radius + 1, 2 * radius + 1, 2)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        n, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.pyramid):
            pts = centre / 2**i + self.delta
            hl, wl = corr.shape[-2:]
            grid = torch.stack([(2 * pts[..., 0] + 1) / wl - 1, (2 * pts[..., 1] + 1) / hl - 1], -1)
            sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.append(sampled.view(n, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous().float()


class RAFT(nn.Module):
    """The full RAFT model; ``forward(image1, image2)`` takes ``[N,3,H,W]`` in [-1, 1] with H, W
    multiples of 8 and returns flow ``[N,2,H,W]`` in pixels, image1(p) ≈ image2(p + flow(p)).

    Example:
        >>> m = RAFT().eval()
        >>> m(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), iters=1).shape
        torch.Size([1, 2, 64, 64])
    """

    hidden_dim = 128
    context_dim = 128

    def __init__(self, corr_levels: int = 4, corr_radius: int = 4) -> None:
        super().__init__()
        self.corr_levels, self.corr_radius = corr_levels, corr_radius
        self.fnet = BasicEncoder(256, "instance")
        self.cnet = BasicEncoder(self.hidden_dim + self.context_dim, "batch")
        self.update_block = BasicUpdateBlock(corr_levels * (2 * corr_radius + 1) ** 2, self.hidden_dim)

    @staticmethod
    def upsample_flow(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """1/8 flow → full resolution as a learned convex combination of 3x3 neighbours."""
        n, _, h, w = flow.shape
        mask = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        up = (mask * up).sum(2).permute(0, 1, 4, 2, 5, 3)
        return up.reshape(n, 2, 8 * h, 8 * w)

    @property
    def min_size(self) -> int:
        """Smallest input side: the coarsest correlation level must keep at least one pixel."""
        return 8 * 2 ** (self.corr_levels - 1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12) -> torch.Tensor:
        n, _, h, w = image1.shape
        if h % 8 or w % 8 or min(h, w) < self.min_size:
            raise ValueError(f"RAFT input sides must be multiples of 8 and >= {self.min_size}, got {h}x{w}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        fmaps = self.fnet(torch.cat([image1, image2], 0)).float()
        corr_fn = CorrPyramid(fmaps[:n], fmaps[n:], self.corr_levels, self.corr_radius)
        net, inp = torch.split(self.cnet(image1), [self.hidden_dim, self.context_dim], 1)
        net, inp = torch.tanh(net), torch.relu(inp)
        coords0 = _coords_grid(n, image1.shape[2] // 8, image1.shape[3] // 8, image1.device)
        coords1 = coords0.clone()
        up_mask = None
        for _ in range(iters):
            flow = coords1 - coords0
            net, up_mask, delta = self.update_block(net, inp, corr_fn(coords1), flow)
            coords1 = coords1 + delta
        return self.upsample_flow(coords1 - coords0, up_mask)


def load_raft(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> RAFT:
    """A :class:`RAFT` in eval mode with the weights of a local checkpoint (``module.`` prefix
    stripped). Raises :class:`RAFTWeightsError` (one line) when the file is missing, unreadable,
    or its keys or shapes are not the full model's (e.g. ``raft-small.pth``)."""
    if path is None:
        raise RAFTWeightsError(_HINT)
    file = Path(path).expanduser()
    if not file.is_file():
        raise RAFTWeightsError(f"{_HINT} (not found: {file})")
    state = read_state_dict(file, RAFTWeightsError, "RAFT state dict", _HINT)
    model = RAFT()
    expected = model.state_dict()
    # a strided block's shortcut norm is saved twice (``norm3`` and ``downsample.1``); converters
    # that drop shared tensors (safetensors ``save_model``) keep only one of the two names
    for key in [k for k in expected if ".norm3." in k or ".downsample.1." in k]:
        twin = (
            key.replace(".norm3.", ".downsample.1.")
            if ".norm3." in key
            else key.replace(".downsample.1.", ".norm3.")
        )
        if key not in state and twin in state:
            state[key] = state[twin]
    # num_batches_tracked only counts training steps; older checkpoints may lack it
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RAFTWeightsError(
            f"{file}: keys do not match the full RAFT model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, {len(missing)}/{len(unexpected)} in all); {_HINT}"
        )
    for key, value in state.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise RAFTWeightsError(f"{file}: {key} has shape {tuple(value.shape)}, expected {want}; {_HINT}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval().requires_grad_(False)


class RAFTFlow:
    """``flow_fn`` for :func:`~spatialdreamer.metrics.e_warp`: ``(source [B,C,H,W], target) →
    [B,2,H,W]`` in pixels with ``source(p) ≈ target(p + flow(p))``, like ``dis_flow``.

    Inputs in [0, 1] (grey is repeated to RGB) are scaled to [-1, 1], replicate-padded to a
    multiple of 8 (split evenly, RAFT's "sintel" mode) and to at least 64 px a side (below that
    the reference's 4-level pyramid runs out of pixels and fails), run ``batch_size`` pairs at a
    time, and the flow is cropped back. Returned on the source's device.

    Args:
        weights_path: a RAFT full-model checkpoint (see :func:`load_raft`), or a :class:`RAFT`.
        device: where the network runs.
        iters: refinement iterations (12 is the reference ``forward``'s default; its Sintel and
            KITTI evaluations used 32 and 24).
        batch_size: frame pairs per forward pass (bounds memory: correlation is O((HW/64)²)).
    """

    def __init__(
        self,
        weights_path: str | os.PathLike | RAFT,
        device: str | torch.device = "cpu",
        iters: int = 12,
        batch_size: int = 4,
    ) -> None:
        self.device = torch.device(device)
        if isinstance(weights_path, RAFT):
            self.model = weights_path.to(self.device).eval().requires_grad_(False)
        else:
            self.model = load_raft(weights_path, self.device)
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.iters, self.batch_size = iters, max(1, batch_size)

    @torch.inference_mode()
    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if source.shape != target.shape or source.ndim != 4 or source.shape[1] not in (1, 3):
            raise ValueError(
                "source and target must both be [B,C,H,W] with C in (1, 3), "
                f"got {tuple(source.shape)} and {tuple(target.shape)}"
            )
        h, w = source.shape[-2:]
        size = self.model.min_size
        ph, pw = max(h + -h % 8, size) - h, max(w + -w % 8, size) - w
        pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
        out = []
        for i in range(0, source.shape[0], self.batch_size):
            pair = []
            for x in (source[i : i + self.batch_size], target[i : i + self.batch_size]):
                x = x.to(self.device, torch.float32).clamp(0, 1).expand(-1, 3, -1, -1) * 2 - 1
                pair.append(F.pad(x, pad, mode="replicate"))
            flow = self.model(pair[0], pair[1], iters=self.iters)
            out.append(flow[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w])
        return torch.cat(out).to(source.device)
