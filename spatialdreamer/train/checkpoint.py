"""Training checkpoints that need no pickle: diffusers folders + safetensors + JSON.

Layout of a checkpoint folder (itself loadable with ``SpatialDreamerPipeline.from_pretrained``)::

    model_index.json, unet/, refinernet/, vae/, scheduler/[, image_encoder/]   save_pretrained
    training_state/optimizer.safetensors   optimizer tensors, keyed "<parameter name>/<slot>"
    training_state/ema.safetensors         EMA weights, keyed by parameter name (when EMA is on)
    training_state/state.json              step, settings, param groups, scalar optimizer and EMA
                                           state, grad-scaler state, metrics

The pipeline folders hold the raw weights (what resuming needs); :func:`export_pipeline` writes
a pipeline with the EMA weights for inference.

The optimizer state is keyed by parameter *name*, not position, so a checkpoint refuses to load
into a model whose trainable parameters differ instead of silently mixing up moments.

Sharded training (FSDP, ``parallel: fsdp``) writes the same files with full tensors: the trainer
gathers weights, moments and EMA weights to rank 0
(:mod:`spatialdreamer.train.parallel`), and loading gives every rank its own shard of each
tensor, so a checkpoint resumes with or without sharding and at another number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spatialdreamer.train.parallel import shard_like

__all__ = [
    "EMA_FILE",
    "STATE_DIR",
    "export_pipeline",
    "load_ema_state",
    "load_unet_weights",
    "restore_latent_scale",
    "save_ema_state",
    "load_optimizer_state",
    "optimizer_state_to_safe",
    "read_training_state",
    "save_optimizer_state",
]

STATE_DIR = "training_state"
EMA_FILE = "ema.safetensors"
_TRAINED = ("unet", "refinernet")  # pipeline components whose weights training changes
_FORMAT = 1


def optimizer_state_to_safe(
    optimizer: torch.optim.Optimizer | dict, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` (or such a dict, e.g. gathered from the ranks of sharded
    training) into named tensors and a JSON-friendly rest.

    ``names[i]`` names the optimizer's i-th parameter (in param-group order).
    """
    state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    count = sum(len(g["params"]) for g in state["param_groups"])
    if count != len(names):
        raise ValueError(f"optimizer has {count} parameters but {len(names)} names were given")
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{names[index]}/{slot}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(names[index], {})[slot] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        | {"params": [names[i] for i in g["params"]]}
        for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def save_optimizer_state(
    folder: str, optimizer: torch.optim.Optimizer | dict, names: list[str], extra: dict
) -> None:
    """Write ``optimizer.safetensors`` and ``state.json`` (``extra`` merged in) into ``folder``;
    ``optimizer`` may be the optimizer or its state dict with full tensors."""
    os.makedirs(folder, exist_ok=True)
    tensors, meta = optimizer_state_to_safe(optimizer, names)
    save_file(tensors, os.path.join(folder, "optimizer.safetensors"))
    with open(os.path.join(folder, "state.json"), "w") as fh:
        json.dump({"format": _FORMAT, **extra, "optimizer": meta}, fh, indent=1)


def read_training_state(folder: str) -> dict:
    """``state.json`` of a checkpoint's ``training_state`` folder (clear error when absent)."""
    path = os.path.join(folder, "state.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no state.json)")
    with open(path) as fh:
        state = json.load(fh)
    if state.get("format") != _FORMAT:
        raise ValueError(f"training checkpoint {folder} has format {state.get('format')}, expected {_FORMAT}")
    return state


def load_optimizer_state(folder: str, optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """Restore ``optimizer`` from ``folder``; returns the checkpoint's ``state.json``.

    Moments of sharded (``DTensor``) parameters are split so that each rank keeps its shard."""
    state = read_training_state(folder)
    meta = state["optimizer"]
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if saved != list(names):
        extra, missing = sorted(set(saved) - set(names)), sorted(set(names) - set(saved))
        raise ValueError(
            f"checkpoint {folder} trains other parameters than this model "
            f"(only in checkpoint: {extra[:3]}, only in model: {missing[:3]}, or another order)"
        )
    index = {name: i for i, name in enumerate(names)}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    slots: dict[int, dict] = {}
    with safe_open(os.path.join(folder, "optimizer.safetensors"), framework="pt") as fh:
        keys = fh.keys()
        for key in keys:  # one tensor at a time: a sharded rank never holds the whole state
            name, slot = key.rsplit("/", 1)
            value, param = fh.get_tensor(key), params[index[name]]
            if _is_sharded(param) and value.shape == param.shape:
                value = shard_like(value, param)
            slots.setdefault(index[name], {})[slot] = value
    for name, values in meta["scalar_state"].items():
        slots.setdefault(index[name], {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        group = {k: (tuple(v) if k == "betas" else v) for k, v in g.items() if k != "params"}
        groups.append(group | {"params": [index[n] for n in g["params"]]})
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    return state


def save_ema_state(folder: str, ema, names: list[str], shadow: list[torch.Tensor] | None = None) -> None:
    """Write the EMA weights (keyed by parameter name) and merge its scalars into ``state.json``;
    ``shadow`` replaces ``ema.shadow_params`` (e.g. full tensors gathered from sharded ones)."""
    shadow = ema.shadow_params if shadow is None else shadow
    if len(shadow) != len(names):
        raise ValueError(f"EMA holds {len(shadow)} tensors but {len(names)} names were given")
    tensors = {n: p.detach().cpu().contiguous() for n, p in zip(names, shadow, strict=True)}
    save_file(tensors, os.path.join(folder, EMA_FILE))
    state = read_training_state(folder)
    state["ema"] = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    with open(os.path.join(folder, "state.json"), "w") as fh:
        json.dump(state, fh, indent=1)


def load_ema_state(folder: str, ema, names: list[str]) -> None:
    """Restore EMA weights and counters saved by :func:`save_ema_state` (clear error if absent)."""
    path = os.path.join(folder, EMA_FILE)
    state = read_training_state(folder)
    if not os.path.isfile(path) or "ema" not in state:
        raise FileNotFoundError(f"checkpoint {folder} has no EMA weights; set ema_decay: 0 to resume without")
    tensors = load_file(path)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"EMA weights in {folder} lack parameters {missing[:3]}")
    shadow = [
        shard_like(tensors[n], p) if _is_sharded(p) else tensors[n].to(device=p.device, dtype=p.dtype)
        for n, p in zip(names, ema.shadow_params, strict=True)
    ]
    ema.load_state_dict(state["ema"])  # counters (it would deep-copy tensors passed here)
    ema.shadow_params = shadow


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def restore_latent_scale(vae: torch.nn.Module, folder: str) -> None:
    """Take the VAE's latent ``scaling_factor``/``shift_factor`` (and calibration) from a
    pipeline folder, so a resumed or continued run encodes exactly as the first did."""
    path = os.path.join(folder, "vae", "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as fh:
        saved = json.load(fh)
    keep = {
        k: saved[k]
        for k in ("scaling_factor", "shift_factor", "calibrated")
        if k in saved and k in vae.config
    }
    if keep:
        vae.register_to_config(**keep)


def _ema_weights(folder: str) -> dict[str, dict[str, torch.Tensor]]:
    """EMA tensors of a checkpoint split per component: ``{"unet": {param: tensor}, ...}``."""
    path = os.path.join(folder, STATE_DIR, EMA_FILE)
    if not os.path.isfile(path):
        return {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(path).items():
        component, name = key.split(".", 1)
        out.setdefault(component, {})[name] = value
    return out


def load_unet_weights(pipe, folder: str) -> None:
    """Load the denoiser and RefinerNet weights of a checkpoint or pipeline ``folder`` into
    ``pipe`` — the EMA weights where the checkpoint has them — with the VAE's latent scale."""
    from spatialdreamer.models.denoiser import SpatialDreamerDenoiser
    from spatialdreamer.models.refinernet import RefinerNet

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no checkpoint or pipeline folder at {folder} to start from")
    ema = _ema_weights(folder)
    for name, cls in zip(_TRAINED, (SpatialDreamerDenoiser, RefinerNet), strict=True):
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{folder} has no {name}/ folder (not a SpatialDreamer pipeline)")
        state = cls.from_pretrained(path).state_dict() | ema.get(name, {})
        getattr(pipe, name).load_state_dict(state, strict=True)
    restore_latent_scale(pipe.vae, folder)


def export_pipeline(checkpoint_dir: str, destination: str) -> str:
    """Copy a checkpoint's pipeline without optimizer state to ``destination`` atomically, with
    the EMA weights in place of the raw ones when the checkpoint has them."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pipeline-", dir=parent)
    try:
        shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(STATE_DIR))
        for component, weights in _ema_weights(checkpoint_dir).items():
            folder = os.path.join(tmp, component)
            files = [f for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")]
            if not files:
                raise FileNotFoundError(f"{checkpoint_dir}/{component} has no safetensors weights")
            left = dict(weights)
            for file in files:  # diffusers may shard large models over several files
                path = os.path.join(folder, file)
                tensors = load_file(path)
                for key in tensors.keys() & left.keys():
                    tensors[key] = left.pop(key).to(tensors[key].dtype)
                save_file(tensors, path, metadata={"format": "pt"})
            if left:
                raise ValueError(f"EMA weights {sorted(left)[:3]} have no place in {component}/")
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return destination
