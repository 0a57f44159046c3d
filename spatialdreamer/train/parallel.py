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

import torch
import torch.distributed as dist

__all__ = ["full_state_dict", "load_full_state_dict", "shard_loss_module", "shard_units"]


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
       optimizer.step()``. ``torch.nn.utils.clip_grad_norm_`` works on the sharded gradients
       and returns a replicated ``DTensor`` (``float()``/``torch.isfinite`` work on it, equal on
       every rank). Mixed precision comes from ``param_dtype`` here; autocast on top is harmless.
    6. Checkpoints: ``pipe.save_pretrained`` / ``load_state_dict`` see sharded ``DTensor``
       parameters. Save :func:`full_state_dict` (a collective: every rank calls it; rank 0
       receives the tensors) from rank 0; restore with :func:`load_full_state_dict` on every
       rank. EMA shadow tensors and optimizer moments are sharded ``DTensor`` objects as well
       (``.full_tensor()`` gathers one).

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


def full_state_dict(module: torch.nn.Module, *, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a module sharded by :func:`shard_loss_module` (plain tensors).

    A collective: call it on every rank. With ``cpu_offload`` (the default, bounded GPU memory)
    rank 0 receives the tensors on the CPU and the other ranks an empty dict; without it every
    rank gets them on its device.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)
    return get_model_state_dict(module, options=options)


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True):
    """Load an unsharded state dict (as :func:`full_state_dict` or ``state_dict()`` of the plain
    module give it) into a module sharded by :func:`shard_loss_module`; every rank passes the
    full dict and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, strict=strict)
    return set_model_state_dict(module, state, options=options)
