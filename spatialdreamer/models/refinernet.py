"""RefinerNet: a 2-D U-Net with the denoiser's spatial layout that encodes the reference view.

It is a :class:`~diffusers.UNet2DConditionModel` (so Stable Diffusion U-Net weights load into it
directly) whose self-attentions use :class:`RefinerAttnProcessor`: they record the tokens the
denoiser fuses and apply temporal interaction learning (TIL) across the reference frames. The
block layout mirrors SVD's spatial path (``CrossAttnDownBlock2D`` ↔
``CrossAttnDownBlockSpatioTemporal``, …), so processor names match the denoiser's one to one and
:meth:`RefinerNet.from_denoiser` can copy the denoiser's spatial weights.
"""

from __future__ import annotations

import inspect
import re

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

from spatialdreamer.models.attention_processors import ReferenceBank, RefinerAttnProcessor

# DiffusionPipeline.from_pretrained finds a component's loader by looking its base classes
# (ModelMixin, ...) up in the module named in model_index.json, i.e. this one.
_LOADABLE_BASES = (ModelMixin,)

__all__ = ["RefinerNet", "is_temporal_parameter"]

_BLOCK_2D = {
    "CrossAttnDownBlockSpatioTemporal": "CrossAttnDownBlock2D",
    "DownBlockSpatioTemporal": "DownBlock2D",
    "CrossAttnUpBlockSpatioTemporal": "CrossAttnUpBlock2D",
    "UpBlockSpatioTemporal": "UpBlock2D",
}


class RefinerNet(UNet2DConditionModel):
    """Reference-view encoder. Extra config: ``til_weight`` (λ of TIL, 1 = off) and ``til_frames`` (N_r)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int] = 1,
        attention_head_dim: int | tuple[int] = (5, 10, 20, 20),
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        til_weight: float = 0.5,
        til_frames: int = 2,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            attention_head_dim=attention_head_dim,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
        self.bank = ReferenceBank()
        self.set_til(til_weight, til_frames)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """Drop UNet2DConditionModel options RefinerNet fixes, when they hold their defaults.

        Saved configs carry every parent option; only a non-default one is worth the
        "unexpected config attribute" warning.
        """
        own = inspect.signature(cls.__init__).parameters
        parent = inspect.signature(UNet2DConditionModel.__init__).parameters
        config_dict = {
            k: v
            for k, v in config_dict.items()
            if k in own or k not in parent or _differs(v, parent[k].default)
        }
        return super().extract_init_dict(config_dict, **kwargs)

    def set_til(self, til_weight: float, til_frames: int) -> None:
        """(Re)install the TIL/recording processors on every self-attention."""
        processors = {}
        for name, proc in self.attn_processors.items():
            if name.endswith("attn1.processor"):
                proc = RefinerAttnProcessor(name[: -len(".processor")], self.bank, til_weight, til_frames)
            processors[name] = proc
        self.set_attn_processor(processors)
        self.register_to_config(til_weight=float(til_weight), til_frames=int(til_frames))

    @classmethod
    def config_from_denoiser(cls, denoiser_config, til_weight: float = 0.5, til_frames: int = 2) -> dict:
        """RefinerNet config with the spatial layout of a ``UNetSpatioTemporalConditionModel`` config."""
        heads = denoiser_config["num_attention_heads"]
        return {
            "in_channels": int(denoiser_config.get("latent_channels", denoiser_config["out_channels"])),
            "out_channels": int(denoiser_config["out_channels"]),
            "down_block_types": tuple(_BLOCK_2D[b] for b in denoiser_config["down_block_types"]),
            "up_block_types": tuple(_BLOCK_2D[b] for b in denoiser_config["up_block_types"]),
            "block_out_channels": tuple(denoiser_config["block_out_channels"]),
            "layers_per_block": denoiser_config["layers_per_block"],
            "cross_attention_dim": denoiser_config["cross_attention_dim"],
            "transformer_layers_per_block": denoiser_config["transformer_layers_per_block"],
            "attention_head_dim": heads if isinstance(heads, int) else tuple(heads),
            "til_weight": til_weight,
            "til_frames": til_frames,
        }

    @classmethod
    def from_denoiser(
        cls,
        denoiser: torch.nn.Module,
        *,
        til_weight: float = 0.5,
        til_frames: int = 2,
        copy_weights: bool = True,
    ) -> RefinerNet:
        """Build a RefinerNet with ``denoiser``'s spatial layout, optionally copying its spatial weights.

        The copy maps ``…resnets.j.spatial_res_block.*`` → ``…resnets.j.*``, keeps the spatial
        transformer (norm, proj_in, transformer_blocks, proj_out), the time embedding and
        ``conv_in`` (its first ``latent_channels`` input channels: the noisy-latent slot).
        Temporal layers have no counterpart and are skipped.
        """
        model = cls(**cls.config_from_denoiser(denoiser.config, til_weight, til_frames))
        if model.dtype != denoiser.dtype:
            model.to(dtype=denoiser.dtype)
        model.to(device=denoiser.device)
        if copy_weights:
            model.load_state_dict(spatial_state_dict(denoiser.state_dict(), model.state_dict()), strict=True)
        return model

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        num_frames: int = 1,
        return_dict: bool = True,
        **kwargs,
    ) -> UNet2DConditionOutput | tuple:
        """Encode reference latents ``[B*F, C, h, w]`` (``F = num_frames`` consecutive frames per video)."""
        if sample.ndim != 4 or sample.shape[0] % num_frames:
            raise ValueError(
                f"sample must be [B*F, C, h, w] with B*F a multiple of num_frames={num_frames}, "
                f"got {tuple(sample.shape)}"
            )
        # Left set after the call: checkpointed blocks recompute TIL during backward.
        self.bank.num_frames = int(num_frames)
        return super().forward(sample, timestep, encoder_hidden_states, return_dict=return_dict, **kwargs)


def _differs(value, default) -> bool:
    if isinstance(value, list | tuple) and isinstance(default, list | tuple):
        return list(value) != list(default)
    return value != default


_TEMPORAL = re.compile(
    r"(temporal_res_block|time_mixer|temporal_transformer_blocks|time_pos_embed|time_proj)"
)


def is_temporal_parameter(name: str) -> bool:
    """Whether a spatio-temporal U-Net parameter belongs to a temporal layer."""
    return bool(_TEMPORAL.search(name))


def spatial_state_dict(
    denoiser_state: dict[str, torch.Tensor], refiner_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a spatio-temporal U-Net state dict onto a RefinerNet state dict (same spatial layout)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in denoiser_state.items():
        if _TEMPORAL.search(key) or key.startswith(("add_embedding", "deviation_")):
            continue
        new_key = key.replace(".spatial_res_block.", ".")
        if new_key not in refiner_state:
            continue
        target = refiner_state[new_key]
        if new_key == "conv_in.weight" and value.shape[1] != target.shape[1]:
            value = value[:, : target.shape[1]]
        if value.shape != target.shape:
            raise ValueError(
                f"shape mismatch for {new_key}: denoiser {tuple(value.shape)} vs {tuple(target.shape)}"
            )
        out[new_key] = value.clone()
    missing = sorted(set(refiner_state) - set(out))
    if missing:
        raise ValueError(
            f"the denoiser has no weights for RefinerNet keys {missing[:5]} ({len(missing)} in all)"
        )
    return out
