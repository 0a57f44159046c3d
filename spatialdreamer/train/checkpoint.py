"""Training checkpoints that need no pickle: diffusers folders + safetensors + JSON.

Layout of a checkpoint folder (itself loadable with ``SpatialDreamerPipeline.from_pretrained``)::

    model_index.json, unet/, refinernet/, vae/, scheduler/[, image_encoder/]   save_pretrained
    training_state/optimizer.safetensors   optimizer tensors, keyed "<parameter name>/<slot>"
    training_state/state.json              step, settings, param groups, scalar optimizer state,
                                           grad-scaler state, metrics

The optimizer state is keyed by parameter *name*, not position, so a checkpoint refuses to load
into a model whose trainable parameters differ instead of silently mixing up moments.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "STATE_DIR",
    "load_optimizer_state",
    "optimizer_state_to_safe",
    "read_training_state",
    "save_optimizer_state",
]

STATE_DIR = "training_state"
_FORMAT = 1


def optimizer_state_to_safe(
    optimizer: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-friendly rest.

    ``names[i]`` names the optimizer's i-th parameter (in param-group order).
    """
    state = optimizer.state_dict()
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
    folder: str, optimizer: torch.optim.Optimizer, names: list[str], extra: dict
) -> None:
    """Write ``optimizer.safetensors`` and ``state.json`` (``extra`` merged in) into ``folder``."""
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
    """Restore ``optimizer`` from ``folder``; returns the checkpoint's ``state.json``."""
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
    tensors = load_file(os.path.join(folder, "optimizer.safetensors"))
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        name, slot = key.rsplit("/", 1)
        slots.setdefault(index[name], {})[slot] = value
    for name, values in meta["scalar_state"].items():
        slots.setdefault(index[name], {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        group = {k: (tuple(v) if k == "betas" else v) for k, v in g.items() if k != "params"}
        groups.append(group | {"params": [index[n] for n in g["params"]]})
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    return state
