"""FSDP2 sharding of the loss module: two gloo ranks on CPU train exactly like one process.

Two ranks each take their own batch for two optimizer steps under
:func:`~spatialdreamer.train.parallel.shard_loss_module` (``video`` stage: every layer trains,
gradient checkpointing on; ``frames`` stage: temporal layers frozen inside the sharded units); one
process then does the same steps on both batches at once (mean of the two ranks' losses). The
weights must agree to float precision. The optimizer is SGD on purpose: AdamW turns gradients
that are zero up to rounding (e.g. of a conv bias followed by a GroupNorm) into full ±lr steps,
so it cannot tell an FSDP error from summation-order noise; SGD keeps the comparison linear.
"""

from __future__ import annotations

import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spatialdreamer.models.configs import build_pipeline
from spatialdreamer.models.refinernet import is_temporal_parameter
from spatialdreamer.train.loop import LossModule

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)

WORLD, STEPS, LR = 2, 2, 0.5
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


def _step(module, params, optimizer, losses) -> float:
    loss = sum(losses) / len(losses)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    module.refinernet.bank.clear()
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _worker(rank: int, init: str, out: str, stage: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
        from spatialdreamer.train.parallel import full_state_dict, load_full_state_dict, shard_loss_module

        module = shard_loss_module(_loss_module(stage, checkpointing=stage == "video"), device="cpu")
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=LR)
        record = []
        for step in range(STEPS):
            generator = torch.Generator().manual_seed(step * 7919 + rank)
            loss = module(_batch(step, rank), generator)["loss"]
            total = loss.detach().clone()
            dist.all_reduce(total)
            norm = _step(module, params, optimizer, [loss])
            record.append((float(total) / WORLD, norm))
        state = full_state_dict(module)
        restored = None
        if stage == "frames":  # and back (once; gathers are slow on gloo): initial weights load
            load_full_state_dict(module, _loss_module(stage, checkpointing=False).state_dict())
            restored = full_state_dict(module)
        if rank == 0:
            torch.save({"state": state, "restored": restored, "record": record}, out)
        dist.barrier()
    except BaseException:
        with open(f"{out}.rank{rank}.err", "w") as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_ranks(tmp_path, stage: str) -> dict:
    out = str(tmp_path / f"fsdp-{stage}.pt")
    init = f"file://{tmp_path / f'rendezvous-{stage}'}"
    # fork: the children reuse this process's imports (spawn would re-import torch and diffusers)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(rank, init, out, stage)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    logs = [Path(f"{out}.rank{rank}.err") for rank in range(WORLD)]
    errors = [log.read_text() for log in logs if log.exists()]
    assert not errors, "FSDP rank failed:\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
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
    tail = [k for k in state if k.startswith("refinernet.conv_out.")]
    assert tail and all(torch.equal(got[k], initial[k]) for k in tail)
    if stage == "frames":
        frozen = [k for k in state if k.startswith("unet.") and is_temporal_parameter(k[len("unet.") :])]
        assert frozen and all(torch.equal(got[k], initial[k]) for k in frozen)
