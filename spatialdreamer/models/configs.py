"""Named model configurations and :func:`build_pipeline`.

* ``tiny``: a few hundred thousand parameters of the real architectures; tests and CPU runs.
  Its latent space is :class:`SpaceToDepthAutoencoder` (lossless 4×4 space-to-depth, 48
  channels), calibrated on the corpus when training starts.
* ``base``: reduced-width SVD layout (about half of SVD's channels), 8-frame windows,
  sized for training on one 24 GB GPU with fp16/bf16 at 256×384 frames, in the latent space
  of SVD's pretrained VAE (``vae_pretrained``, a hub id or local folder).
* ``full``: the Stable Video Diffusion layout (paper scale), 14-frame windows; meant to be
  initialised from SVD weights via ``build_pipeline("full", pretrained=...)`` and RefinerNet
  from Stable Diffusion 2.1 (``refiner_pretrained``).

A random VAE is never trained through: :class:`~spatialdreamer.train.Trainer` refuses a
pipeline whose VAE was randomly initialised here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, DDIMScheduler, EulerDiscreteScheduler
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from diffusers.utils import logging as diffusers_logging

from spatialdreamer.models.autoencoder import SpaceToDepthAutoencoder
from spatialdreamer.models.denoiser import SpatialDreamerDenoiser
from spatialdreamer.models.pipeline import SpatialDreamerPipeline
from spatialdreamer.models.refinernet import RefinerNet

__all__ = [
    "CONFIGS",
    "SD21_ID",
    "SVD_ID",
    "ModelConfig",
    "build_pipeline",
    "config_dict",
    "get_config",
    "load_pretrained_svd",
    "load_refinernet",
    "load_vae",
]

SVD_ID = "stabilityai/stable-video-diffusion-img2vid"
SD21_ID = "stabilityai/stable-diffusion-2-1"

_SVD_DOWN = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
_SVD_UP = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training knobs of one named configuration."""

    name: str
    block_out_channels: tuple[int, ...]
    num_attention_heads: tuple[int, ...]
    down_block_types: tuple[str, ...] = _SVD_DOWN
    up_block_types: tuple[str, ...] = _SVD_UP
    layers_per_block: int = 2
    cross_attention_dim: int = 1024
    addition_time_embed_dim: int = 256
    num_frames: int = 14
    latent_channels: int = 4
    vae: Literal["space_to_depth", "kl", "temporal"] = "temporal"
    vae_pretrained: str | None = None  # hub id or folder (its vae/ subfolder if it has one)
    vae_patch_size: int = 4  # space_to_depth only
    refiner_pretrained: str | None = None  # Stable Diffusion U-Net for RefinerNet (hub id or folder)
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    scheduler: Literal["ddim", "euler", "euler_edm"] = "euler"
    image_encoder: bool = False
    til_weight: float = 0.5
    til_frames: int = 2
    stereo_loss_weight: float = 0.1
    deviation_scale: float = 1000.0
    train_resolution: tuple[int, int] = (256, 384)


CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        block_out_channels=(32, 64),
        num_attention_heads=(2, 4),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        layers_per_block=1,
        cross_attention_dim=32,
        addition_time_embed_dim=8,
        num_frames=4,
        latent_channels=48,
        vae="space_to_depth",
        vae_patch_size=4,
        scheduler="ddim",
        train_resolution=(32, 48),
    ),
    "base": ModelConfig(
        name="base",
        block_out_channels=(192, 384, 768, 768),
        num_attention_heads=(3, 6, 12, 12),
        num_frames=8,
        vae_pretrained=SVD_ID,
        scheduler="euler",
        train_resolution=(256, 384),
    ),
    "full": ModelConfig(
        name="full",
        block_out_channels=(320, 640, 1280, 1280),
        num_attention_heads=(5, 10, 20, 20),
        num_frames=14,
        refiner_pretrained=SD21_ID,
        scheduler="euler_edm",
        image_encoder=True,
        train_resolution=(576, 1024),
    ),
}


def get_config(name: str | ModelConfig, **overrides) -> ModelConfig:
    """The named config (``tiny``, ``base``, ``full``) with field ``overrides`` applied."""
    if isinstance(name, ModelConfig):
        return replace(name, **overrides)
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


def _make_scheduler(kind: str):
    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
    )
    if kind == "ddim":
        return DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
        )
    if kind == "euler":
        return EulerDiscreteScheduler(**common, timestep_spacing="trailing")
    if kind == "euler_edm":  # Stable Video Diffusion's scheduler
        return EulerDiscreteScheduler(
            **common,
            interpolation_type="linear",
            use_karras_sigmas=True,
            sigma_min=0.002,
            sigma_max=700.0,
            timestep_spacing="leading",
            timestep_type="continuous",
            steps_offset=1,
        )
    raise ValueError(f"unknown scheduler kind {kind!r}; choose 'ddim', 'euler' or 'euler_edm'")


def _denoiser_kwargs(cfg: ModelConfig) -> dict:
    return dict(
        in_channels=2 * cfg.latent_channels + 1,
        out_channels=cfg.latent_channels,
        latent_channels=cfg.latent_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        block_out_channels=cfg.block_out_channels,
        addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        num_attention_heads=cfg.num_attention_heads,
        num_frames=cfg.num_frames,
        deviation_scale=cfg.deviation_scale,
    )


_VAE_CLASSES = {
    cls.__name__: cls for cls in (AutoencoderKL, AutoencoderKLTemporalDecoder, SpaceToDepthAutoencoder)
}


def load_vae(path: str, torch_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A pretrained VAE (its class read from its config) from a hub id or a local folder, taken
    from the ``vae/`` subfolder when there is one; its own ``scaling_factor`` is kept."""
    path = os.path.expanduser(str(path))
    if _looks_local(path) and not os.path.isdir(path):
        raise _missing(path, "the VAE (no such folder)")
    error: Exception | None = None
    subfolders = (
        ["vae", None] if not _looks_local(path) or os.path.isdir(os.path.join(path, "vae")) else [None]
    )
    for subfolder in subfolders:
        try:
            config = AutoencoderKL.load_config(path, subfolder=subfolder)
            cls = _VAE_CLASSES.get(config.get("_class_name"))
            if cls is None:
                raise ValueError(f"{config.get('_class_name')!r} is not a supported VAE class")
            load = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
            return cls.from_pretrained(path, subfolder=subfolder, **load)
        except (OSError, ValueError) as err:
            error = err
    raise _missing(path, "the VAE", error)


def _make_vae(cfg: ModelConfig, pretrained: str | None = None):
    if cfg.vae == "space_to_depth":
        vae = SpaceToDepthAutoencoder(patch_size=cfg.vae_patch_size)
        if vae.latent_channels != cfg.latent_channels:
            raise ValueError(
                f"config {cfg.name!r}: space_to_depth with patch {cfg.vae_patch_size} gives "
                f"{vae.latent_channels} latent channels, not latent_channels={cfg.latent_channels}"
            )
        return vae
    if pretrained:
        vae = load_vae(pretrained)
        if vae.config.latent_channels != cfg.latent_channels:
            raise ValueError(
                f"the VAE from {pretrained!r} has {vae.config.latent_channels} latent channels; "
                f"config {cfg.name!r} expects {cfg.latent_channels}"
            )
        return vae
    if cfg.vae == "temporal":
        vae = AutoencoderKLTemporalDecoder(latent_channels=cfg.latent_channels)
        vae.random_init = True
        return vae
    n = len(cfg.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups,
    )
    vae.random_init = True  # usable for shape tests and inference demos, never for training
    return vae


def _make_image_encoder(cfg: ModelConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = CLIPVisionConfig(  # OpenCLIP ViT-H/14, SVD's image encoder
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        projection_dim=cfg.cross_attention_dim,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(vision)


def _looks_local(path: str) -> bool:
    return (
        path.startswith(("/", ".", "~"))
        or os.sep in path.strip("/").replace("/", "", 1)
        or path.count("/") != 1
    )


def _missing(path: str, what: str, err: Exception | None = None) -> FileNotFoundError:
    detail = f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})" if err else ""
    return FileNotFoundError(
        f"could not load {what} from {path!r}{detail}. Pass a Hugging Face id such as "
        "'stabilityai/stable-video-diffusion-img2vid' (needs network or a filled HF cache) or a local "
        "folder in diffusers layout with unet/, vae/, scheduler/ (and optionally image_encoder/), or a "
        "folder written by SpatialDreamerPipeline.save_pretrained."
    )


def load_pretrained_svd(
    pretrained: str,
    *,
    til_weight: float = 0.5,
    til_frames: int = 2,
    refiner_pretrained: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> SpatialDreamerPipeline:
    """Build a pipeline from Stable Video Diffusion weights (hub id or local diffusers folder).

    The denoiser gets SVD's U-Net: SVD's 8 input channels (noisy ⊕ conditioning latent) map to our
    noisy ⊕ rendered slots and the new mask channel is zero-initialised; the deviation embedding
    starts at zero output. RefinerNet copies SVD's spatial weights, or loads a Stable Diffusion
    U-Net (``refiner_pretrained``, subfolder ``unet``) of the same layout.
    """
    pretrained = os.path.expanduser(str(pretrained))
    if _looks_local(pretrained) and not os.path.isdir(pretrained):
        raise _missing(pretrained, "Stable Video Diffusion weights (no such folder)")
    load = dict(torch_dtype=torch_dtype) if torch_dtype is not None else {}
    try:
        svd_unet = UNetSpatioTemporalConditionModel.from_pretrained(pretrained, subfolder="unet", **load)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(pretrained, subfolder="vae", **load)
        scheduler = EulerDiscreteScheduler.from_pretrained(pretrained, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise _missing(pretrained, "Stable Video Diffusion weights", err) from err
    image_encoder = None
    if not _looks_local(pretrained) or os.path.isdir(os.path.join(pretrained, "image_encoder")):
        from transformers import CLIPVisionModelWithProjection

        try:
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                pretrained, subfolder="image_encoder", **({"dtype": torch_dtype} if torch_dtype else {})
            )
        except OSError:
            image_encoder = None

    cfg = dict(svd_unet.config)
    latent = int(cfg["out_channels"])
    keep = {
        k: cfg[k]
        for k in (
            "sample_size",
            "out_channels",
            "down_block_types",
            "up_block_types",
            "block_out_channels",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "layers_per_block",
            "cross_attention_dim",
            "transformer_layers_per_block",
            "num_attention_heads",
            "num_frames",
        )
    }
    denoiser = SpatialDreamerDenoiser(**keep, in_channels=2 * latent + 1, latent_channels=latent)
    state = svd_unet.state_dict()
    conv = state["conv_in.weight"]
    new_conv = torch.zeros_like(denoiser.conv_in.weight, dtype=conv.dtype)
    n = min(conv.shape[1], new_conv.shape[1])
    new_conv[:, :n] = conv[:, :n]
    state["conv_in.weight"] = new_conv
    result = denoiser.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.startswith("deviation_")]
    if unexpected or missing:
        raise ValueError(
            f"SVD U-Net does not fit the denoiser: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if torch_dtype is not None:
        denoiser.to(dtype=torch_dtype)
    del svd_unet, state

    if refiner_pretrained is None:
        refinernet = RefinerNet.from_denoiser(denoiser, til_weight=til_weight, til_frames=til_frames)
    else:
        refinernet = load_refinernet(refiner_pretrained, til_weight, til_frames, torch_dtype)
    return SpatialDreamerPipeline(
        vae=vae, unet=denoiser, refinernet=refinernet, scheduler=scheduler, image_encoder=image_encoder
    )


def load_refinernet(
    path: str, til_weight: float, til_frames: int, torch_dtype: torch.dtype | None = None
) -> RefinerNet:
    """RefinerNet from a Stable Diffusion (2.1) U-Net: a hub id or folder with ``unet/``, or the
    U-Net folder itself."""
    path = os.path.expanduser(str(path))
    if _looks_local(path) and not os.path.isdir(path):
        raise _missing(path, "the Stable Diffusion U-Net for RefinerNet (no such folder)")
    subfolder = "unet" if not _looks_local(path) or os.path.isdir(os.path.join(path, "unet")) else None
    load = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "UNet2DConditionModel config loaded into RefinerNet"
    try:
        refinernet = RefinerNet.from_pretrained(path, subfolder=subfolder, **load)
    except (OSError, ValueError) as err:
        raise _missing(path, "the Stable Diffusion U-Net for RefinerNet", err) from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    refinernet.set_til(til_weight, til_frames)
    return refinernet


def _index_class(index: str) -> str | None:
    with open(index) as fh:
        return json.load(fh).get("_class_name")


def build_pipeline(
    config: str | ModelConfig = "tiny",
    *,
    pretrained: str | None = None,
    refiner_pretrained: str | None = None,
    vae_pretrained: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> SpatialDreamerPipeline:
    """A :class:`SpatialDreamerPipeline` for a named config.

    Args:
        config: ``"tiny"``, ``"base"``, ``"full"`` or a :class:`ModelConfig`.
        pretrained: ``None`` → random initialisation (seeded by ``seed``); a folder written by
            ``SpatialDreamerPipeline.save_pretrained`` → loaded as is; otherwise an SVD hub id or
            local folder → :func:`load_pretrained_svd` (the config then supplies TIL settings).
        refiner_pretrained: Stable Diffusion U-Net weights for RefinerNet (default: the config's
            ``refiner_pretrained``; ``None`` there too → copied from the denoiser or random).
        vae_pretrained: VAE weights for a randomly initialised pipeline (default: the config's
            ``vae_pretrained``). Without any, a ``kl``/``temporal`` VAE is random: fine for shape
            tests, refused by training.
        torch_dtype: e.g. ``torch.float16`` / ``torch.bfloat16`` for GPU inference.
        device: where to put the pipeline.

    Example:
        >>> pipe = build_pipeline("tiny")
        >>> type(pipe).__name__, pipe.unet.config.in_channels, type(pipe.vae).__name__
        ('SpatialDreamerPipeline', 97, 'SpaceToDepthAutoencoder')
    """
    cfg = get_config(config)
    refiner_pretrained = refiner_pretrained or cfg.refiner_pretrained
    if pretrained is not None:
        path = os.path.expanduser(str(pretrained))
        index = os.path.join(path, "model_index.json")
        if os.path.isfile(index) and _index_class(index) == SpatialDreamerPipeline.__name__:
            pipe = SpatialDreamerPipeline.from_pretrained(
                path, **({"torch_dtype": torch_dtype} if torch_dtype else {})
            )
        else:
            pipe = load_pretrained_svd(
                path,
                til_weight=cfg.til_weight,
                til_frames=cfg.til_frames,
                refiner_pretrained=refiner_pretrained,
                torch_dtype=torch_dtype,
            )
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            denoiser = SpatialDreamerDenoiser(**_denoiser_kwargs(cfg))
            if refiner_pretrained:
                refinernet = load_refinernet(refiner_pretrained, cfg.til_weight, cfg.til_frames)
            else:
                refinernet = RefinerNet.from_denoiser(
                    denoiser, til_weight=cfg.til_weight, til_frames=cfg.til_frames, copy_weights=False
                )
            vae = _make_vae(cfg, vae_pretrained or cfg.vae_pretrained)
            image_encoder = _make_image_encoder(cfg) if cfg.image_encoder else None
        for model in (denoiser, refinernet, vae, image_encoder):
            if model is not None:
                model.eval()  # like from_pretrained; training code calls .train()
        pipe = SpatialDreamerPipeline(
            vae=vae,
            unet=denoiser,
            refinernet=refinernet,
            scheduler=_make_scheduler(cfg.scheduler),
            image_encoder=image_encoder,
        )
        if torch_dtype is not None:
            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # silence "modules to keep in float32: []" notes
            try:
                pipe.to(dtype=torch_dtype)
            finally:
                diffusers_logging.set_verbosity(verbosity)
    if device is not None:
        pipe.to(device)
    return pipe


def config_dict(config: str | ModelConfig) -> dict:
    """A JSON-friendly view of a config (for logging and the CLI)."""
    return asdict(get_config(config))
