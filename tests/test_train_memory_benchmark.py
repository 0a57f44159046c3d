"""``benchmarks/train_memory.py``: its fake-tensor accounting is what real tensors give, and its plan
has the rows it promises (tiny config, CPU, seconds)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

from spatialdreamer.models.configs import get_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
train_memory = pytest.importorskip("train_memory")


@pytest.fixture
def cached_forward(monkeypatch):
    """The tests share forward runs (each takes seconds on fake tensors)."""
    monkeypatch.setattr(train_memory, "_forward", _forward)


def _forward(cfg, batch, checkpointing, fake=True):
    return _cached(cfg, batch, checkpointing, fake)


@functools.cache
def _cached(cfg, batch, checkpointing, fake):
    return _FORWARD(cfg, batch, checkpointing, fake)


_FORWARD = train_memory._forward


@pytest.mark.parametrize("checkpointing", ["none", "temporal"])
def test_fake_tensor_accounting_equals_real_tensors(cached_forward, checkpointing):
    cfg = get_config("tiny")
    fake = train_memory._forward(cfg, 1, checkpointing, fake=True)
    real = train_memory._forward(cfg, 1, checkpointing, fake=False)
    for key in ("refiner", "total", "features", "casts", "ckpt_inputs", "largest", "regions"):
        assert fake[key] == real[key], key
    assert fake["total"] > 0 and fake["casts"] > 0


def test_checkpointing_saves_less_and_every_setup_gets_a_row(cached_forward):
    lines, rows = train_memory.plan(get_config("tiny"), batch=1, gpus=2)
    acts = {row.label: row.parts["acts"] for row in rows}
    assert len(rows) == 9
    assert acts["1 GPU, ckpt+temporal"] < acts["1 GPU, ckpt"] < acts["1 GPU, no ckpt"]
    by_label = {row.label: row for row in rows}
    ddp, fsdp = by_label["2 GPUs DDP, ckpt"], by_label["2 GPUs FSDP, ckpt"]
    assert fsdp.parts["AdamW"] == pytest.approx(ddp.parts["AdamW"] / 2)
    assert ddp.parts["DDP bkt"] > 0 and fsdp.parts["DDP bkt"] == 0
    assert any(line.startswith("== tiny") for line in lines)
    table = train_memory.render(rows)
    assert "fits 80 GB" in table[0] and len(table) == 10
