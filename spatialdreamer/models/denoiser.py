"""The video denoiser: SVD's spatio-temporal U-Net plus the stereo-deviation embedding.

Input per frame is ``noisy latent ⊕ latent of the warp-back/rendered view ⊕ hole mask`` (latent
size), i.e. ``2·latent_channels + 1`` channels. Consistency control adds an embedding of the
stereo deviation strength s (one scalar per video, see
:func:`spatialdreamer.models.consistency.stereo_deviation_strength`) to the time embedding.

How it is injected: the subclass does **not** copy diffusers' forward. It adds two modules,
``deviation_proj`` (sinusoidal :class:`~diffusers.models.embeddings.Timesteps`) and
``deviation_embedding`` (:class:`~diffusers.models.embeddings.TimestepEmbedding`, last layer
zero-initialised so pretrained SVD behaviour is unchanged at the start of fine-tuning), and
for the duration of one forward call registers a forward hook on ``time_embedding`` that adds
``deviation_embedding(deviation_proj(s · deviation_scale))`` to its ``[B, D]`` output, before
SVD repeats it over frames.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import TemporalBasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

# DiffusionPipeline.from_pretrained finds a component's loader by looking its base classes
# (ModelMixin, ...) up in the module named in model_index.json, i.e. this one.
_LOADABLE_BASES = (ModelMixin,)

__all__ = ["SpatialDreamerDenoiser"]


class SpatialDreamerDenoiser(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` with the stereo-deviation time embedding.

    Extra config: ``latent_channels`` (channels of one latent; ``in_channels`` must be
    ``2·latent_channels + 1``), ``deviation_scale`` (s is multiplied by it before the sinusoid,
    mapping latent-space deviations ≈ 0…1 to the timestep-like range 0…1000).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 9,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int] = 2,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int, tuple[tuple]] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        latent_channels: int = 4,
        deviation_scale: float = 1000.0,
    ):
        if in_channels != 2 * latent_channels + 1:
            raise ValueError(
                "in_channels must be 2*latent_channels + 1 (noisy ⊕ rendered ⊕ mask) = "
                f"{2 * latent_channels + 1}, got {in_channels}"
            )
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )
        time_embed_dim = block_out_channels[0] * 4
        self.deviation_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.deviation_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        torch.nn.init.zeros_(self.deviation_embedding.linear_2.weight)
        torch.nn.init.zeros_(self.deviation_embedding.linear_2.bias)

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Callable | None = None) -> None:
        """diffusers' checkpointing plus SVD's temporal transformer blocks, which diffusers runs
        unchecked and which then hold most of what a checkpointed step keeps (at ``full``
        scale ~36 of ~49 GiB; ``benchmarks/train_memory.py``)."""
        super().enable_gradient_checkpointing(gradient_checkpointing_func)
        for module in self.modules():
            if isinstance(module, TemporalBasicTransformerBlock) and "_unchecked_forward" not in vars(module):
                module._unchecked_forward = module.forward
                module.forward = functools.partial(_checkpointed_forward, module)

    def disable_gradient_checkpointing(self) -> None:
        super().disable_gradient_checkpointing()
        for module in self.modules():
            if "_unchecked_forward" in vars(module):
                module.forward = vars(module).pop("_unchecked_forward")

    def embed_deviation(self, deviation_strength: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``[B]`` (or scalar) deviation strengths → ``[B, 4·block_out_channels[0]]`` embedding."""
        s = torch.as_tensor(deviation_strength, device=self.device, dtype=torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch_size)
        if s.numel() != batch_size:
            raise ValueError(
                f"deviation_strength must have one value per video ({batch_size}), got {s.numel()}"
            )
        proj = self.deviation_proj(s * self.config.deviation_scale)
        return self.deviation_embedding(proj.to(self.deviation_embedding.linear_1.weight.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        deviation_strength: torch.Tensor | float | None = None,
        return_dict: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple:
        """Denoise ``sample`` ``[B, F, 2·C+1, h, w]``; returns ``[B, F, C, h, w]`` (v-prediction).

        ``deviation_strength``: ``[B]`` or a float, the stereo deviation strength s; ``None``
        leaves the time embedding untouched (plain SVD behaviour).
        """
        if sample.ndim != 5 or sample.shape[2] != self.config.in_channels:
            raise ValueError(
                f"sample must be [B, F, {self.config.in_channels}, h, w] (noisy ⊕ rendered ⊕ mask), "
                f"got {tuple(sample.shape)}"
            )
        if deviation_strength is None:
            return super().forward(
                sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict
            )
        extra = self.embed_deviation(deviation_strength, sample.shape[0])
        handle = self.time_embedding.register_forward_hook(lambda _m, _i, out: out + extra.to(out.dtype))
        try:
            return super().forward(
                sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict
            )
        finally:
            handle.remove()


def _checkpointed_forward(module: torch.nn.Module, *args, **kwargs):
    if torch.is_grad_enabled() and module.training:
        return torch.utils.checkpoint.checkpoint(
            module._unchecked_forward, *args, use_reentrant=False, **kwargs
        )
    return module._unchecked_forward(*args, **kwargs)
