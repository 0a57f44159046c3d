"""The latent space training runs in, the frames → video stages, and EMA weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage import data as skdata
from torch.utils.data import default_collate

from spatialdreamer.data.dataset import StereoClipDataset
from spatialdreamer.metrics import psnr
from spatialdreamer.models import SpatialDreamerPipeline, build_pipeline
from spatialdreamer.models.autoencoder import SpaceToDepthAutoencoder, calibrate_latent_scale
from spatialdreamer.models.conditioning import decode_latents, encode_frames
from spatialdreamer.models.configs import get_config, load_vae
from spatialdreamer.train import STATE_DIR, TrainConfig, Trainer, run_worker
from spatialdreamer.train.checkpoint import export_pipeline

# the tiny layout with a small randomly initialised AutoencoderKL instead of its lossless one
KL_VAE = dict(
    vae="kl",
    latent_channels=4,
    vae_block_out_channels=(16, 32),
    vae_norm_num_groups=8,
    vae_layers_per_block=1,
)
TINY = dict(model="tiny", learning_rate=1e-3, weight_decay=0.0, data_workers=0, batch_size=2, steps=2)


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1).float() / 255.0
    return image[None]


def test_tiny_latent_space_round_trips_a_natural_image_and_calibrates_to_unit_std(astronaut):
    vae = build_pipeline("tiny").vae
    shift, scale = calibrate_latent_scale(vae, astronaut)
    z = encode_frames(vae, astronaut)
    assert vae.config.calibrated and z.std().item() == pytest.approx(1.0, abs=1e-3)
    assert abs(z.mean().item()) < 1e-3 and z.shape == (1, 48, 128, 128)
    back = decode_latents(vae, z)
    assert psnr(back, astronaut, data_range=1.0) >= 30.0
    assert (back - astronaut).abs().max().item() < 1e-4  # lossless, up to float rounding


def test_a_random_frozen_vae_is_refused_for_training():
    cfg = get_config("tiny", **KL_VAE)
    pipe = build_pipeline(cfg)
    with pytest.raises(ValueError, match="randomly initialised .* vae_pretrained"):
        Trainer(TrainConfig.from_dict(TINY), pipeline=pipe)
    with pytest.raises(ValueError, match="not calibrated"):  # the lossless one needs the corpus first
        Trainer(TrainConfig.from_dict(TINY))


def test_a_pretrained_vae_loads_from_a_local_folder_with_its_own_scaling_factor(tmp_path):
    cfg = get_config("tiny", **KL_VAE)
    vae = build_pipeline(cfg).vae
    vae.register_to_config(scaling_factor=0.13025)
    vae.save_pretrained(tmp_path / "weights" / "vae")
    loaded = load_vae(str(tmp_path / "weights"))
    assert type(loaded).__name__ == "AutoencoderKL" and loaded.config.scaling_factor == 0.13025
    pipe = build_pipeline(cfg, vae_pretrained=str(tmp_path / "weights" / "vae"))
    assert not getattr(pipe.vae, "random_init", False)
    with pytest.raises(FileNotFoundError, match="could not load the VAE"):
        load_vae(str(tmp_path / "missing"))


def test_frames_stage_trains_single_frames_with_temporal_layers_frozen(corpus):
    cfg = TrainConfig.from_dict(TINY | {"stage": "frames"})
    assert cfg.frames == 1
    ds = StereoClipDataset(corpus, cfg.frames, cfg.size)
    batch = default_collate([ds[0], ds[1]])
    trainer = Trainer(cfg, calibration_frames=batch["target"].flatten(0, 1))
    assert not any("temporal" in n or "time_mixer" in n for n in trainer.param_names)
    frozen = {n: p.detach().clone() for n, p in trainer.pipe.unet.named_parameters() if not p.requires_grad}
    assert any("temporal_res_block" in n for n in frozen)
    trainer.train_step(batch)
    assert all(torch.equal(p, dict(trainer.pipe.unet.named_parameters())[n]) for n, p in frozen.items())
    with pytest.raises(ValueError, match="single frames"):
        TrainConfig.from_dict(TINY | {"stage": "frames", "num_frames": 4})


def test_video_stage_starts_from_the_frames_stage_ema_weights_and_export_uses_ema(corpus, tmp_path):
    saved = {}

    def keep(metrics, folder):
        if folder is not None:
            import shutil

            saved["frames"] = shutil.copytree(folder, tmp_path / "frames_ckpt", dirs_exist_ok=True)

    frames_cfg = TrainConfig.from_dict(TINY | {"stage": "frames", "ema_decay": 0.999})
    run_worker(frames_cfg, corpus, report=keep)
    ckpt = saved["frames"]
    ema = load_file(str(ckpt / STATE_DIR / "ema.safetensors"))
    raw = load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
    key = "conv_in.weight"
    assert not torch.equal(ema[f"unet.{key}"], raw[key])  # the average lags the raw weights

    exported = export_pipeline(str(ckpt), str(tmp_path / "pipeline"))
    pipe = SpatialDreamerPipeline.from_pretrained(exported)
    assert torch.equal(pipe.unet.state_dict()[key], ema[f"unet.{key}"])
    assert pipe.vae.config.calibrated and not (tmp_path / "pipeline" / STATE_DIR).exists()

    video_cfg = TrainConfig.from_dict(TINY | {"stage": "video", "init_from": str(ckpt)})
    trainer = Trainer(video_cfg)  # the latent scale comes with the frames checkpoint
    assert torch.equal(trainer.pipe.unet.state_dict()[key], ema[f"unet.{key}"])
    assert any("temporal_res_block" in n for n in trainer.param_names)
    assert trainer.pipe.vae.config.scaling_factor == pipe.vae.config.scaling_factor


def test_ema_can_be_switched_off_and_settings_are_checked():
    assert (
        Trainer(
            TrainConfig.from_dict(TINY | {"ema_decay": 0}), calibration_frames=torch.rand(2, 3, 32, 48)
        ).ema
        is None
    )
    for bad, match in (
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"stage": "both"}, "stage"),
        ({"parallel": "x"}, "parallel"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(TINY | bad)


def test_model_configs_name_their_pretrained_weights():
    assert get_config("base").vae_pretrained and get_config("full").refiner_pretrained
    tiny = get_config("tiny")
    assert tiny.vae == "space_to_depth" and dataclasses.replace(tiny).latent_channels == 48
    assert isinstance(build_pipeline("tiny").vae, SpaceToDepthAutoencoder)


def test_training_and_sampling_give_the_models_the_same_reference_and_deviation_strength():
    """One warp-back sample pushed through the training loss and through the pipeline: RefinerNet
    encodes the same reference latents and the denoiser gets the same deviation strength."""
    from spatialdreamer.dvg import warp_back_pair
    from spatialdreamer.models import training_losses
    from spatialdreamer.models.reference import reference_view
    from spatialdreamer.synth import make_scene

    pipe = build_pipeline("tiny", seed=2)
    pipe.set_progress_bar_config(disable=True)
    scene = make_scene(4, height=32, width=48, frames=4)
    calibrate_latent_scale(pipe.vae, scene.left)
    pair = warp_back_pair(scene.left, scene.disparity)
    rendered = pair.back + 0.5 * pair.back_holes  # garbage in the holes: both paths must ignore it
    reference = reference_view(pair.warped, pair.warped_holes)
    seen: dict[str, list[torch.Tensor]] = {"strength": [], "reference": []}
    embed = pipe.unet.embed_deviation
    pipe.unet.embed_deviation = lambda s, b: seen["strength"].append(s.detach().clone()) or embed(s, b)
    hook = pipe.refinernet.register_forward_pre_hook(
        lambda m, args: seen["reference"].append(args[0].clone())
    )
    batch = {"target": pair.target, "rendered": rendered, "mask": pair.back_holes, "reference": reference}
    with torch.no_grad():
        training_losses(
            {k: v[None] for k, v in batch.items()},
            unet=pipe.unet,
            refinernet=pipe.refinernet,
            vae=pipe.vae,
            scheduler=pipe.scheduler,
            generator=torch.Generator().manual_seed(0),
        )
        pipe(rendered, pair.back_holes, reference, num_inference_steps=1, window_size=4)
    hook.remove()
    assert len(seen["strength"]) == 2 and len(seen["reference"]) == 2
    torch.testing.assert_close(seen["strength"][0], seen["strength"][1])
    torch.testing.assert_close(seen["reference"][0], seen["reference"][1])
    assert seen["strength"][0].item() > 0


def test_hole_loss_weight_is_a_weighted_mean_over_hole_cells():
    from spatialdreamer.models import training_losses

    pipe = build_pipeline("tiny", seed=0)
    calibrate_latent_scale(pipe.vae, torch.rand(2, 3, 32, 48))
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 2, 3, 32, 48, generator=g) for k in ("target", "rendered", "reference")}
    batch["mask"] = torch.zeros(1, 2, 1, 32, 48, dtype=torch.bool)
    kw = dict(unet=pipe.unet, refinernet=pipe.refinernet, vae=pipe.vae, scheduler=pipe.scheduler)

    def loss(weight: float, mask: torch.Tensor) -> float:
        with torch.no_grad():
            out = training_losses(
                batch | {"mask": mask},
                generator=torch.Generator().manual_seed(1),
                hole_loss_weight=weight,
                **kw,
            )
        return float(out["diffusion_loss"])

    no_holes = batch["mask"]
    assert loss(5.0, no_holes) == pytest.approx(loss(1.0, no_holes), rel=1e-6)  # nothing to weight
    holes = no_holes.clone()
    holes[..., :, :12] = True
    assert loss(5.0, holes) != pytest.approx(loss(1.0, holes), rel=1e-4)
    with pytest.raises(ValueError, match="hole_loss_weight"):
        loss(0.5, holes)
    with pytest.raises(ValueError, match="hole_loss_weight"):
        TrainConfig.from_dict(TINY | {"hole_loss_weight": 0})
