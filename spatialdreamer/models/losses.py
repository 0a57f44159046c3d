"""Training objective: v-prediction diffusion loss + λ · stereo-aware loss.

Called by the ``train`` package once per step (the models may be DDP-wrapped). Noise follows the
scheduler the pipeline samples with, so a model trained here is sampled consistently:

* discrete schedulers (DDIM, Euler with ``timestep_type="discrete"``): ``t ~ U{0, …, N−1}``,
  ``ᾱ = alphas_cumprod[t]``, the model sees ``t``;
* continuous Euler (SVD/EDM style): ``log σ ~ N(P_mean, P_std²)``, ``ᾱ = 1 / (1 + σ²)``, the
  model sees ``0.25·log σ``.

With ``a = √ᾱ``, ``b = √(1 − ᾱ)``: ``x_t = a·z₀ + b·ε`` (the scheduler-scaled model input),
``v = a·ε − b·z₀`` and ``ẑ₀ = a·x_t − b·v̂``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spatialdreamer.models.conditioning import (
    added_time_ids,
    encode_frames,
    mask_to_latent,
    predict_velocity,
    unwrap,
)
from spatialdreamer.models.consistency import stereo_aware_loss, visible_deviation_strength

__all__ = ["BATCH_KEYS", "sample_noise_level", "training_losses"]

BATCH_KEYS = ("target", "rendered", "mask", "reference")


def sample_noise_level(
    scheduler,
    batch_size: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
    p_mean: float = 0.7,
    p_std: float = 1.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(ᾱ [B], model timestep [B])`` following ``scheduler``'s time parameterisation."""
    if scheduler.config.get("timestep_type", "discrete") == "continuous":
        log_sigma = torch.randn(batch_size, generator=generator) * p_std + p_mean
        alpha_bar = 1.0 / (1.0 + torch.exp(2.0 * log_sigma))
        timestep = 0.25 * log_sigma
    else:
        n = scheduler.config.num_train_timesteps
        timestep = torch.randint(0, n, (batch_size,), generator=generator)
        alpha_bar = scheduler.alphas_cumprod.float().cpu()[timestep]
    return alpha_bar.to(device), timestep.to(device)


def _latents(vae, frames: torch.Tensor) -> torch.Tensor:
    batch, count = frames.shape[:2]
    return encode_frames(vae, frames.flatten(0, 1)).unflatten(0, (batch, count))


def training_losses(
    batch: dict[str, torch.Tensor],
    *,
    unet: torch.nn.Module,
    refinernet: torch.nn.Module,
    vae: torch.nn.Module,
    scheduler,
    stereo_loss_weight: float = 0.1,
    encoder_hidden_states: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduce_strength: bool = True,
    hole_loss_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Losses for one batch.

    Args:
        batch: ``target``, ``rendered``, ``reference`` ``[B, T, 3, H, W]`` in [0, 1] and ``mask``
            ``[B, T, 1, H, W]`` (True/1 = hole). For warp-back training ``rendered`` is the
            warp-back view with its holes pre-filled
            (:func:`~spatialdreamer.models.reference.rendered_view`) and ``target`` the source
            frame.
        unet, refinernet: the denoiser and RefinerNet (optionally DDP-wrapped); both get gradients.
        vae: frozen autoencoder (runs without gradients).
        scheduler: the sampling scheduler (v-prediction); only its noise schedule is read.
        stereo_loss_weight: λ in ``l = l_ε + λ·l_d``.
        encoder_hidden_states: ``[B, S, D]`` cross-attention context (default zeros, as the
            pipeline uses without an image encoder).
        generator: seeds noise and noise levels (CPU generator).
        reduce_strength: see :func:`stereo_aware_loss`.
        hole_loss_weight: weight of the latent cells that cover a hole in the diffusion loss
            (1 = the paper's plain mean). Sampling keeps the pixels outside the holes, so only
            the holes reach the output; where holes are a few percent of the frame a weight
            above 1 spends more of the gradient on them.

    Note:
        RefinerNet's layers after its last recorded self-attention (the tail of its last up
        block, ``conv_norm_out``, ``conv_out``) do not influence the loss and get no gradient;
        wrap it with ``DistributedDataParallel(..., find_unused_parameters=True)``.

    Returns:
        dict of scalar tensors: ``loss`` (to backpropagate), ``diffusion_loss``, ``stereo_loss``
        and ``deviation_strength`` (mean conditioning s, detached, for logging).
    """
    if not math.isfinite(float(stereo_loss_weight)) or stereo_loss_weight < 0:
        raise ValueError(f"stereo_loss_weight must be a finite value >= 0, got {stereo_loss_weight}")
    if not math.isfinite(float(hole_loss_weight)) or hole_loss_weight < 1:
        raise ValueError(f"hole_loss_weight must be a finite value >= 1, got {hole_loss_weight}")
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; expected keys {BATCH_KEYS}")
    target, rendered, mask, reference = (batch[k] for k in BATCH_KEYS)
    if target.ndim != 5 or target.shape[2] != 3:
        raise ValueError(f"batch['target'] must be [B, T, 3, H, W], got {tuple(target.shape)}")
    for key in ("rendered", "reference"):
        if batch[key].shape != target.shape:
            raise ValueError(
                f"batch[{key!r}] {tuple(batch[key].shape)} must match target {tuple(target.shape)}"
            )
    if mask.shape != (*target.shape[:2], 1, *target.shape[3:]):
        raise ValueError(f"batch['mask'] must be [B, T, 1, H, W] matching target, got {tuple(mask.shape)}")
    if scheduler.config.get("prediction_type") != "v_prediction":
        raise ValueError(
            "training_losses trains v-prediction; the scheduler must use prediction_type='v_prediction'"
        )

    model = unwrap(unet)
    device, dtype = model.device, model.dtype
    bsz, frames = target.shape[:2]
    z0, z_render, z_ref = (
        _latents(vae, x).to(device=device, dtype=torch.float32) for x in (target, rendered, reference)
    )
    z_mask = mask_to_latent(mask.flatten(0, 1).to(device), z0.shape[-2:]).unflatten(0, (bsz, frames))

    alpha_bar, timestep = sample_noise_level(scheduler, bsz, device=device, generator=generator)
    a = alpha_bar.sqrt().view(-1, 1, 1, 1, 1)
    b = (1.0 - alpha_bar).clamp(min=0).sqrt().view(-1, 1, 1, 1, 1)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    noisy = a * z0 + b * noise
    v_target = a * noise - b * z0

    strength = visible_deviation_strength(z_render, z_ref, z_mask)  # as the pipeline computes it
    if encoder_hidden_states is None:
        encoder_hidden_states = torch.zeros(bsz, 1, model.config.cross_attention_dim, device=device)
    v_pred = predict_velocity(
        unet,
        refinernet,
        noisy_latents=noisy.to(dtype),
        timestep=timestep,
        rendered_latents=z_render.to(dtype),
        mask_latents=z_mask.to(dtype),
        reference_latents=z_ref.to(dtype),
        encoder_hidden_states=encoder_hidden_states.to(device=device, dtype=dtype),
        added_time_ids=added_time_ids(unet, bsz, device=device, dtype=dtype),
        deviation_strength=strength,
    ).float()

    if hole_loss_weight == 1:
        diffusion = F.mse_loss(v_pred, v_target)
    else:  # a weighted mean: the loss keeps its scale whatever the hole ratio
        weight = (1.0 + (hole_loss_weight - 1.0) * z_mask.to(v_pred)).expand_as(v_pred)
        diffusion = (weight * (v_pred - v_target).square()).sum() / weight.sum()
    z0_hat = a * noisy - b * v_pred
    stereo = stereo_aware_loss(z0, z0_hat, z_ref, reduce_strength=reduce_strength)
    return {
        "loss": diffusion + stereo_loss_weight * stereo,
        "diffusion_loss": diffusion,
        "stereo_loss": stereo,
        "deviation_strength": strength.mean().detach(),
    }
