"""FSDP2 sharding of the loss module: two gloo ranks on CPU train exactly like one process, and
``Trainer``/``run_worker`` with ``parallel: fsdp`` checkpoint and resume exactly.

Two ranks each take their own batch for two optimizer steps under
:func:`~spatialdreamer.train.parallel.shard_loss_module` (``video`` stage: every layer trains,
gradient checkpointing on; ``frames`` stage: temporal layers frozen inside the sharded units); one
process then does the same steps on both batches at once (mean of the two ranks' losses). The
weights must agree to float precision. The optimizer is SGD on purpose: AdamW turns gradients
that are zero up to rounding (e.g. of a conv bias followed by a GroupNorm) into full ±lr steps,
so it cannot tell an FSDP error from summation-order noise; SGD keeps the comparison linear.
Gradients are clipped (below their norm): by ``torch.nn.utils.clip_grad_norm_`` in the single
process, by :func:`~spatialdreamer.train.parallel.clip_grad_norm_` (local shards) on the ranks.

The training loop's test runs :func:`~spatialdreamer.train.loop.run_worker` on two ranks for three
steps with a checkpoint at step 2, resumes a second run from that checkpoint, and requires the
resumed step 3 to equal the uninterrupted one bit for bit (weights, AdamW moments, EMA weights):
the checkpoint holds full tensors gathered from the shards and resuming splits them again.
"""

from __future__ import annotations

import shutil
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from spatialdreamer.models import SpatialDreamerPipeline
from spatialdreamer.models.configs import build_pipeline
from spatialdreamer.models.refinernet import is_temporal_parameter
from spatialdreamer.train import STATE_DIR, TrainConfig, Trainer, read_training_state, run_worker
from spatialdreamer.train.loop import LossModule

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)

WORLD, STEPS, LR = 2, 2, 0.5
MAX_NORM = 0.3  # below the gradient norms (~0.57): both steps clip
SHAPE = (1, 4, 3, 32, 48)  # one tiny-config window per rank


def _batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    target = torch.rand(SHAPE, generator=g)
    mask = torch.rand((*SHAPE[:2], 1, *SHAPE[3:]), generator=g) > 0.8
    return {
        "target": target,
        "rendered": target.masked_fill(mask, 0.0),
        "reference": torch.rand(SHAPE, generator=g),
        "mask": mask,
    }


def _loss_module(stage: str, checkpointing: bool) -> LossModule:
    pipe = build_pipeline("tiny", seed=0)
    pipe.vae.requires_grad_(False)
    pipe.unet.train()
    pipe.refinernet.train()
    if stage == "frames":
        for name, param in pipe.unet.named_parameters():
            if is_temporal_parameter(name):
                param.requires_grad_(False)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.refinernet.enable_gradient_checkpointing()
    return LossModule(pipe, stereo_loss_weight=0.1)


def _step(module, params, optimizer, losses, clip=torch.nn.utils.clip_grad_norm_) -> float:
    loss = sum(losses) / len(losses)
    loss.backward()
    norm = clip(params, MAX_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    module.refinernet.bank.clear()
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _worker(rank: int, out: str, stage: str) -> None:
    from spatialdreamer.train.parallel import (
        clip_grad_norm_,
        full_state_dict,
        load_full_state_dict,
        shard_loss_module,
    )

    module = shard_loss_module(_loss_module(stage, checkpointing=stage == "video"), device="cpu")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR)
    record = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(step * 7919 + rank)
        loss = module(_batch(step, rank), generator)["loss"]
        total = loss.detach().clone()
        dist.all_reduce(total)
        norm = _step(module, params, optimizer, [loss], clip=clip_grad_norm_)
        record.append((float(total) / WORLD, norm))
    state = full_state_dict(module)
    restored, uneven = None, None
    if stage == "frames":  # and back (once; gathers are slow on gloo): initial weights load
        load_full_state_dict(module, _loss_module(stage, checkpointing=False).state_dict())
        restored = full_state_dict(module)
        uneven = _gather_uneven_shards()
    if rank == 0:
        torch.save({"state": state, "restored": restored, "record": record, "uneven": uneven}, out)
    dist.barrier()


def _gather_uneven_shards() -> list[torch.Tensor] | None:
    """Rows 1, 3, 5 over 2 ranks (an empty shard, uneven ones) and an fp64 tensor, gathered in
    buckets of 40 bytes (a bucket boundary inside the list): to rank 0, then to every rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from spatialdreamer.train.parallel import gather_full

    mesh = init_device_mesh("cpu", (WORLD,))
    full = [torch.arange(n * 3, dtype=torch.float32).view(n, 3) + n for n in (1, 3, 5)]
    full.append(torch.linspace(0, 1, 7, dtype=torch.float64))
    sharded = [distribute_tensor(t, mesh, [Shard(0)]) for t in full]
    everywhere = gather_full(sharded, to_rank0=False, bucket_bytes=40)
    assert all(torch.equal(a, b) for a, b in zip(everywhere, full, strict=True))
    return gather_full(sharded, bucket_bytes=40)


def _rank_main(target, rank: int, init: str, err: str, args: tuple) -> None:
    """One forked rank: ``target(rank, *args)`` inside a gloo process group; a traceback goes
    to ``{err}.rank{rank}.err``."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
        target(rank, *args)
    except BaseException:
        with open(f"{err}.rank{rank}.err", "w") as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(target, args: tuple, err: str, init: str) -> None:
    """Run ``target(rank, *args)`` on :data:`WORLD` forked ranks (rendezvous ``init``); a rank's
    traceback lands in ``{err}.rank{r}.err`` and fails the test."""
    # fork: the children reuse this process's imports (spawn would re-import torch and diffusers)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(target, rank, init, err, args)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    logs = [Path(f"{err}.rank{rank}.err") for rank in range(WORLD)]
    errors = [log.read_text() for log in logs if log.exists()]
    assert not errors, "FSDP rank failed:\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def _run_ranks(tmp_path, stage: str) -> dict:
    out = str(tmp_path / f"fsdp-{stage}.pt")
    _spawn(_worker, (out, stage), out, f"file://{tmp_path / f'rendezvous-{stage}'}")
    return torch.load(out, weights_only=True)


def _single_process(stage: str) -> tuple[dict, list, dict]:
    module = _loss_module(stage, checkpointing=False)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR)
    record = []
    for step in range(STEPS):
        losses = [
            module(_batch(step, rank), torch.Generator().manual_seed(step * 7919 + rank))["loss"]
            for rank in range(WORLD)
        ]
        mean = float(sum(loss.detach() for loss in losses)) / WORLD
        record.append((mean, _step(module, params, optimizer, losses)))
    return module.state_dict(), record, initial


@pytest.mark.parametrize("stage", ["video", "frames"])
def test_fsdp_two_ranks_train_like_one_process_on_both_batches(tmp_path, stage):
    sharded = _run_ranks(tmp_path, stage)
    state, record, initial = _single_process(stage)

    for (loss, norm), (ref_loss, ref_norm) in zip(sharded["record"], record, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert norm == pytest.approx(ref_norm, rel=1e-4)
    got = sharded["state"]
    assert set(got) == set(state)
    moved = max(float((state[k] - initial[k]).abs().max()) for k in state)
    assert moved > 1e-3  # the steps did train
    for key, want in state.items():
        torch.testing.assert_close(got[key], want, rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    # RefinerNet's tail gets no gradient: untouched on the sharded ranks too
    if sharded["restored"] is not None:
        for key, want in initial.items():
            assert torch.equal(sharded["restored"][key], want), key
    if sharded["uneven"] is not None:
        shapes = [tuple(t.shape) for t in sharded["uneven"]]
        assert shapes == [(1, 3), (3, 3), (5, 3), (7,)] and sharded["uneven"][3].dtype == torch.float64
        assert torch.equal(sharded["uneven"][2], torch.arange(15.0).view(5, 3) + 5)
    tail = [k for k in state if k.startswith("refinernet.conv_out.")]
    assert tail and all(torch.equal(got[k], initial[k]) for k in tail)
    if stage == "frames":
        frozen = [k for k in state if k.startswith("unet.") and is_temporal_parameter(k[len("unet.") :])]
        assert frozen and all(torch.equal(got[k], initial[k]) for k in frozen)


# -- Trainer / run_worker with parallel: fsdp ------------------------------------------------

LOOP = dict(  # frames stage: fewer trainable tensors (each costs DTensor dispatch in AdamW and EMA)
    model="tiny",
    stage="frames",
    parallel="fsdp",
    steps=3,
    checkpoint_every=2,
    batch_size=1,
    learning_rate=1e-3,
    ema_decay=0.9,
    data_workers=0,
    log_every=1,
)


def _loop_worker(rank: int, root: str, corpus: str) -> None:
    """Rank ``rank`` of: 3 steps straight (checkpoints at 2 and 3), then 2 → 3 resumed; rank 0
    copies the checkpoints it is handed to ``root/{straight,resumed}-{step}``."""
    config = TrainConfig.from_dict(LOOP)

    def keep(run: str):
        def report(metrics: dict, folder: str | None) -> None:
            assert (folder is not None) == (rank == 0 and metrics["step"] in (2, 3)), (rank, metrics)
            if folder is not None:
                shutil.copytree(folder, f"{root}/{run}-{metrics['step']}")

        return report

    straight = run_worker(config, corpus, rank=rank, world_size=WORLD, report=keep("straight"))
    dist.barrier()
    resumed = run_worker(
        config,
        corpus,
        rank=rank,
        world_size=WORLD,
        resume_from=f"{root}/straight-2",
        report=keep("resumed"),
    )
    assert resumed["start_step"] == 2 and resumed["step"] == 3
    assert resumed["loss"] == straight["loss"], (resumed["loss"], straight["loss"])
    dist.barrier()


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    files = {
        "unet": folder / "unet" / "diffusion_pytorch_model.safetensors",
        "refinernet": folder / "refinernet" / "diffusion_pytorch_model.safetensors",
        "optimizer": folder / STATE_DIR / "optimizer.safetensors",
        "ema": folder / STATE_DIR / "ema.safetensors",
    }
    return {name: load_file(str(path)) for name, path in files.items()}


def test_fsdp_run_worker_checkpoints_full_tensors_and_resumes_exactly(tmp_path, corpus):
    root = tmp_path / "runs"
    root.mkdir()
    _spawn(_loop_worker, (str(root), corpus), f"{root}/loop", f"file://{tmp_path / 'rendezvous-loop'}")

    straight, resumed, mid = (_tensors(root / name) for name in ("straight-3", "resumed-3", "straight-2"))
    for part in ("unet", "refinernet", "optimizer", "ema"):
        assert straight[part].keys() == resumed[part].keys() and straight[part], part
        for key, want in straight[part].items():
            assert torch.equal(resumed[part][key], want), f"{part} {key}"
    frozen = [k for k in mid["unet"] if is_temporal_parameter(k)]  # frames stage
    moved = [k for k in mid["unet"] if not torch.equal(mid["unet"][k], straight["unet"][k])]
    assert frozen and not set(frozen) & set(moved)
    assert len(moved) > (len(mid["unet"]) - len(frozen)) // 2  # step 3 trained
    state = read_training_state(str(root / "straight-3" / STATE_DIR))
    assert state["step"] == 3 and state["world_size"] == WORLD and state["ema"]["optimization_step"] == 3

    # the same files as unsharded training: full tensors, keyed by parameter name; an unsharded
    # trainer resumes from them and a pipeline loads them
    pipe = SpatialDreamerPipeline.from_pretrained(root / "straight-2")
    full = {
        f"{name}.{k}": v
        for name in ("unet", "refinernet")
        for k, v in getattr(pipe, name).state_dict().items()
    }
    for key, value in mid["optimizer"].items():
        name, slot = key.rsplit("/", 1)
        want = () if slot == "step" else full[name].shape
        assert slot in ("step", "exp_avg", "exp_avg_sq") and value.shape == want, key
    assert all(value.shape == full[key].shape for key, value in mid["ema"].items())
    assert not torch.equal(mid["ema"]["unet.conv_in.weight"], full["unet.conv_in.weight"])
    trainer = Trainer(TrainConfig.from_dict(LOOP), pipeline=pipe)
    assert trainer.load_checkpoint(str(root / "straight-2"))["step"] == 2 and not trainer.sharded
    moments = trainer.optimizer.state_dict()["state"]
    index = trainer.param_names.index("unet.conv_in.weight")
    assert torch.equal(moments[index]["exp_avg"], mid["optimizer"]["unet.conv_in.weight/exp_avg"])
    ema = dict(zip(trainer.param_names, trainer.ema.shadow_params, strict=True))
    assert torch.equal(ema["refinernet.conv_in.weight"], mid["ema"]["refinernet.conv_in.weight"])
