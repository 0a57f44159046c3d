"""SpatialDreamerPipeline: synth clip → refined view, determinism, windows/tiles, save/load, errors."""

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel

from spatialdreamer.dvg import forward_warp
from spatialdreamer.models import SpatialDreamerPipeline, build_pipeline, get_config, load_pretrained_svd
from spatialdreamer.models.configs import _make_scheduler
from spatialdreamer.synth import make_scene


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clip():
    scene = make_scene(3, height=32, width=48, frames=6)
    warp = forward_warp(scene.left, scene.disparity)
    return warp.image, warp.holes, scene.left


def _run(pipe, clip, frames=4, seed=0, **kw):
    rendered, holes, left = (x[:frames] for x in clip)
    kw.setdefault("num_inference_steps", 2)
    return pipe(rendered, holes, left, generator=torch.Generator().manual_seed(seed), **kw).frames


def test_synth_clip_becomes_a_refined_right_view(pipe, clip):
    rendered, holes, _ = clip
    assert holes[:4].any(), "the synth scene should have disocclusions"
    out = _run(pipe, clip)
    assert out.shape == (4, 3, 32, 48) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    known = ~holes[:4].expand_as(out)
    torch.testing.assert_close(out[known], rendered[:4][known])  # composite keeps rendered pixels
    raw = _run(pipe, clip, composite=False)
    assert not torch.equal(raw, out)


def test_seeded_sampling_is_deterministic(pipe, clip):
    a, b = _run(pipe, clip, seed=7, composite=False), _run(pipe, clip, seed=7, composite=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, _run(pipe, clip, seed=8, composite=False))


def test_windows_and_tiles_cover_long_and_large_inputs(pipe, clip):
    out = _run(pipe, clip, frames=6, window_size=4, window_overlap=2, composite=False)
    assert out.shape == (6, 3, 32, 48) and torch.isfinite(out).all()
    tiled = _run(pipe, clip, frames=4, tile_size=6, tile_overlap=2, composite=False)
    assert tiled.shape == (4, 3, 32, 48) and torch.isfinite(tiled).all()


def test_one_window_covering_the_clip_equals_no_windowing(pipe, clip):
    full = _run(pipe, clip, frames=4, window_size=4, composite=False)
    # windows larger than the clip collapse to one: identical result
    assert torch.equal(full, _run(pipe, clip, frames=4, window_size=16, composite=False))


def test_batched_input_and_odd_sizes(pipe, clip):
    rendered, holes, left = (x[:2, :, :30, :46] for x in clip)
    out = pipe(
        rendered[None].repeat(2, 1, 1, 1, 1),
        holes[None].repeat(2, 1, 1, 1, 1),
        left[None].repeat(2, 1, 1, 1, 1),
        num_inference_steps=1,
        output_type="np",
    ).frames
    assert out.shape == (2, 2, 3, 30, 46)


def test_bad_inputs_give_clear_errors(pipe, clip):
    rendered, holes, left = (x[:2] for x in clip)
    with pytest.raises(ValueError, match=r"masks must be \[T, 1, H, W\]"):
        pipe(rendered, holes.expand(-1, 3, -1, -1), left)
    with pytest.raises(ValueError, match="share batch, frames"):
        pipe(rendered, holes, left[:1])
    with pytest.raises(ValueError, match=r"rendered must be"):
        pipe(rendered[0, 0], holes, left)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pipe(rendered.numpy(), holes, left)
    with pytest.raises(ValueError, match="deviation_strength needs 1 or 1 values"):
        pipe(rendered, holes, left, deviation_strength=[0.1, 0.2])
    with pytest.raises(ValueError, match="output_type"):
        pipe(rendered, holes, left, output_type="pil")
    with pytest.raises(KeyError, match="unknown model config 'huge'"):
        build_pipeline("huge")
    with pytest.raises(FileNotFoundError, match="Pass a Hugging Face id"):
        build_pipeline("tiny", pretrained="/nonexistent/svd-weights")
    with pytest.raises(ValueError, match="v_prediction"):
        SpatialDreamerPipeline(pipe.vae, pipe.unet, pipe.refinernet, _make_scheduler("ddim").__class__())


def test_pipeline_save_load_round_trip(pipe, clip, tmp_path):
    before = _run(pipe, clip, frames=2, composite=False)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "refinernet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = build_pipeline("tiny", pretrained=str(tmp_path))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet).__name__ == "SpatialDreamerDenoiser" and type(loaded.scheduler) is type(
        pipe.scheduler
    )
    torch.testing.assert_close(_run(loaded, clip, frames=2, composite=False), before, rtol=1e-4, atol=1e-4)


def test_init_from_svd_layout_zero_initialises_new_channels(tmp_path, clip):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    svd = UNetSpatioTemporalConditionModel(
        in_channels=8,
        out_channels=4,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        block_out_channels=cfg.block_out_channels,
        addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim,
        layers_per_block=1,
        cross_attention_dim=cfg.cross_attention_dim,
        num_attention_heads=cfg.num_attention_heads,
        num_frames=4,
    )
    svd.save_pretrained(tmp_path / "unet")
    AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    ).save_pretrained(tmp_path / "vae")
    _make_scheduler("euler_edm").save_pretrained(tmp_path / "scheduler")

    pipe = load_pretrained_svd(str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    w = pipe.unet.conv_in.weight
    assert torch.equal(w[:, :8], svd.conv_in.weight) and w[:, 8:].abs().max() == 0
    assert pipe.unet.deviation_embedding.linear_2.weight.abs().max() == 0
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert torch.equal(pipe.refinernet.state_dict()[key], svd.state_dict()[key])
    out = _run(pipe, clip, frames=2, num_inference_steps=2)
    assert out.shape == (2, 3, 32, 48)


def test_bfloat16_pipeline_runs(clip):
    pipe = build_pipeline("tiny", torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.refinernet.dtype == torch.bfloat16
    out = _run(pipe, clip, frames=2, num_inference_steps=1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_image_encoder_conditions_the_denoiser(clip):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from spatialdreamer.models.pipeline import encode_condition_embeddings

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    encoder = CLIPVisionModelWithProjection(vision).eval()
    emb = encode_condition_embeddings(encoder, clip[2][None, :3], 32)
    assert emb.shape == (1, 1, 32) and emb.abs().sum() > 0
    base = build_pipeline("tiny", seed=0)
    with_encoder = SpatialDreamerPipeline(
        base.vae, base.unet, base.refinernet, base.scheduler, image_encoder=encoder
    )
    with_encoder.set_progress_bar_config(disable=True)
    a = _run(with_encoder, clip, frames=2, num_inference_steps=1, composite=False)
    b = _run(base, clip, frames=2, num_inference_steps=1, composite=False)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_full_config_is_the_stable_video_diffusion_layout():
    import inspect

    from spatialdreamer.models.configs import _denoiser_kwargs

    svd_defaults = {
        k: p.default
        for k, p in inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters.items()
    }
    ours = _denoiser_kwargs(get_config("full"))
    for key in (
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "num_attention_heads",
        "cross_attention_dim",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    ):
        want = svd_defaults[key]
        got = tuple(ours[key]) if isinstance(want, tuple) else ours[key]
        assert got == want, key
    assert ours["in_channels"] == 9
    base = _denoiser_kwargs(get_config("base"))
    assert base["down_block_types"] == ours["down_block_types"]
    assert get_config("tiny", til_weight=0.9).til_weight == 0.9
