"""Transformers depth backend with tiny random-initialised DepthAnything and DPT models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from spatialdreamer.depth import (
    DepthModelError,
    TransformersDepthEstimator,
    depth_polarity,
    fit_input_size,
    load_depth_estimator,
)


def _save_depth_anything(path, kind: str) -> str:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type=kind,
        max_depth=20,
    )
    torch.manual_seed(1)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(path)
    processor = {  # the layout of depth-anything/Depth-Anything-V2-Small-hf, with a small size
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "ensure_multiple_of": 14,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "keep_aspect_ratio": True,
        "resample": 3,
        "size": {"height": 56, "width": 56},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(path)


@pytest.fixture(scope="module")
def depth_anything_dir(tmp_path_factory):
    return _save_depth_anything(tmp_path_factory.mktemp("da_relative"), "relative")


@pytest.fixture(scope="module")
def depth_anything_metric_dir(tmp_path_factory):
    return _save_depth_anything(tmp_path_factory.mktemp("da_metric"), "metric")


@pytest.fixture(scope="module")
def dpt_dir(tmp_path_factory):
    """A plain-ViT DPT (the Intel/dpt-large layout), no preprocessor config: defaults apply."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
    )
    path = tmp_path_factory.mktemp("dpt")
    torch.manual_seed(2)
    DPTForDepthEstimation(config).eval().save_pretrained(path)
    return str(path)


def _raw_at_input(est: TransformersDepthEstimator, frames: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        raw = est.model(pixel_values=est.preprocess(frames)).predicted_depth.unsqueeze(1).float()
    return F.interpolate(raw, size=frames.shape[-2:], mode="bilinear", align_corners=False)


def test_depth_anything_gives_float32_inverse_depth_at_input_resolution(depth_anything_dir):
    est = load_depth_estimator(depth_anything_dir, device="cpu")
    frames = torch.rand(3, 3, 45, 70)
    out = est(frames)
    assert isinstance(est, TransformersDepthEstimator)
    assert out.shape == (3, 1, 45, 70) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert est.polarity == "inverse" and est.dtype == torch.float32 and est.name == depth_anything_dir
    # relative output is used as it is (no inversion)
    torch.testing.assert_close(out, _raw_at_input(est, frames).clamp(min=0))


def test_preprocessing_follows_the_processor_on_tensors(depth_anything_dir):
    est = TransformersDepthEstimator(depth_anything_dir, device="cpu")
    spec = est.input_spec
    assert spec.target == (56, 56) and spec.multiple == 14 and spec.keep_aspect and spec.mode == "bicubic"
    pixels = est.preprocess(torch.rand(2, 3, 90, 160))
    assert pixels.shape == (2, 3, 56, 98)  # rows to 56, aspect kept, multiples of 14
    black = est.preprocess(torch.zeros(1, 3, 56, 56))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(black[0, :, 0, 0], -mean / std)


def test_batches_are_processed_per_item_in_chunks(depth_anything_dir):
    est = TransformersDepthEstimator(depth_anything_dir, device="cpu", max_batch_size=2)
    frames = torch.rand(5, 3, 40, 60)
    batched = est(frames)
    single = torch.cat([est(frames[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # frames are not mixed up or broadcast


def test_metric_model_output_is_inverted(depth_anything_metric_dir):
    est = TransformersDepthEstimator(depth_anything_metric_dir, device="cpu")
    assert est.polarity == "metric" == depth_polarity(est.model.config)
    frames = torch.rand(2, 3, 42, 56)
    out = est(frames)
    depth = _raw_at_input(est, frames)
    assert (depth > 0).all()
    torch.testing.assert_close(out, 1.0 / depth.clamp(min=1e-3))
    # farther (larger metric depth) → smaller output
    flat_d, flat_o = depth.flatten(), out.flatten()
    assert flat_o[flat_d.argmax()] < flat_o[flat_d.argmin()]
    forced = TransformersDepthEstimator(depth_anything_metric_dir, device="cpu", polarity="inverse")
    torch.testing.assert_close(forced(frames), depth)


def test_dpt_vit_gets_square_input_and_full_resolution_output(dpt_dir):
    est = load_depth_estimator(dpt_dir, device="cpu", max_batch_size=4)
    assert est.polarity == "inverse"
    assert not est.input_spec.keep_aspect and est.input_spec.target == (32, 32)
    assert est.preprocess(torch.rand(1, 3, 48, 80)).shape == (1, 3, 32, 32)
    out = est(torch.rand(2, 3, 48, 80))
    assert out.shape == (2, 1, 48, 80) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_fit_input_size_matches_the_transformers_processor_rule():
    assert fit_input_size(1080, 1920, (518, 518), 14) == (518, 924)
    assert fit_input_size(1920, 1080, (518, 518), 14) == (924, 518)
    assert fit_input_size(480, 640, (384, 384), 32, keep_aspect=False) == (384, 384)
    # upscaling: the side whose scale is closer to 1 (the width here) decides
    assert fit_input_size(3, 5, (56, 56), 14) == (28, 56)
    assert fit_input_size(10, 10, (56, 56), 14) == (56, 56)
    with pytest.raises(ValueError, match="positive"):
        fit_input_size(0, 10, (56, 56), 14)


@pytest.mark.parametrize("kind", ["hub_id", "missing_dir", "empty_dir"])
def test_unloadable_model_raises_one_clear_error(kind, tmp_path):
    name = {
        "hub_id": "no-such-org/no-such-depth-model",
        "missing_dir": str(tmp_path / "nowhere" / "model"),
        "empty_dir": str(tmp_path),
    }[kind]
    with pytest.raises(DepthModelError) as info:
        load_depth_estimator(name, device="cpu", local_files_only=True, cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    assert "\n" not in message
    assert "local directory" in message and "Hugging Face cache" in message
    assert "--depth-model parallax" in message and name in message
    assert isinstance(info.value, RuntimeError)


def test_device_handling(depth_anything_dir):
    est = TransformersDepthEstimator(depth_anything_dir, device="cpu")
    assert est.device == torch.device("cpu") and next(est.model.parameters()).device.type == "cpu"
    assert est(torch.rand(1, 3, 28, 28, dtype=torch.float64)).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(DepthModelError, match="CUDA is not available"):
            TransformersDepthEstimator(depth_anything_dir, device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        TransformersDepthEstimator(depth_anything_dir, device="not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_in_fp16_and_returns_float32_on_the_gpu(depth_anything_dir):
    est = TransformersDepthEstimator(depth_anything_dir, device="auto", max_batch_size=2)
    assert est.device.type == "cuda" and est.dtype == torch.float16
    assert next(est.model.parameters()).dtype == torch.float16
    frames = torch.rand(3, 3, 45, 70)
    out = est(frames)
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == (3, 1, 45, 70)
    ref = TransformersDepthEstimator(depth_anything_dir, device="cpu")(frames)
    assert torch.corrcoef(torch.stack([out.cpu().flatten(), ref.flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize(
    "frames, match",
    [
        (torch.rand(3, 32, 32), r"\[B,3,H,W\]"),
        (torch.rand(2, 1, 32, 32), r"\[B,3,H,W\]"),
        (torch.zeros(0, 3, 32, 32), "non-empty"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_bad_frames_are_rejected_with_the_expected_shape(depth_anything_dir, frames, match):
    est = TransformersDepthEstimator(depth_anything_dir, device="cpu")
    with pytest.raises(ValueError, match=match):
        est(frames)
