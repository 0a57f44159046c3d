"""Reference fusion and temporal interaction learning processors, against their definitions."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from spatialdreamer.models import (
    FusedSelfAttnProcessor,
    ReferenceBank,
    RefinerAttnProcessor,
    temporal_neighbours,
)


def _attention(dim: int = 16, heads: int = 2) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, out_bias=True)
    return attn.eval()


def _reference_attention(attn: Attention, q_tokens: torch.Tensor, kv_tokens: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out by hand: queries from ``q_tokens``, keys/values from ``kv_tokens``."""
    b, n, _ = q_tokens.shape
    h = attn.heads

    def split(x):
        return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)

    q, k, v = split(attn.to_q(q_tokens)), split(attn.to_k(kv_tokens)), split(attn.to_v(kv_tokens))
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[0](out)


def test_fusion_equals_first_half_of_self_attention_over_concatenated_tokens():
    attn = _attention()
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 6, 16, generator=g), torch.randn(3, 6, 16, generator=g)
    bank = ReferenceBank()
    attn.set_processor(FusedSelfAttnProcessor("layer", bank))
    bank.use({"layer": r})
    with torch.no_grad():
        fused = attn(x)
    both = torch.cat([x, r], dim=1)  # feature maps stacked along the height axis = appended tokens
    with torch.no_grad():
        full = _reference_attention(attn, both, both)
    torch.testing.assert_close(fused, full[:, :6], rtol=1e-5, atol=1e-5)


def test_fusion_pairs_each_frame_with_its_own_reference_frame():
    attn = _attention()
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(4, 5, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    bank = ReferenceBank()
    attn.set_processor(FusedSelfAttnProcessor("layer", bank))
    r2 = r.clone()
    r2[2] += 1.0
    with torch.no_grad():
        bank.use({"layer": r})
        a = attn(x)
        bank.use({"layer": r2})
        b = attn(x)
    changed = (a - b).abs().flatten(1).amax(dim=1) > 1e-6
    assert changed.tolist() == [False, False, True, False]


def test_fusion_without_features_in_use_is_plain_self_attention_and_checks_shapes():
    attn = _attention()
    x = torch.randn(2, 5, 16)
    bank = ReferenceBank()
    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(FusedSelfAttnProcessor("layer", bank))
        torch.testing.assert_close(attn(x), plain)
        bank.use({"layer": torch.randn(3, 5, 16)})
        with pytest.raises(ValueError, match="one reference frame"):
            attn(x)
        bank.use({"other": torch.randn(2, 5, 16)})
        with pytest.raises(KeyError, match="layer"):
            attn(x)
        bank.clear()
        torch.testing.assert_close(attn(x), plain)
    with pytest.raises(ValueError, match="no RefinerNet features"):
        bank.use({})


def test_til_at_weight_one_equals_plain_self_attention():
    attn = _attention()
    x = torch.randn(6, 5, 16)
    bank = ReferenceBank()
    bank.num_frames = 3
    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(RefinerAttnProcessor("layer", bank, til_weight=1.0, til_frames=2))
        torch.testing.assert_close(attn(x), plain, rtol=1e-5, atol=1e-6)


def test_til_blend_matches_its_definition():
    attn = _attention()
    lam, frames = 0.3, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2 * frames, 5, 16, generator=g)  # 2 videos × 4 frames, flattened b*F + f
    bank = ReferenceBank()
    bank.num_frames = frames
    attn.set_processor(RefinerAttnProcessor("layer", bank, til_weight=lam, til_frames=2))
    with torch.no_grad():
        got = attn(x)
        nbrs = temporal_neighbours(frames, 2)
        expected = torch.empty_like(got)
        for b in range(2):
            for t in range(frames):
                k = b * frames + t
                own = _reference_attention(attn, x[k : k + 1], x[k : k + 1])
                cross = [
                    _reference_attention(attn, x[k : k + 1], x[b * frames + i : b * frames + i + 1])
                    for i in nbrs[t]
                ]
                # to_out is affine, so blending after it equals blending before it
                expected[k] = (lam * own + (1 - lam) * torch.stack(cross).mean(0))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_til_records_its_augmented_output_for_the_denoiser():
    """The denoiser fuses aug_r (after temporal interaction), not the tokens entering attention."""
    attn = _attention()
    x = torch.randn(4, 5, 16)
    bank = ReferenceBank()
    bank.num_frames = 2
    attn.set_processor(RefinerAttnProcessor("layer", bank, til_weight=0.5, til_frames=1))
    with torch.no_grad(), bank.record() as feats:
        out = attn(x)
    assert torch.equal(feats["layer"], out)
    with torch.no_grad():  # ... and that output really carries the other frame (TIL is on)
        plain = _reference_attention(attn, x, x)
    assert (feats["layer"] - plain).abs().max() > 1e-3
    assert bank.features == {} and not bank.recording


def test_temporal_neighbours_nearest_frames_at_clip_edges():
    assert temporal_neighbours(4, 2).tolist() == [[1, 2], [0, 2], [1, 3], [2, 1]]
    assert temporal_neighbours(1, 3).shape == (1, 0)
    assert temporal_neighbours(3, 5).shape == (3, 2)
    with pytest.raises(ValueError):
        RefinerAttnProcessor("x", ReferenceBank(), til_weight=1.5)


def test_plain_processor_reference_is_diffusers_default():
    attn = _attention()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference_attention(attn, x, x), rtol=1e-5, atol=1e-5)
    assert isinstance(attn.processor, AttnProcessor2_0)
