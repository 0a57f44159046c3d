"""``SpatialDreamerPipeline``: refine rendered (forward-warped) frames into a complete view.

Inputs are the rendered view of the target eye (e.g. the right view forward-warped from the
left, its holes pre-filled by :func:`~spatialdreamer.models.reference.rendered_view`) with its
hole masks, and the reference frames (the source view). The
pipeline encodes all three with the VAE, runs RefinerNet on the reference latents, samples the
denoiser with reference fusion and consistency control, and decodes. Long videos run in
overlapping temporal windows and large frames in overlapping latent tiles; each step's
predictions are blended with linear ramps (see :mod:`spatialdreamer.models.tiling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from spatialdreamer.models.attention_processors import attach_reference_fusion
from spatialdreamer.models.autoencoder import vae_downscale
from spatialdreamer.models.conditioning import (
    added_time_ids,
    decode_latents,
    encode_frames,
    encode_reference,
    mask_to_latent,
    predict_velocity,
)
from spatialdreamer.models.consistency import visible_deviation_strength
from spatialdreamer.models.tiling import blend_chunks, plan_chunks

__all__ = ["SpatialDreamerPipeline", "SpatialDreamerPipelineOutput", "encode_condition_embeddings"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class SpatialDreamerPipelineOutput(BaseOutput):
    """``frames``: refined view, ``[T, 3, H, W]`` (or ``[B, T, 3, H, W]`` for batched input) in [0, 1]."""

    frames: torch.Tensor | np.ndarray


@torch.no_grad()
def encode_condition_embeddings(
    image_encoder: torch.nn.Module | None, reference: torch.Tensor, cross_attention_dim: int
) -> torch.Tensor:
    """Cross-attention context ``[B, 1, D]``: mean CLIP image embedding of the reference frames.

    ``reference`` is ``[B, T, 3, H, W]`` in [0, 1]. Without an image encoder the context is zeros
    (the models are then trained to work without it).
    """
    batch, frames = reference.shape[:2]
    if image_encoder is None:
        return torch.zeros(batch, 1, cross_attention_dim, device=reference.device)
    size = image_encoder.config.image_size
    x = reference.flatten(0, 1).to(device=image_encoder.device, dtype=torch.float32)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    embeds = image_encoder(pixel_values=((x - mean) / std).to(image_encoder.dtype)).image_embeds
    if embeds.shape[-1] != cross_attention_dim:
        raise ValueError(
            f"image encoder gives {embeds.shape[-1]}-d embeddings, the denoiser wants {cross_attention_dim}"
        )
    return embeds.float().view(batch, frames, -1).mean(dim=1, keepdim=True)


def _as_video(x: torch.Tensor, name: str, channels: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[2] != channels:
        raise ValueError(
            f"{name} must be [T, {channels}, H, W] or [B, T, {channels}, H, W], got {tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero frames")
    return x


class SpatialDreamerPipeline(DiffusionPipeline):
    """Components: ``vae``, ``unet`` (:class:`SpatialDreamerDenoiser`), ``refinernet``
    (:class:`RefinerNet`), ``scheduler`` (v-prediction DDIM or Euler) and optional
    ``image_encoder`` (``CLIPVisionModelWithProjection``).
    """

    model_cpu_offload_seq = "image_encoder->refinernet->unet->vae"
    _optional_components = ["image_encoder"]

    def __init__(self, vae, unet, refinernet, scheduler, image_encoder=None) -> None:
        super().__init__()
        if scheduler.config.get("prediction_type") != "v_prediction":
            raise ValueError(
                "the scheduler must use prediction_type='v_prediction', "
                f"got {scheduler.config.get('prediction_type')!r}"
            )
        self.register_modules(
            vae=vae, unet=unet, refinernet=refinernet, scheduler=scheduler, image_encoder=image_encoder
        )
        attach_reference_fusion(unet, refinernet)
        self.vae_scale_factor = vae_downscale(vae)

    @torch.no_grad()
    def __call__(
        self,
        rendered: torch.Tensor,
        masks: torch.Tensor,
        reference: torch.Tensor,
        *,
        num_inference_steps: int = 25,
        window_size: int | None = None,
        window_overlap: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 8,
        deviation_strength: float | torch.Tensor | None = None,
        fps: float = 7.0,
        motion_bucket_id: float = 127.0,
        noise_aug_strength: float = 0.0,
        composite: bool = True,
        decode_chunk_size: int = 8,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
    ) -> SpatialDreamerPipelineOutput:
        """Refine ``rendered`` frames.

        Args:
            rendered: ``[T, 3, H, W]`` or ``[B, T, 3, H, W]`` in [0, 1], the view to refine, its
                holes pre-filled as in training
                (:func:`~spatialdreamer.models.reference.rendered_view`).
            masks: ``[T, 1, H, W]`` / ``[B, T, 1, H, W]``, bool or float, True/1 = hole.
            reference: the source-view frames, same shape as ``rendered``; complete frames (see
                :func:`~spatialdreamer.models.reference.reference_view`).
            num_inference_steps: denoising steps.
            window_size: frames per temporal window (default: the denoiser's ``num_frames``).
            window_overlap: frames shared by neighbouring windows (default ``window_size // 4``).
            tile_size: latent tile side for large frames (default: no tiling).
            tile_overlap: latent pixels shared by neighbouring tiles.
            deviation_strength: stereo deviation strength s; ``None`` measures it on the whole
                video's visible latent cells, exactly as training does
                (:func:`~spatialdreamer.models.consistency.visible_deviation_strength`).
            composite: keep the rendered pixels outside the holes (only holes are generated).
            generator: seeds the initial noise (and stochastic schedulers).
            output_type: ``"pt"`` (torch float32) or ``"np"`` (numpy float32).

        Returns:
            :class:`SpatialDreamerPipelineOutput` with ``frames`` shaped like ``rendered``, in [0, 1].
        """
        batched = rendered.ndim == 5
        rendered = _as_video(rendered, "rendered", 3)
        masks = _as_video(masks, "masks", 1)
        reference = _as_video(reference, "reference", 3)
        if (
            reference.shape != rendered.shape
            or masks.shape[:2] + masks.shape[3:] != rendered.shape[:2] + rendered.shape[3:]
        ):
            raise ValueError(
                f"rendered {tuple(rendered.shape)}, masks {tuple(masks.shape)} and reference "
                f"{tuple(reference.shape)} must share batch, frames, height and width"
            )
        if output_type not in ("pt", "np"):
            raise ValueError(f"output_type must be 'pt' or 'np', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

        device = self._execution_device
        batch, frames, _, height, width = rendered.shape
        f = self.vae_scale_factor
        pad_h, pad_w = (-height) % f, (-width) % f

        def prep(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device=device, dtype=torch.float32).flatten(0, 1)
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

        rendered_px, masks_px, reference_px = prep(rendered), prep(masks), prep(reference)

        # 1. conditions
        unet_cfg = self.unet.config
        dtype = self.unet.dtype
        z_render = encode_frames(self.vae, rendered_px, decode_chunk_size).to(dtype)
        z_ref = encode_frames(self.vae, reference_px, decode_chunk_size).to(dtype)
        lat_h, lat_w = z_render.shape[-2:]
        z_mask = mask_to_latent(masks_px, (lat_h, lat_w)).to(dtype)
        z_render, z_ref, z_mask = (z.unflatten(0, (batch, frames)) for z in (z_render, z_ref, z_mask))
        ehs = encode_condition_embeddings(
            self.image_encoder, reference_px.unflatten(0, (batch, frames)), unet_cfg.cross_attention_dim
        )
        ehs = ehs.to(device=device, dtype=dtype)
        ids = added_time_ids(
            self.unet,
            batch,
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            device=device,
            dtype=dtype,
        )
        if deviation_strength is None:
            deviation = visible_deviation_strength(z_render, z_ref, z_mask)
        else:
            deviation = torch.as_tensor(deviation_strength, dtype=torch.float32).reshape(-1)
            if deviation.numel() not in (1, batch):
                raise ValueError(f"deviation_strength needs 1 or {batch} values, got {deviation.numel()}")
            deviation = deviation.expand(batch).clone()
        deviation = deviation.to(device)

        # 2. chunks: temporal windows × spatial tiles, each with its blend weight
        window = window_size or unet_cfg.num_frames
        plan = plan_chunks(
            frames,
            lat_h,
            lat_w,
            window=window,
            window_overlap=min(window, frames) // 4 if window_overlap is None else window_overlap,
            tile=tile_size,
            tile_overlap=tile_overlap,
            device=device,
        )
        chunks = plan.slices
        # RefinerNet is evaluated at t = 0, so its features are reused across steps when there is
        # a single chunk; with many chunks they are recomputed to keep memory bounded.
        cached = encode_reference(self.refinernet, z_ref[chunks[0]], ehs) if len(chunks) == 1 else None

        # 3. denoise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor(z_render.shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        with self.progress_bar(total=len(self.scheduler.timesteps)) as progress:
            for t in self.scheduler.timesteps:
                model_input = self.scheduler.scale_model_input(latents, t)

                def chunk_velocity(sl: tuple[slice, ...], model_input=model_input, t=t) -> torch.Tensor:
                    return predict_velocity(
                        self.unet,
                        self.refinernet,
                        noisy_latents=model_input[sl],
                        timestep=t,
                        rendered_latents=z_render[sl],
                        mask_latents=z_mask[(*sl[:2], slice(None), *sl[3:])],
                        reference_latents=z_ref[sl],
                        encoder_hidden_states=ehs,
                        added_time_ids=ids,
                        deviation_strength=deviation,
                        reference_features=cached,
                    )

                velocity = blend_chunks(plan, latents.shape, chunk_velocity).to(dtype)
                latents = self.scheduler.step(velocity, t, latents, generator=generator).prev_sample
                progress.update()

        # 4. decode, composite, crop
        out = decode_latents(self.vae, latents.flatten(0, 1), num_frames=None, chunk_size=decode_chunk_size)
        if composite:
            hole = (masks_px > 0.5).float()
            out = hole * out + (1.0 - hole) * rendered_px.clamp(0, 1)
        out = out[..., :height, :width].unflatten(0, (batch, frames))
        if not batched:
            out = out[0]
        self.refinernet.bank.clear()
        self.maybe_free_model_hooks()
        return SpatialDreamerPipelineOutput(frames=out.cpu().numpy() if output_type == "np" else out)
