"""Shared model plumbing used by sampling (the pipeline) and by the training loss.

Everything here is a plain function over tensors and models so that it also works with models
wrapped for distributed training (``DistributedDataParallel`` exposes the model as ``.module``).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from spatialdreamer.models.autoencoder import latent_shift

__all__ = [
    "added_time_ids",
    "decode_latents",
    "encode_frames",
    "encode_reference",
    "mask_to_latent",
    "predict_velocity",
    "unwrap",
]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP/compile wrapper (or the model itself)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def encode_frames(vae: torch.nn.Module, frames: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """Frames ``[N, 3, H, W]`` in [0, 1] → scaled latents ``[N, C, H/f, W/f]`` (distribution mode)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [N, 3, H, W] in [0, 1], got {tuple(frames.shape)}")
    vae = unwrap(vae)
    shift, scale = latent_shift(vae), vae.config.scaling_factor
    out = []
    for chunk in frames.split(max(1, chunk_size)):
        x = chunk.to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        out.append((vae.encode(x).latent_dist.mode() - shift) * scale)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, latents: torch.Tensor, num_frames: int | None = None, chunk_size: int = 8
) -> torch.Tensor:
    """Scaled latents ``[N, C, h, w]`` → frames ``[N, 3, H, W]`` float32 in [0, 1].

    A temporal decoder (SVD's ``AutoencoderKLTemporalDecoder``) gets ``num_frames`` = chunk length.
    """
    vae = unwrap(vae)
    temporal = "num_frames" in inspect.signature(vae.decode).parameters
    out = []
    for chunk in latents.split(max(1, chunk_size)):
        z = chunk.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + latent_shift(vae)
        kwargs = {"num_frames": chunk.shape[0]} if temporal else {}
        out.append(vae.decode(z, **kwargs).sample.float())
    return ((torch.cat(out) + 1.0) / 2.0).clamp(0.0, 1.0)


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Hole mask ``[N, 1, H, W]`` (bool or float, 1 = hole) → ``[N, 1, h, w]`` float.

    Max pooling: a latent cell that covers any hole pixel counts as a hole.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [N, 1, H, W], got {tuple(mask.shape)}")
    return F.adaptive_max_pool2d(mask.float(), size)


def added_time_ids(
    unet: torch.nn.Module,
    batch_size: int,
    *,
    fps: float = 7.0,
    motion_bucket_id: float = 127.0,
    noise_aug_strength: float = 0.0,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SVD's micro-conditioning ids ``[B, 3]`` = (fps − 1, motion bucket, noise-augmentation strength)."""
    cfg = unwrap(unet).config
    expected = cfg.projection_class_embeddings_input_dim // cfg.addition_time_embed_dim
    if expected != 3:
        raise ValueError(f"the denoiser expects {expected} added time ids; SpatialDreamer passes 3")
    ids = torch.tensor([[fps - 1.0, motion_bucket_id, noise_aug_strength]], device=device, dtype=dtype)
    return ids.repeat(batch_size, 1)


def encode_reference(
    refinernet: torch.nn.Module, reference_latents: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Run RefinerNet on reference latents ``[B, F, C, h, w]`` and return its per-layer tokens.

    RefinerNet sees timestep 0 (the reference is clean); frames are flattened ``b * F + f``,
    the same order the denoiser uses, so token row ``k`` pairs video frame ``k`` with reference
    frame ``k``. ``encoder_hidden_states`` is ``[B, S, D]`` and is repeated over frames.
    """
    if reference_latents.ndim != 5:
        raise ValueError(f"reference latents must be [B, F, C, h, w], got {tuple(reference_latents.shape)}")
    batch, frames = reference_latents.shape[:2]
    model = unwrap(refinernet)
    ehs = encoder_hidden_states.repeat_interleave(frames, dim=0)
    timestep = torch.zeros(batch * frames, device=reference_latents.device)
    with model.bank.record() as features:
        refinernet(reference_latents.flatten(0, 1), timestep, ehs, num_frames=frames)
    return dict(features)


def predict_velocity(
    unet: torch.nn.Module,
    refinernet: torch.nn.Module,
    *,
    noisy_latents: torch.Tensor,
    timestep: torch.Tensor | float,
    rendered_latents: torch.Tensor,
    mask_latents: torch.Tensor,
    reference_latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    deviation_strength: torch.Tensor | float | None,
    reference_features: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One denoiser evaluation with reference fusion: v-prediction ``[B, F, C, h, w]``.

    ``noisy_latents`` is the scheduler-scaled model input; ``rendered_latents`` and
    ``reference_latents`` are ``[B, F, C, h, w]``, ``mask_latents`` ``[B, F, 1, h, w]``.
    ``reference_features`` (from :func:`encode_reference`) may be passed to reuse RefinerNet's
    output across denoising steps; otherwise RefinerNet runs here.
    """
    shape = noisy_latents.shape
    if rendered_latents.shape != shape or reference_latents.shape != shape:
        raise ValueError(
            f"noisy {tuple(shape)}, rendered {tuple(rendered_latents.shape)} and reference "
            f"{tuple(reference_latents.shape)} latents must all be [B, F, C, h, w] of one shape"
        )
    if mask_latents.shape != (*shape[:2], 1, *shape[3:]):
        raise ValueError(
            f"mask latents must be [B, F, 1, h, w] matching {tuple(shape)}, got {tuple(mask_latents.shape)}"
        )
    if reference_features is None:
        reference_features = encode_reference(refinernet, reference_latents, encoder_hidden_states)
    model_input = torch.cat([noisy_latents, rendered_latents, mask_latents.to(noisy_latents.dtype)], dim=2)
    # The features stay in use after this call, for checkpoint recomputation during backward.
    unwrap(refinernet).bank.use(reference_features)
    return unet(
        model_input,
        timestep,
        encoder_hidden_states=encoder_hidden_states,
        added_time_ids=added_time_ids,
        deviation_strength=deviation_strength,
    ).sample
