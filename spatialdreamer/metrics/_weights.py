"""Reading metric-network checkpoints safely: safetensors, or a state dict that unpickles
with ``weights_only=True`` (never arbitrary objects), unwrapped and without DDP's ``module.``."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["read_state_dict"]


def read_state_dict(file: Path, error: type[Exception], what: str, hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors in ``file``; anything unreadable raises ``error`` with one line naming
    ``what`` was expected (and ``hint``, what to pass instead)."""
    tail = f"; {hint}" if hint else ""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a checkpoint, or one that needs unsafe unpickling
            raise error(f"{file}: not a readable {what} ({type(exc).__name__}){tail}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise error(f"{file}: not a state dict{tail}")
    return {k.removeprefix("module."): v for k, v in state.items()}
