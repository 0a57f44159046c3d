"""Training step, gradients to both U-Nets, LR schedule, settings, checkpoints and exact resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.utils.data import default_collate

from spatialdreamer.data.dataset import StereoClipDataset
from spatialdreamer.models import SpatialDreamerPipeline
from spatialdreamer.train import STATE_DIR, TrainConfig, Trainer, learning_rate_at, run_worker
from spatialdreamer.train.checkpoint import load_optimizer_state

TINY = dict(model="tiny", learning_rate=1e-3, weight_decay=0.0, data_workers=0, batch_size=2, steps=4)


@pytest.fixture(scope="module")
def batch(corpus):
    ds = StereoClipDataset(corpus, num_frames=4, size=(32, 48))
    return default_collate([ds[0], ds[1]])


@pytest.fixture(scope="module")
def frames(batch):
    """Corpus frames that calibrate the tiny config's latent space."""
    return batch["target"].flatten(0, 1)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_steps_on_a_fixed_batch_reduce_the_loss(batch, frames):
    trainer = Trainer(TrainConfig.from_dict(TINY | {"steps": 10}), calibration_frames=frames)
    losses = []
    for _ in range(10):
        trainer.step = 0  # same noise and noise level each time: only the weights change
        losses.append(trainer.train_step(batch)["loss"])
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_a_step_updates_both_unets_and_leaves_the_vae_frozen(batch, frames):
    trainer = Trainer(TrainConfig.from_dict(TINY), calibration_frames=frames)
    before = {name: _state(getattr(trainer.pipe, name)) for name in ("unet", "refinernet", "vae")}
    metrics = trainer.train_step(batch)
    assert metrics["grad_norm"] > 0 and trainer.step == 1
    after = {name: _state(getattr(trainer.pipe, name)) for name in ("unet", "refinernet", "vae")}
    for name in ("unet", "refinernet"):
        changed = [k for k in before[name] if not torch.equal(before[name][k], after[name][k])]
        assert len(changed) > 0.5 * len(before[name]), f"{name}: only {len(changed)} tensors changed"
    assert not torch.equal(before["refinernet"]["conv_in.weight"], after["refinernet"]["conv_in.weight"])
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(before["refinernet"][key], after["refinernet"][key])
    assert all(torch.equal(before["vae"][k], after["vae"][k]) for k in before["vae"])
    assert {n.split(".")[0] for n in trainer.param_names} == {"unet", "refinernet"}


def test_learning_rate_warms_up_then_follows_the_schedule():
    cfg = TrainConfig.from_dict(TINY | {"steps": 110, "warmup_steps": 10, "lr_schedule": "cosine"})
    lrs = [learning_rate_at(cfg, s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)  # min_lr_ratio 0.1
    const = TrainConfig.from_dict(TINY)
    assert {learning_rate_at(const, s) for s in range(4)} == {1e-3}


def test_train_config_rejects_unknown_and_bad_settings():
    with pytest.raises(ValueError, match="unknown train settings: stepz"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        TrainConfig.from_dict({"model": "huge"})
    with pytest.raises(ValueError, match="steps"):
        TrainConfig.from_dict({"steps": 0})
    with pytest.raises(ValueError, match="resolution"):
        TrainConfig.from_dict({"resolution": [30, 48]})
    cfg = TrainConfig.from_dict({"model": "tiny"})
    assert (cfg.frames, cfg.size, cfg.lambda_d) == (4, (32, 48), 0.1)  # from the model config


def test_checkpoint_round_trip_restores_weights_optimizer_and_resumes_identically(corpus, frames, tmp_path):
    cfg = TrainConfig.from_dict(TINY | {"checkpoint_every": 2})
    saved = {}

    def keep(metrics, folder):
        if folder is not None:
            saved[metrics["step"]] = shutil.copytree(folder, tmp_path / f"step{metrics['step']}")

    straight = run_worker(cfg, corpus, report=keep)
    assert sorted(saved) == [2, 4] and straight["step"] == 4
    # the checkpoint is a pipeline folder that diffusers loads, with safetensors weights
    pipe = SpatialDreamerPipeline.from_pretrained(saved[4])
    assert (saved[4] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (saved[4] / STATE_DIR / "optimizer.safetensors").is_file()
    assert json.loads((saved[4] / STATE_DIR / "state.json").read_text())["step"] == 4

    # restore: identical weights and optimizer state
    restored = Trainer(cfg, calibration_frames=frames[:1])  # the checkpoint's latent scale wins
    restored.load_checkpoint(str(saved[2]))
    assert restored.pipe.vae.config.scaling_factor == mid_scale(saved[2])
    mid = SpatialDreamerPipeline.from_pretrained(saved[2])
    for name in ("unet", "refinernet"):
        a, b = getattr(mid, name).state_dict(), getattr(restored.pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    reference = Trainer(cfg, calibration_frames=frames)
    reference.load_checkpoint(str(saved[2]))
    opt_a, opt_b = restored.optimizer.state_dict(), reference.optimizer.state_dict()
    assert len(opt_a["state"]) > 0 and opt_a["state"].keys() == opt_b["state"].keys()
    for i, slots in opt_a["state"].items():
        assert all(torch.equal(slots[k], opt_b["state"][i][k]) for k in slots)
    assert restored.step == 2 and opt_a["param_groups"] == opt_b["param_groups"]
    ema_a, ema_b = restored.ema.state_dict(), reference.ema.state_dict()
    assert ema_a["optimization_step"] == 2
    assert all(torch.equal(x, y) for x, y in zip(ema_a["shadow_params"], ema_b["shadow_params"], strict=True))

    # resume from step 2 and finish: bit-identical to the uninterrupted run
    resumed = {}
    last = run_worker(
        cfg,
        corpus,
        resume_from=str(saved[2]),
        report=lambda m, f: resumed.update({m["step"]: shutil.copytree(f, tmp_path / "r") if f else None}),
    )
    assert last["start_step"] == 2 and last["step"] == 4 and last["loss"] == straight["loss"]
    again = SpatialDreamerPipeline.from_pretrained(resumed[4])
    for name in ("unet", "refinernet"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def mid_scale(folder) -> float:
    return json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]


def test_optimizer_state_refuses_a_model_with_other_parameters(corpus, frames, tmp_path):
    trainer = Trainer(TrainConfig.from_dict(TINY), calibration_frames=frames)
    trainer.save_checkpoint(str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="trains other parameters"):
        load_optimizer_state(str(tmp_path / "ck" / STATE_DIR), trainer.optimizer, trainer.param_names[::-1])
    with pytest.raises(FileNotFoundError, match="has no unet/ folder"):
        trainer.load_checkpoint(str(tmp_path))
    shutil.rmtree(tmp_path / "ck" / STATE_DIR)  # weights alone (an exported pipeline) cannot resume
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        trainer.load_checkpoint(str(tmp_path / "ck"))
