"""Sharded data parallelism (FSDP2) for the training loss module.

:class:`~spatialdreamer.train.loop.Trainer` wraps its loss module in one
``DistributedDataParallel`` by default; with ``parallel: fsdp`` it calls
:func:`shard_loss_module` instead, so that fp32 master weights, gradients, AdamW state and EMA
weights are split over the ranks rather than replicated (see ``benchmarks/train_memory.py``
for what that saves at ``full`` scale).

Why RefinerNet keeps its parameters gathered through backward: FSDP re-gathers a unit's
parameters for backward when the gradient of the unit's *output* arrives. RefinerNet's
features reach the loss through the denoiser's attention processors, not through its outputs,
and the output of its last up block (and its ``conv_norm_out``/``conv_out`` tail) does not
reach the loss at all; a resharded RefinerNet block would be back-propagated through with
freed parameters (``setStorage: ... out of bounds for storage of size 0``). So RefinerNet's
units use ``reshard_after_forward=False`` (its bf16 parameters stay gathered from its forward
to its backward: 2 bytes per RefinerNet parameter), while the denoiser's units, whose
gradients arrive through their outputs, reshard after forward. Parameters that get no gradient
(RefinerNet's tail) keep ``grad = None`` on every rank and the optimizer skips them.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

__all__ = [
    "clip_grad_norm_",
    "full_state_dict",
    "gather_full",
    "gather_optimizer_state",
    "load_full_state_dict",
    "shard_like",
    "shard_loss_module",
    "shard_units",
    "unsharded_copy",
]

GATHER_BUCKET_BYTES = 256 * 2**20  # full size of the tensors gathered by one collective


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of a U-Net that become FSDP units: its down blocks, mid block and up blocks
    (the rest — ``conv_in``, embeddings, ``conv_norm_out``, ``conv_out`` — stays with the root)."""
    units = [*model.down_blocks, model.mid_block, *model.up_blocks]
    return [u for u in units if u is not None]


def _mixed_precision(param_dtype: torch.dtype | str | None, device: torch.device):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if param_dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        param_dtype = torch.bfloat16 if cuda_bf16 else None
    if param_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def shard_loss_module(
    module: torch.nn.Module,
    *,
    device: str | torch.device | None = None,
    param_dtype: torch.dtype | str | None = "auto",
    mesh=None,
) -> torch.nn.Module:
    """Shard ``module.unet`` and ``module.refinernet`` with FSDP2 (``fully_shard``), in place.

    Each U-Net's down, mid and up blocks become one FSDP unit each, then the U-Net itself (the
    remaining parameters). The frozen VAE and image encoder are left as they are (replicated):
    the loss calls ``vae.encode``, not ``vae.forward``, which FSDP would not gather for.

    How to call it (``Trainer`` with ``parallel: fsdp``):

    1. initialise ``torch.distributed`` (Ray's ``TorchTrainer`` does: NCCL on GPUs, gloo on
       CPUs) and move the pipeline to this rank's device;
    2. set ``requires_grad`` (frozen VAE/image encoder, frozen temporal layers in the frames
       stage) and enable gradient checkpointing, if wanted, *before* sharding;
    3. ``model = shard_loss_module(loss_module, device=device)``;
    4. only then collect ``[p for p in model.parameters() if p.requires_grad]`` and build the
       optimizer and ``EMAModel`` from them: sharding replaces every parameter of the two U-Nets
       by a sharded ``DTensor`` parameter, so lists taken before point at the old tensors. The
       optimizer state and the EMA copy are then sharded as well;
    5. train as with DDP: ``loss = model(batch, generator)["loss"]; loss.backward();
       optimizer.step()``. Clip with :func:`clip_grad_norm_` (from the local shards, one
       all-reduce; ``torch.nn.utils.clip_grad_norm_`` gives the same on the ``DTensor``
       gradients but dispatches one sharded op per gradient). Mixed precision comes from
       ``param_dtype`` here; autocast on top is harmless.
    6. Checkpoints: ``pipe.save_pretrained`` / ``load_state_dict`` see sharded ``DTensor``
       parameters. Gather with :func:`full_state_dict`, :func:`gather_optimizer_state` and
       :func:`gather_full` (EMA weights) — collectives: every rank calls them, rank 0 receives
       full CPU tensors — and write from rank 0 (:func:`unsharded_copy` gives
       ``save_pretrained`` a plain model). Restore with :func:`load_full_state_dict` and
       :func:`shard_like` on every rank (each keeps its own shard, no communication).
       :class:`~spatialdreamer.train.loop.Trainer` does all of this with ``parallel: fsdp``.

    Requirements: PyTorch ≥ 2.6 (``torch.distributed.fsdp.fully_shard``); every rank calls it
    with the same module structure. Gradient averaging over ranks is exactly DDP's (each rank's
    loss is a mean over its own batch), so the learning rate needs no change.

    Args:
        module: the loss module (``.unet`` = denoiser, ``.refinernet`` = RefinerNet), already on
            ``device``.
        device: this rank's device; picks the device mesh type and the default precision.
        param_dtype: dtype the gathered parameters compute in; ``"auto"`` = bf16 on CUDA with
            bf16 support, else fp32 (``None``). Gradients are reduced in fp32 and the sharded
            master weights stay fp32 either way.
        mesh: a 1-D ``DeviceMesh`` over the data-parallel ranks (default: all ranks).

    Returns:
        ``module`` itself, its two U-Nets sharded.
    """
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_loss_module needs torch.distributed initialised (one process per rank)")
    for name in ("unet", "refinernet"):
        if not isinstance(getattr(module, name, None), torch.nn.Module):
            raise TypeError(f"the loss module has no {name!r} U-Net to shard")
    if device is None:
        device = next(module.unet.parameters()).device
    device = torch.device(device)
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = _mixed_precision(param_dtype, device)
    for unet, reshard in ((module.unet, True), (module.refinernet, False)):
        for unit in shard_units(unet):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(unet, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    return module


def _dim0_shards(tensor: torch.Tensor) -> bool:
    """A DTensor split along dim 0 over a 1-D mesh (how FSDP2 shards every parameter)."""
    from torch.distributed.tensor import DTensor, Shard

    return (
        isinstance(tensor, DTensor)
        and tensor.device_mesh.ndim == 1
        and tuple(tensor.placements) == (Shard(0),)
        and tensor.dim() > 0
    )


@torch.no_grad()
def gather_full(
    tensors: list[torch.Tensor], *, to_rank0: bool = True, bucket_bytes: int = GATHER_BUCKET_BYTES
) -> list[torch.Tensor] | None:
    """The full values of ``tensors`` — sharded ``DTensor`` objects (FSDP2 parameters, their
    optimizer moments and EMA copies) or plain tensors, which pass through.

    A collective: every rank calls it with the same list (same shapes, same order). Dim-0 shards
    are gathered in buckets of about ``bucket_bytes`` (full size), one ``gather`` per bucket
    instead of one per tensor; a shard follows ``torch.chunk`` (DTensor's ``Shard`` contract), so
    rank ``r`` holds rows ``[r·c, (r+1)·c)`` with ``c = ceil(rows / ranks)``. Other placements
    fall back to ``DTensor.full_tensor``.

    Returns:
        with ``to_rank0``: on rank 0 the full tensors on the CPU, on the other ranks ``None``
        (bounded device memory: a rank sends its shards of one bucket, rank 0 receives about
        ``bucket_bytes``); without it, every rank gets them on its device.
    """
    from torch.distributed.tensor import DTensor

    keep = not to_rank0 or dist.get_rank() == 0
    out: list[torch.Tensor | None] = [None] * len(tensors)
    bucket: list[int] = []

    def finish(i: int, value: torch.Tensor) -> None:
        if keep:
            out[i] = value.detach().cpu() if to_rank0 else value.detach()

    def flush() -> None:
        if not bucket:
            return
        first = tensors[bucket[0]]
        group, world = first.device_mesh.get_group(), first.device_mesh.size()
        pieces, rows = [], []
        for i in bucket:
            local, full = tensors[i].to_local(), tensors[i].shape
            chunk = math.ceil(full[0] / world)
            rows.append(chunk)
            padded = local.new_zeros(chunk * math.prod(full[1:]))
            padded[: local.numel()] = local.reshape(-1)
            pieces.append(padded)
        send = torch.cat(pieces)
        root = dist.get_global_rank(group, 0)
        if to_rank0:
            received = [torch.empty_like(send) for _ in range(world)] if keep else None
            dist.gather(send, received, dst=root, group=group)
        else:
            received = [torch.empty_like(send) for _ in range(world)]
            dist.all_gather(received, send, group=group)
        if keep:
            offset = 0
            for i, chunk in zip(bucket, rows, strict=True):
                full, inner = tensors[i].shape, math.prod(tensors[i].shape[1:])
                held = [min(chunk, max(0, full[0] - r * chunk)) for r in range(world)]
                parts = [r[offset : offset + n * inner] for r, n in zip(received, held, strict=True)]
                finish(i, torch.cat(parts).view(full))
                offset += chunk * inner
        bucket.clear()

    size = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, DTensor):
            finish(i, tensor)
            continue
        if not _dim0_shards(tensor):
            flush()
            finish(i, tensor.full_tensor())
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if bucket:
            head = tensors[bucket[0]]
            same = head.dtype == tensor.dtype and head.device_mesh == tensor.device_mesh
            if not same or size + nbytes > bucket_bytes:
                flush()
        size = nbytes if not bucket else size + nbytes
        bucket.append(i)
    flush()
    return out if keep else None


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (an unsharded value, e.g. read from a checkpoint) laid out as ``like``: this
    rank's shard as a ``DTensor`` on ``like``'s mesh and device when ``like`` is a ``DTensor``,
    otherwise ``full`` moved to ``like``'s device and dtype. Local: no communication (every rank
    holds ``full``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"a tensor of shape {tuple(full.shape)} cannot replace one of {tuple(like.shape)}")
    value = full.to(device=like.device, dtype=like.dtype)
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(module: torch.nn.Module, *, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a module sharded by :func:`shard_loss_module` (or of one of
    its U-Nets), as plain tensors.

    A collective: call it on every rank. With ``cpu_offload`` (the default, bounded GPU memory)
    rank 0 receives the tensors on the CPU and the other ranks an empty dict; without it every
    rank gets them on its device.
    """
    state = module.state_dict()
    gathered = gather_full(list(state.values()), to_rank0=cpu_offload)
    return {} if gathered is None else dict(zip(state, gathered, strict=True))


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True):
    """Load an unsharded state dict (as :func:`full_state_dict` or ``state_dict()`` of the plain
    module give it) into a module sharded by :func:`shard_loss_module`; every rank passes the
    full dict and keeps its own shard (no communication).

    Returns the missing and unexpected keys (both empty with ``strict``, which raises instead).
    """
    current = module.state_dict()
    missing = sorted(current.keys() - state.keys())
    unexpected = sorted(state.keys() - current.keys())
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"state dict does not match {type(module).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in current:  # the state_dict's tensors share storage with the module's
                current[key].copy_(shard_like(value, current[key]))
    return missing, unexpected


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict | None:
    """``optimizer.state_dict()`` with its sharded moments gathered (:func:`gather_full`).

    A collective: every rank calls it. Rank 0 gets the state dict with full CPU tensors, in the
    positional layout ``optimizer.state_dict()`` has (what
    :func:`spatialdreamer.train.checkpoint.save_optimizer_state` writes); the other ranks get
    ``None``.
    """
    state = optimizer.state_dict()
    slots = [(i, slot) for i in sorted(state["state"]) for slot in sorted(state["state"][i])]
    values = [state["state"][i][slot] for i, slot in slots]
    positions = [k for k, v in enumerate(values) if isinstance(v, torch.Tensor)]
    gathered = gather_full([values[k] for k in positions])
    if gathered is None:
        return None
    for k, value in zip(positions, gathered, strict=True):
        values[k] = value
    full: dict[int, dict] = {}
    for (i, slot), value in zip(slots, values, strict=True):
        full.setdefault(i, {})[slot] = value
    return {"state": full, "param_groups": state["param_groups"]}


def unsharded_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (unsharded) instance of a diffusers model sharded by :func:`shard_loss_module`,
    holding ``state`` (its full state dict, e.g. from :func:`full_state_dict`): what
    ``save_pretrained`` needs. Built on the meta device and given ``state``'s tensors without
    a copy."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        copy = cls.from_config(model.config)
    copy.load_state_dict(state, strict=True, assign=True)
    return copy.train(model.training)


@torch.no_grad()
def clip_grad_norm_(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters sharded by :func:`shard_loss_module`:
    the 2-norm of all gradients together, computed from each rank's local shards and one
    all-reduce, then gradients scaled by ``min(1, max_norm / (norm + 1e-6))`` in place.

    Returns the total norm as a plain scalar tensor, the same on every rank. A collective:
    every rank calls it. Equal to what ``torch.nn.utils.clip_grad_norm_`` gives on the
    ``DTensor`` gradients, without dispatching one sharding-propagated ``DTensor`` op per
    gradient (seconds per step for a U-Net's thousand parameters). Dim-0 shards add their
    squares over the ranks; replicated or plain gradients count once.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    shards = [g for g in grads if _dim0_shards(g)]
    others = [g for g in grads if not _dim0_shards(g)]
    device = grads[0].device if grads else torch.device("cpu")

    def squares(tensors: list[torch.Tensor]) -> torch.Tensor:
        if not tensors:
            return torch.zeros((), device=device)
        return torch.stack(torch._foreach_norm(tensors)).float().square().sum()

    total = squares([g.to_local() for g in shards])
    dist.all_reduce(total, group=shards[0].device_mesh.get_group() if shards else None)
    total = (total + squares([g.full_tensor() if isinstance(g, DTensor) else g for g in others])).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    if local:
        torch._foreach_mul_(local, coef)
    return total
