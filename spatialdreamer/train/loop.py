"""The training step and the per-worker loop, as plain torch (a Ray job or a script drives them).

Distributed training is data parallel: when ``torch.distributed`` is initialised with more than
one process (Ray's ``TorchTrainer`` does that), the loss module — denoiser, RefinerNet and the
frozen VAE behind :func:`training_losses` — is wrapped in one ``DistributedDataParallel``.
Wrapping the U-Nets separately would not work: RefinerNet's output is unused (its features
reach the loss through the attention bank), so DDP would wait forever for its tail's gradients;
seen from the loss, those parameters are simply unused (``find_unused_parameters=True``).
Gradients are views into DDP's all-reduce buckets (``gradient_as_bucket_view``: no second
gradient-sized copy). With ``parallel: fsdp`` the two U-Nets are sharded instead
(:func:`spatialdreamer.train.parallel.shard_loss_module`): weights, gradients, AdamW moments and
EMA weights are split over the ranks, and a checkpoint is gathered to rank 0, which writes the
same folder as unsharded training (every rank takes part in :meth:`Trainer.save_checkpoint`).

Everything random is derived from ``(seed, step, rank)``, so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have.

Training follows the paper in two stages (``TrainConfig.stage``): ``frames`` trains on single
frames with the denoiser's temporal layers frozen, then ``video`` trains every layer on
windows, starting from the frames stage's (EMA) weights (``init_from``). An exponential moving
average of the trained weights (diffusers ``EMAModel``) is kept, checkpointed, resumed and
exported. The latent space must reconstruct: a randomly initialised VAE is refused, and the
lossless space-to-depth autoencoder of the small configs is calibrated on the corpus first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Sampler

from spatialdreamer.data.dataset import SAMPLE_KEYS, StereoClipDataset
from spatialdreamer.models.autoencoder import SpaceToDepthAutoencoder, calibrate_latent_scale
from spatialdreamer.models.configs import build_pipeline
from spatialdreamer.models.denoiser import SpatialDreamerDenoiser
from spatialdreamer.models.losses import training_losses
from spatialdreamer.models.pipeline import SpatialDreamerPipeline, encode_condition_embeddings
from spatialdreamer.models.refinernet import RefinerNet, is_temporal_parameter
from spatialdreamer.train.checkpoint import (
    STATE_DIR,
    load_ema_state,
    load_optimizer_state,
    load_unet_weights,
    restore_latent_scale,
    save_ema_state,
    save_optimizer_state,
)
from spatialdreamer.train.config import TrainConfig

__all__ = [
    "LossModule",
    "StepBatchSampler",
    "Trainer",
    "calibration_frames",
    "learning_rate_at",
    "make_loader",
    "run_worker",
]

log = logging.getLogger("spatialdreamer.train")

ReportFn = Callable[[dict, str | None], None]


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio``; stateless, so resuming
    needs no scheduler state."""
    base = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return base
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for steps ``start_step … total_steps − 1`` of one rank.

    Per epoch the indices are shuffled with ``seed + epoch`` and dealt out like
    ``DistributedSampler`` (padded by wrapping so every rank gets the same count); a rank's
    samples form one endless stream over epochs, and step ``s`` takes items
    ``[s·B, (s+1)·B)`` of it. Any step's batch is computable directly, so a resumed run reads
    exactly the batches the uninterrupted run would have, without replaying the others.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
        total_steps: int,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps
        self.per_rank = math.ceil(num_samples / world_size)
        self._epoch: tuple[int, list[int]] | None = None

    def _shard(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            total = self.per_rank * self.world_size
            order = (order * math.ceil(total / self.n))[:total]
            self._epoch = (epoch, order[self.rank : total : self.world_size])
        return self._epoch[1]

    def batch_for_step(self, step: int) -> list[int]:
        first = step * self.batch_size
        return [
            self._shard(i // self.per_rank)[i % self.per_rank] for i in range(first, first + self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def make_loader(
    dataset: StereoClipDataset,
    config: TrainConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding one batch per remaining step (worker processes decode shards)."""
    sampler = StepBatchSampler(
        len(dataset),
        config.batch_size,
        rank=rank,
        world_size=world_size,
        seed=config.seed,
        start_step=start_step,
        total_steps=config.steps,
    )
    workers = config.data_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )


class LossModule(torch.nn.Module):
    """Denoiser + RefinerNet + frozen VAE behind one ``forward`` returning the loss dict (the
    unit DDP wraps)."""

    def __init__(
        self, pipe: SpatialDreamerPipeline, stereo_loss_weight: float, hole_loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.unet, self.refinernet, self.vae = pipe.unet, pipe.refinernet, pipe.vae
        self.image_encoder = pipe.image_encoder
        self.scheduler = pipe.scheduler
        self.stereo_loss_weight = stereo_loss_weight
        self.hole_loss_weight = hole_loss_weight

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        context = encode_condition_embeddings(
            self.image_encoder, batch["reference"], self.unet.config.cross_attention_dim
        )
        return training_losses(
            batch,
            unet=self.unet,
            refinernet=self.refinernet,
            vae=self.vae,
            scheduler=self.scheduler,
            stereo_loss_weight=self.stereo_loss_weight,
            hole_loss_weight=self.hole_loss_weight,
            encoder_hidden_states=context,
            generator=generator,
        )


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "no":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]


class Trainer:
    """One worker's model, optimizer, EMA and step counter.

    Trainable: the denoiser and RefinerNet (fp32 master weights, AdamW), except the denoiser's
    temporal layers in the ``frames`` stage. Frozen: the VAE and the image encoder. On CUDA the
    forward runs under autocast (bf16, or fp16 with a grad scaler; FSDP computes in bf16 and
    refuses fp16).

    With ``torch.distributed`` initialised over more than one rank the loss module is wrapped
    (DDP) or sharded (FSDP, ``parallel: fsdp``) before the optimizer and the EMA are built, so
    that both hold the sharded parameters.

    ``calibration_frames`` (``[N, 3, H, W]`` in [0, 1], a sample of the corpus, or a function
    that reads one) calibrates an uncalibrated space-to-depth latent space; :func:`run_worker`
    passes them.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        pipeline: SpatialDreamerPipeline | None = None,
        calibration_frames: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.device = torch.device(device)
        pipe = pipeline or build_pipeline(
            config.model,
            pretrained=config.pretrained,
            refiner_pretrained=config.refiner_pretrained,
            vae_pretrained=config.vae_pretrained,
            seed=config.seed,
        )
        if config.init_from:  # weights and latent scale of an earlier stage
            load_unet_weights(pipe, config.init_from)
        _check_latent_space(pipe.vae, calibration_frames)
        pipe.to(self.device)
        for frozen in (pipe.vae, pipe.image_encoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        pipe.unet.train()
        pipe.refinernet.train()
        if config.stage == "frames":  # single frames: the temporal layers have nothing to learn
            for name, param in pipe.unet.named_parameters():
                if is_temporal_parameter(name):
                    param.requires_grad_(False)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.refinernet.enable_gradient_checkpointing()
        self.pipe = pipe
        self.module = LossModule(pipe, config.lambda_d, config.hole_loss_weight)
        self.amp_dtype = _amp_dtype(config.mixed_precision, self.device)
        self.model: torch.nn.Module = self.module
        self.sharded = False  # FSDP: parameters, moments and EMA weights are DTensor shards
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.model = _wrap_distributed(self.module, config, self.device, self.amp_dtype)
            self.sharded = config.parallel == "fsdp"
        # after sharding: FSDP replaces every U-Net parameter by a DTensor
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=learning_rate_at(config, 0),
            betas=config.adam_betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.ema = (
            EMAModel(self.params, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
            if config.ema_decay > 0
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.skipped_steps = 0

    def to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        return {k: batch[k].to(self.device, non_blocking=True) for k in SAMPLE_KEYS}

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimizer step on ``batch`` (collated samples); returns floats for logging.

        A step whose gradient norm is not finite (identical on all ranks after the all-reduce)
        is skipped on every rank rather than corrupting the weights.
        """
        lr = learning_rate_at(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(_step_seed(self.config.seed, self.step, self.rank))
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            losses = self.model(self.to_device(batch), generator)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.max_grad_norm or float("inf")
        if self.sharded:  # from the local shards: DTensor's per-gradient dispatch costs seconds
            from spatialdreamer.train.parallel import clip_grad_norm_

            grad_norm = clip_grad_norm_(self.params, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if torch.isfinite(grad_norm):
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.step(self.params)
        else:
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped", self.step)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pipe.refinernet.bank.clear()  # kept through backward for checkpoint recomputation
        self.step += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        return out | {"lr": lr, "grad_norm": float(grad_norm)}

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, folder: str, metrics: dict | None = None) -> str | None:
        """Write a checkpoint folder (pipeline + optimizer and EMA state) and return it.

        Unsharded (one process or DDP): call on one rank only. Sharded (FSDP): a collective —
        call on every rank at the same step; the full weights, optimizer moments and EMA
        weights are gathered to rank 0, which writes ``folder`` (the same files as unsharded
        training); the other ranks write nothing and return ``None``.
        """
        if self.sharded:
            return self._save_sharded(folder, metrics)
        self.pipe.save_pretrained(folder, safe_serialization=True)
        state_dir = os.path.join(folder, STATE_DIR)
        save_optimizer_state(state_dir, self.optimizer, self.param_names, self._training_state(metrics))
        if self.ema is not None:
            save_ema_state(state_dir, self.ema, self.param_names)
        return folder

    def _training_state(self, metrics: dict | None) -> dict:
        return {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "world_size": self.world_size,
            "config": self.config.to_dict(),
            "grad_scaler": {k: float(v) for k, v in self.scaler.state_dict().items()},
            "metrics": metrics or {},
        }

    def _save_sharded(self, folder: str, metrics: dict | None) -> str | None:
        from spatialdreamer.train.parallel import (
            full_state_dict,
            gather_full,
            gather_optimizer_state,
            unsharded_copy,
        )

        weights = {name: full_state_dict(getattr(self.pipe, name)) for name in ("unet", "refinernet")}
        optimizer = gather_optimizer_state(self.optimizer)
        shadow = gather_full(self.ema.shadow_params) if self.ema is not None else None
        if dist.get_rank() != 0:
            return None
        pipe = SpatialDreamerPipeline(
            vae=self.pipe.vae,
            unet=unsharded_copy(self.pipe.unet, weights["unet"]),
            refinernet=unsharded_copy(self.pipe.refinernet, weights["refinernet"]),
            scheduler=self.pipe.scheduler,
            image_encoder=self.pipe.image_encoder,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        state_dir = os.path.join(folder, STATE_DIR)
        save_optimizer_state(state_dir, optimizer, self.param_names, self._training_state(metrics))
        if self.ema is not None:
            save_ema_state(state_dir, self.ema, self.param_names, shadow=shadow)
        return folder

    def load_checkpoint(self, folder: str) -> dict:
        """Restore weights, optimizer, EMA, scaler and step from ``folder``; returns its state.

        Sharded (FSDP): call on every rank; each reads the folder and keeps its own shards
        (the checkpoint may come from unsharded training or from another number of ranks)."""
        for name, cls in (("unet", SpatialDreamerDenoiser), ("refinernet", RefinerNet)):
            path = os.path.join(folder, name)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"checkpoint {folder} has no {name}/ folder")
            loaded = cls.from_pretrained(path).state_dict()
            if self.sharded:
                from spatialdreamer.train.parallel import load_full_state_dict

                load_full_state_dict(getattr(self.pipe, name), loaded)
            else:
                getattr(self.pipe, name).load_state_dict(loaded, strict=True)
        restore_latent_scale(self.pipe.vae, folder)
        state = load_optimizer_state(os.path.join(folder, STATE_DIR), self.optimizer, self.param_names)
        if self.ema is not None:
            load_ema_state(os.path.join(folder, STATE_DIR), self.ema, self.param_names)
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            scaler = state["grad_scaler"]
            scaler["_growth_tracker"] = int(scaler.get("_growth_tracker", 0))
            self.scaler.load_state_dict(scaler)
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        return state


def _check_latent_space(
    vae: torch.nn.Module, calibration: torch.Tensor | Callable[[], torch.Tensor] | None
) -> None:
    """Refuse a random VAE; calibrate a lossless one that has not been calibrated yet."""
    if getattr(vae, "random_init", False):
        raise ValueError(
            f"the model's VAE ({type(vae).__name__}) is randomly initialised and would stay frozen: "
            "nothing can be learned through it. Set train.vae_pretrained (or model config "
            "vae_pretrained) to a pretrained VAE, a Hugging Face id or local folder, e.g. "
            "stabilityai/stable-video-diffusion-img2vid or stabilityai/sd-vae-ft-mse"
        )
    if isinstance(vae, SpaceToDepthAutoencoder) and not vae.config.calibrated:
        if calibration is None:
            raise ValueError(
                "the space-to-depth latent space is not calibrated yet: pass calibration_frames "
                "(a sample of corpus frames) to Trainer, or start from a trained pipeline"
            )
        frames = calibration() if callable(calibration) else calibration
        shift, scale = calibrate_latent_scale(vae, frames)
        log.info("latent space calibrated on %d frames: shift %.4f, scale %.4f", len(frames), shift, scale)


def calibration_frames(dataset: StereoClipDataset, count: int = 32) -> torch.Tensor:
    """Target frames of up to ``count`` windows spread evenly over ``dataset`` (the same on every
    rank and on every resume), ``[N, 3, H, W]``."""
    picks = sorted(
        {round(i * (len(dataset) - 1) / max(1, count - 1)) for i in range(min(count, len(dataset)))}
    )
    return torch.cat([dataset[i]["target"] for i in picks])


def _wrap_distributed(
    module: torch.nn.Module, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None
) -> torch.nn.Module:
    if config.parallel == "fsdp":
        from spatialdreamer.train.parallel import shard_loss_module

        if amp_dtype == torch.float16:
            raise ValueError(
                "parallel: fsdp computes in bf16 and has no fp16 grad scaler; "
                "set mixed_precision to bf16, auto or no"
            )
        # the sharded U-Nets compute in the autocast dtype (bf16 on CUDA, fp32 on the CPU)
        return shard_loss_module(module, device=device, param_dtype=amp_dtype)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True, gradient_as_bucket_view=True
    )


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def run_worker(
    config: TrainConfig,
    corpus: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    resume_from: str | None = None,
    report: ReportFn | None = None,
    pipeline: SpatialDreamerPipeline | None = None,
) -> dict:
    """Train one worker from ``resume_from`` (or scratch) up to ``config.steps``.

    ``report(metrics, checkpoint_dir)`` is called on every rank at the same steps — every
    ``log_every`` steps (``checkpoint_dir`` None) and every ``checkpoint_every`` steps and at
    the end (rank 0 passes a folder it deletes after ``report`` returns, so ``report`` must copy
    or upload it). Returns the last metrics.
    """
    dataset = StereoClipDataset(
        corpus,
        config.frames,
        config.size,
        query=config.query,
        stride=config.frame_stride,
        cache_clips=config.cache_clips,
    )
    trainer = Trainer(
        config,
        device=device,
        rank=rank,
        world_size=world_size,
        pipeline=pipeline,
        calibration_frames=lambda: calibration_frames(dataset),
    )
    start = 0
    if resume_from:
        start = int(trainer.load_checkpoint(resume_from)["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", resume_from, start)
    if rank == 0:
        log.info(
            "%d samples from %d clips; steps %d -> %d", len(dataset), len(dataset.rows), start, config.steps
        )
    loader = make_loader(
        dataset,
        config,
        rank=rank,
        world_size=world_size,
        start_step=start,
        pin_memory=trainer.device.type == "cuda",
    )
    report = report or (lambda metrics, checkpoint_dir: None)
    metrics: dict = {"step": start, "start_step": start}
    window: list[dict[str, float]] = []
    began = time.perf_counter()
    for batch in loader:
        window.append(trainer.train_step(batch))
        step = trainer.step
        at_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
        if step % config.log_every == 0 or at_checkpoint:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            mean = _mean_over_ranks(mean, trainer.device)
            elapsed = time.perf_counter() - began
            metrics = mean | {
                "step": step,
                "start_step": start,
                "steps_per_second": (step - start) / elapsed if elapsed > 0 else 0.0,
                "samples_seen": step * config.batch_size * world_size,
                "skipped_steps": trainer.skipped_steps,
            }
            window = []
            if rank == 0:
                log.info(
                    "step %d/%d loss %.4f (diffusion %.4f, stereo %.4f) lr %.2e grad %.3f %.2f steps/s",
                    step,
                    config.steps,
                    metrics["loss"],
                    metrics["diffusion_loss"],
                    metrics["stereo_loss"],
                    metrics["lr"],
                    metrics["grad_norm"],
                    metrics["steps_per_second"],
                )
            if at_checkpoint:
                with tempfile.TemporaryDirectory(prefix="spatialdreamer-ckpt-") as tmp:
                    # sharded: every rank takes part in gathering the state; rank 0 writes it
                    gathers = rank == 0 or trainer.sharded
                    folder = trainer.save_checkpoint(tmp, metrics) if gathers else None
                    report(metrics, folder)  # None on ranks other than 0
            else:
                report(metrics, None)
    return metrics
