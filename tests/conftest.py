"""Shared fixtures: small synth scenes rendered once per session."""

from __future__ import annotations

import pytest
import torch

from spatialdreamer.synth import make_scene


@pytest.fixture(scope="session")
def scenes():
    """Three small scenes with camera pan, moving objects and thin structures."""
    return [make_scene(seed, height=96, width=160, frames=4) for seed in range(3)]


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
