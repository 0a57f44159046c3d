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


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fake_tensor_accounting_equals_real_tensors(cached_forward, checkpointing):
    cfg = get_config("tiny")
    fake = train_memory._forward(cfg, 1, checkpointing, fake=True)
    real = train_memory._forward(cfg, 1, checkpointing, fake=False)
    for key in ("refiner", "total", "features", "casts", "ckpt_inputs", "largest", "regions"):
        assert fake[key] == real[key], key
    assert fake["total"] > 0 and fake["casts"] > 0


def test_checkpointing_covers_the_temporal_blocks_and_every_setup_gets_a_row(cached_forward):
    cfg = get_config("tiny")
    lines, rows = train_memory.plan(cfg, batch=1, gpus=2)
    labels = [row.label for row in rows]
    setups, levels = ("1 GPU", "2 GPUs DDP", "2 GPUs FSDP"), ("no ckpt", "ckpt")
    assert labels == [f"{setup}, {level}" for setup in setups for level in levels]
    by_label = {row.label: row for row in rows}
    assert by_label["1 GPU, ckpt"].parts["acts"] < 0.5 * by_label["1 GPU, no ckpt"].parts["acts"]
    # enable_gradient_checkpointing() covers SVD's temporal blocks: outside the checkpointed regions
    # only their outputs stay saved (by the blend that follows), ~2 % of what they save unchecked
    plain, ckpt = train_memory._forward(cfg, 1, False), train_memory._forward(cfg, 1, True)
    temporal = "TemporalBasicTransformerBlock"
    assert ckpt["by_owner"].get(temporal, 0) < 0.05 * plain["by_owner"][temporal]
    ddp, fsdp, one = by_label["2 GPUs DDP, ckpt"], by_label["2 GPUs FSDP, ckpt"], by_label["1 GPU, ckpt"]
    assert fsdp.parts["AdamW"] == pytest.approx(ddp.parts["AdamW"] / 2)
    # DDP with gradient_as_bucket_view: no bucket copy, so the same plan as one GPU
    assert "DDP bkt" not in ddp.parts and ddp.parts == one.parts
    assert any(line.startswith("== tiny") for line in lines)
    table = train_memory.render(rows)
    assert "fits 80 GB" in table[0] and len(table) == 7
    summary = train_memory.fit_summary("tiny", rows, gpus=2)
    assert summary[0].startswith("tiny: fits one 80 GB GPU")
    assert summary[1].lstrip().startswith("DDP") and summary[2].lstrip().startswith("FSDP")
    assert all("ckpt: YES" in line and "no ckpt: YES" in line for line in summary[1:])
