"""An exactly invertible latent space for the small configs, and latent calibration.

The models learn in a VAE's latent space, so that space must reconstruct: a random VAE caps
every result at its own (poor) round trip. ``base``/``full`` use pretrained VAEs (SVD's temporal
decoder or Stable Diffusion's ``AutoencoderKL``). The ``tiny`` config, which must train on a CPU
without any download, uses :class:`SpaceToDepthAutoencoder`: pixels of each ``p × p`` patch are
stacked into channels (``pixel_unshuffle``), which loses nothing, so its round trip is exact
and the latent-space ceiling of a refiner is the true image.

Latents are scaled the diffusers way, ``z = (encode(x) − shift_factor) · scaling_factor``;
:func:`calibrate_latent_scale` fits both on real frames so latents have mean ≈ 0 and std ≈ 1,
the scale the noise schedule assumes.

Example:
    >>> vae = SpaceToDepthAutoencoder(patch_size=4)
    >>> x = torch.rand(1, 3, 32, 48) * 2 - 1
    >>> z = vae.encode(x).latent_dist.mode()
    >>> tuple(z.shape), bool((vae.decode(z).sample - x).abs().max() < 1e-6)
    ((1, 48, 8, 12), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

# DiffusionPipeline.from_pretrained finds a component's loader by looking its base classes
# (ModelMixin, ...) up in the module named in model_index.json, i.e. this one.
_LOADABLE_BASES = (ModelMixin,)

__all__ = [
    "ExactLatent",
    "SpaceToDepthAutoencoder",
    "calibrate_latent_scale",
    "latent_shift",
    "vae_downscale",
]


class ExactLatent:
    """A deterministic "distribution" with the ``DiagonalGaussianDistribution`` reading API."""

    def __init__(self, latents: torch.Tensor) -> None:
        self.mean = latents

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean


@dataclass
class ExactEncoderOutput(BaseOutput):
    latent_dist: ExactLatent


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):
    """Lossless ``[B, 3, H, W] → [B, 3·p², H/p, W/p]`` autoencoder (no parameters).

    ``H`` and ``W`` must be multiples of ``patch_size`` (the pipeline pads to them).
    ``scaling_factor`` / ``shift_factor`` are set by :func:`calibrate_latent_scale`;
    ``calibrated`` records whether that happened (training refuses an uncalibrated one).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 4,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        calibrated: bool = False,
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        # ModelMixin needs one tensor to report a device and dtype and to write a weights file.
        self.register_buffer("format_version", torch.ones(()))

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.patch_size**2

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        p = self.config.patch_size
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"expected [B, {self.config.in_channels}, H, W] with H and W multiples of {p}, "
                f"got {tuple(x.shape)}"
            )
        latent = ExactLatent(F.pixel_unshuffle(x, p))
        return ExactEncoderOutput(latent_dist=latent) if return_dict else (latent,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_: object):
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [B, {self.latent_channels}, h, w], got {tuple(z.shape)}")
        out = F.pixel_shuffle(z, self.config.patch_size)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample


def vae_downscale(vae: torch.nn.Module) -> int:
    """Pixels per latent cell along each axis."""
    if isinstance(vae, SpaceToDepthAutoencoder):
        return int(vae.config.patch_size)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shift(vae: torch.nn.Module) -> float:
    """The VAE's ``shift_factor`` (``None`` in most pretrained configs) as a float."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def calibrate_latent_scale(
    vae: torch.nn.Module, frames: torch.Tensor, chunk_size: int = 16
) -> tuple[float, float]:
    """Fit ``shift_factor`` and ``scaling_factor`` so the scaled latents of ``frames`` have mean 0
    and std 1; writes them into ``vae.config`` and returns ``(shift, scale)``.

    ``frames``: ``[N, 3, H, W]`` float in [0, 1], a sample of the training corpus.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [N, 3, H, W] in [0, 1] with N >= 1, got {tuple(frames.shape)}")
    total, total_sq, count = 0.0, 0.0, 0
    for chunk in frames.split(chunk_size):
        x = chunk.to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        z = vae.encode(x).latent_dist.mode().double()
        total, total_sq, count = total + float(z.sum()), total_sq + float(z.square().sum()), count + z.numel()
    mean = total / count
    std = max((total_sq / count - mean * mean) ** 0.5, 1e-6)
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    if "calibrated" in vae.config:
        vae.register_to_config(calibrated=True)
    return mean, 1.0 / std
