"""Attention processors that connect RefinerNet to the denoiser (diffusers processor API).

Two behaviours are added without forking any U-Net block:

* **Reference fusion** (denoiser side, :class:`FusedSelfAttnProcessor`): in every spatial
  self-attention the RefinerNet tokens of the same layer are appended to the denoiser tokens
  (the feature maps concatenated along the height axis), self-attention runs over both and the
  first half of the output (the denoiser's own tokens) is kept. Computing queries only for the
  denoiser tokens gives exactly that first half at half the cost.
* **Temporal interaction learning** (RefinerNet side, :class:`RefinerAttnProcessor`):
  ``aug = λ·Attn(r_t, r_t) + (1 − λ)·mean_i Attn(r_t, r_i)`` over the ``N_r`` frames nearest to
  ``t``. The same processor records its output — the TIL-augmented feature ``aug_r`` (after the
  output projection, the tokens RefinerNet's block adds to its residual stream) — into a
  :class:`ReferenceBank` so the denoiser layer with the same name can read them.

State is held explicitly on the bank, not in a context manager: the features stay in use until
the next :meth:`ReferenceBank.use` (and ``num_frames`` until the next RefinerNet call), so
gradient checkpointing, which recomputes blocks during backward after the forward call has
returned, sees exactly what the forward saw.

Both sides flatten ``batch × frames`` in the same order (``b * F + f``), so token row ``k`` of
the denoiser meets row ``k`` of RefinerNet: frame ``f`` of video ``b`` is fused with reference
frame ``f`` of video ``b``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

__all__ = [
    "FusedSelfAttnProcessor",
    "RefinerAttnProcessor",
    "ReferenceBank",
    "attach_reference_fusion",
    "spatial_self_attention_names",
    "temporal_neighbours",
]


class ReferenceBank:
    """Per-layer RefinerNet features shared between RefinerNet and the denoiser processors.

    ``features[name]`` is the ``[B*F, N, C]`` TIL-augmented output of RefinerNet's
    self-attention ``name`` (the processor name, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1``); ``active`` is what the denoiser
    fuses (``None`` = plain self-attention).
    """

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.recording: bool = False
        self.active: dict[str, torch.Tensor] | None = None
        self.num_frames: int = 1

    @contextmanager
    def record(self) -> Iterator[dict[str, torch.Tensor]]:
        """Collect RefinerNet features while a RefinerNet forward runs inside the block."""
        collected: dict[str, torch.Tensor] = {}
        self.features, self.recording = collected, True
        try:
            yield collected
        finally:
            self.recording = False
            self.features = {}

    def use(self, features: dict[str, torch.Tensor]) -> None:
        """Make the denoiser's fusion processors read ``features`` from now on (until the next
        ``use`` or :meth:`clear`), including in checkpoint recomputation during backward."""
        if not features:
            raise ValueError("no RefinerNet features to fuse: run RefinerNet under bank.record() first")
        self.active = features

    def clear(self) -> None:
        """Back to plain self-attention; drops the references to the features."""
        self.active = None


def temporal_neighbours(num_frames: int, count: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices of the ``count`` frames nearest to each frame (itself excluded), ``[F, n]`` long.

    ``n = min(count, F − 1)``; ties go to the earlier frame, and near the clip ends the nearest
    frames on the other side are used, so every frame gets the same number of neighbours.

    Example:
        >>> temporal_neighbours(4, 2).tolist()
        [[1, 2], [0, 2], [1, 3], [2, 1]]
    """
    if num_frames < 1 or count < 0:
        raise ValueError(f"need num_frames >= 1 and count >= 0, got {num_frames} and {count}")
    n = min(count, num_frames - 1)
    frames = torch.arange(num_frames)
    dist = (frames[None, :] - frames[:, None]).abs().float()
    dist = dist + frames[None, :].float() * 1e-3  # tie break: earlier frame first
    dist.fill_diagonal_(float("inf"))
    return dist.argsort(dim=1)[:, :n].to(device)


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def _prepare(attn: Attention, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None):
    if hidden_states.ndim != 3:
        raise ValueError(
            f"expected [batch, tokens, channels] hidden states, got shape {tuple(hidden_states.shape)}"
        )
    if attention_mask is not None:
        raise ValueError("reference fusion / TIL processors do not support an attention_mask")
    if attn.spatial_norm is not None:
        raise ValueError("reference fusion / TIL processors do not support spatial_norm attention")
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states


def _qkv(attn: Attention, queries: torch.Tensor, context: torch.Tensor):
    query, key, value = _heads(attn, attn.to_q(queries)), _heads(attn, attn.to_k(context)), None
    value = _heads(attn, attn.to_v(context))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def _sdpa(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=attn.scale)


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    batch, heads, tokens, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * dim).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class FusedSelfAttnProcessor:
    """Denoiser spatial self-attention over its own tokens ⊕ the RefinerNet tokens of the same layer.

    With ``x`` ``[B*F, N, C]`` and reference ``r`` ``[B*F, M, C]``: ``out = Attn(q=x, kv=[x; r])``,
    i.e. the first ``N`` rows of full self-attention over ``[x; r]``. Outside
    :meth:`ReferenceBank.use` (or after :meth:`ReferenceBank.clear`) it is plain self-attention
    (the denoiser alone).
    """

    def __init__(self, name: str, bank: ReferenceBank) -> None:
        self.name = name
        self.bank = bank

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: fusion is for self-attention, got encoder_hidden_states")
        residual = hidden_states
        hidden_states = _prepare(attn, hidden_states, attention_mask)
        context = hidden_states
        if self.bank.active is not None:
            if self.name not in self.bank.active:
                raise KeyError(f"RefinerNet recorded no features for layer {self.name!r}")
            ref = self.bank.active[self.name]
            if ref.shape[0] != hidden_states.shape[0] or ref.shape[2] != hidden_states.shape[2]:
                raise ValueError(
                    f"{self.name}: reference tokens {tuple(ref.shape)} do not match denoiser tokens "
                    f"{tuple(hidden_states.shape)}; need one reference frame per video frame "
                    "([B*F, tokens, channels] on both sides)"
                )
            context = torch.cat([hidden_states, ref.to(hidden_states.dtype)], dim=1)
        query, key, value = _qkv(attn, hidden_states, context)
        return _finish(attn, _sdpa(attn, query, key, value), residual, query.dtype)


class RefinerAttnProcessor:
    """RefinerNet self-attention with temporal interaction learning; records its output ``aug_r``.

    ``aug = λ·Attn(r_t, r_t) + (1 − λ)·mean_{i ∈ N(t)} Attn(r_t, r_i)`` where ``N(t)`` are the
    ``til_frames`` nearest frames (see :func:`temporal_neighbours`). The number of frames per
    video comes from ``bank.num_frames`` (set by :meth:`RefinerNet.forward`); with one frame, or
    ``λ = 1``, it is plain self-attention. Under :meth:`ReferenceBank.record` the output is
    stored for the denoiser.
    """

    def __init__(self, name: str, bank: ReferenceBank, til_weight: float = 1.0, til_frames: int = 0) -> None:
        if not 0.0 <= til_weight <= 1.0:
            raise ValueError(f"til_weight must be in [0, 1], got {til_weight}")
        if til_frames < 0:
            raise ValueError(f"til_frames must be >= 0, got {til_frames}")
        self.name = name
        self.bank = bank
        self.til_weight = float(til_weight)
        self.til_frames = int(til_frames)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: TIL is for self-attention, got encoder_hidden_states")
        residual = hidden_states
        hidden_states = _prepare(attn, hidden_states, attention_mask)
        query, key, value = _qkv(attn, hidden_states, hidden_states)
        out = _sdpa(attn, query, key, value)

        frames = self.bank.num_frames
        neighbours = temporal_neighbours(frames, self.til_frames, device=query.device)
        if self.til_weight < 1.0 and neighbours.shape[1] > 0:
            batch_frames = query.shape[0]
            if batch_frames % frames:
                raise ValueError(
                    f"{self.name}: batch×frames {batch_frames} is not a multiple of {frames} frames"
                )
            k5 = key.unflatten(0, (batch_frames // frames, frames))
            v5 = value.unflatten(0, (batch_frames // frames, frames))
            cross = torch.zeros_like(out)
            for j in range(neighbours.shape[1]):
                idx = neighbours[:, j]
                cross = cross + _sdpa(attn, query, k5[:, idx].flatten(0, 1), v5[:, idx].flatten(0, 1))
            out = self.til_weight * out + (1.0 - self.til_weight) * cross / neighbours.shape[1]
        aug = _finish(attn, out, residual, query.dtype)
        if self.bank.recording:
            self.bank.features[self.name] = aug
        return aug


def spatial_self_attention_names(model: torch.nn.Module) -> list[str]:
    """Processor names of the spatial self-attentions (``…transformer_blocks.N.attn1.processor``).

    Temporal blocks (``temporal_transformer_blocks``) are excluded.
    """
    return [
        name
        for name in model.attn_processors
        if name.endswith("attn1.processor") and ".transformer_blocks." in name
    ]


def attach_reference_fusion(denoiser: torch.nn.Module, refinernet: torch.nn.Module) -> ReferenceBank:
    """Install :class:`FusedSelfAttnProcessor` on the denoiser, reading ``refinernet.bank``.

    The two U-Nets must have the same spatial layout: every spatial self-attention of the
    denoiser has a RefinerNet self-attention with the same name.
    """
    bank: ReferenceBank = refinernet.bank
    wanted = spatial_self_attention_names(denoiser)
    have = set(spatial_self_attention_names(refinernet))
    missing = [n for n in wanted if n not in have]
    if missing or not wanted:
        raise ValueError(
            "RefinerNet's block layout does not match the denoiser's: missing self-attentions "
            f"{missing[:3]}{'…' if len(missing) > 3 else ''} (build it with RefinerNet.from_denoiser)"
        )
    processors = {}
    for name, proc in denoiser.attn_processors.items():
        processors[name] = (
            FusedSelfAttnProcessor(name[: -len(".processor")], bank) if name in wanted else proc
        )
    denoiser.set_attn_processor(processors)
    return bank
