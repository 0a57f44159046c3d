"""Denoiser and RefinerNet: shapes, the deviation embedding, weight copying, gradients, save/load."""

import pytest
import torch

from spatialdreamer.dvg import warp_back_pair
from spatialdreamer.models import RefinerNet, SpatialDreamerDenoiser, build_pipeline, training_losses
from spatialdreamer.models.conditioning import added_time_ids, encode_reference, predict_velocity
from spatialdreamer.synth import make_scene


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _inputs(pipe, batch=1, frames=3, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = pipe.unet.config.latent_channels
    lat = lambda: torch.randn(batch, frames, c, h, w, generator=g)  # noqa: E731
    return dict(
        noisy_latents=lat(),
        rendered_latents=lat(),
        reference_latents=lat(),
        mask_latents=(torch.rand(batch, frames, 1, h, w, generator=g) > 0.7).float(),
        encoder_hidden_states=torch.randn(batch, 1, pipe.unet.config.cross_attention_dim, generator=g),
        added_time_ids=added_time_ids(pipe.unet, batch),
        timestep=torch.tensor(500),
        deviation_strength=torch.full((batch,), 0.2),
    )


def test_denoiser_and_refiner_shapes(pipe):
    x = _inputs(pipe, batch=2, frames=3)
    with torch.no_grad():
        v = predict_velocity(pipe.unet, pipe.refinernet, **x)
    assert v.shape == x["noisy_latents"].shape
    feats = encode_reference(pipe.refinernet, x["reference_latents"], x["encoder_hidden_states"])
    assert len(feats) == 4 and all(f.shape[0] == 6 for f in feats.values())


def test_reference_changes_the_denoiser_output(pipe):
    x = _inputs(pipe)
    with torch.no_grad():
        a = predict_velocity(pipe.unet, pipe.refinernet, **x)
        x["reference_latents"] = x["reference_latents"] + 1.0
        b = predict_velocity(pipe.unet, pipe.refinernet, **x)
    assert (a - b).abs().max() > 1e-4


def test_deviation_embedding_is_added_to_the_time_embedding():
    torch.manual_seed(0)
    unet = build_pipeline("tiny").unet
    sample = torch.randn(1, 2, unet.config.in_channels, 4, 6)
    ehs, ids = torch.randn(1, 1, 32), added_time_ids(unet, 1)
    with torch.no_grad():
        # zero-initialised output layer: pretrained behaviour is untouched at the start
        base = unet(sample, 10, ehs, ids).sample
        torch.testing.assert_close(unet(sample, 10, ehs, ids, deviation_strength=0.9).sample, base)
        torch.nn.init.normal_(unet.deviation_embedding.linear_2.weight, std=0.5)
        captured = []
        hook = unet.time_embedding.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
        low = unet(sample, 10, ehs, ids, deviation_strength=0.1).sample
        high = unet(sample, 10, ehs, ids, deviation_strength=0.9).sample
        hook.remove()
    assert (low - high).abs().max() > 1e-4
    # the hook adds exactly the deviation embedding to time_embedding's output
    plain_emb = unet.time_embedding(unet.time_proj(torch.tensor([10])).float())
    torch.testing.assert_close(captured[0], plain_emb)  # our hook runs after the test hook
    assert len(unet.time_embedding._forward_hooks) == 0  # removed after each call
    torch.testing.assert_close(unet(sample, 10, ehs, ids).sample, base)


def test_denoiser_rejects_wrong_input_channels(pipe):
    with pytest.raises(ValueError, match=r"\[B, F, 97, h, w\]"):
        pipe.unet(torch.randn(1, 2, 8, 4, 6), 1, torch.zeros(1, 1, 32), added_time_ids(pipe.unet, 1))
    with pytest.raises(ValueError, match="2\\*latent_channels"):
        SpatialDreamerDenoiser(in_channels=8, latent_channels=4)


def test_refinernet_from_denoiser_copies_spatial_weights(pipe):
    ref = RefinerNet.from_denoiser(pipe.unet, til_weight=0.25, til_frames=3)
    d, r = pipe.unet.state_dict(), ref.state_dict()
    assert torch.equal(
        r["down_blocks.0.resnets.0.conv1.weight"], d["down_blocks.0.resnets.0.spatial_res_block.conv1.weight"]
    )
    key = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(r[key], d[key])
    latent = pipe.unet.config.latent_channels
    assert torch.equal(r["conv_in.weight"], d["conv_in.weight"][:, :latent])
    assert ref.config.til_weight == 0.25 and ref.config.til_frames == 3
    assert not any("temporal" in k for k in r)


def test_training_losses_reach_both_unets():
    pipe = build_pipeline("tiny", seed=1)
    scene = make_scene(0, height=32, width=48, frames=3)
    pair = warp_back_pair(scene.left, scene.disparity)
    batch = {
        "target": pair.target[None],
        "rendered": pair.back[None],
        "mask": pair.back_holes[None],
        "reference": pair.warped[None],
    }
    torch.nn.init.normal_(pipe.unet.deviation_embedding.linear_2.weight, std=0.1)
    losses = training_losses(
        batch,
        unet=pipe.unet,
        refinernet=pipe.refinernet,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        stereo_loss_weight=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(losses) == {"loss", "diffusion_loss", "stereo_loss", "deviation_strength"}
    torch.testing.assert_close(losses["loss"], losses["diffusion_loss"] + 0.5 * losses["stereo_loss"])
    losses["loss"].backward()
    den = [p.grad for p in pipe.unet.parameters()]
    assert all(g is not None for g in den)
    assert pipe.unet.conv_in.weight.grad.abs().sum() > 0
    assert pipe.unet.deviation_embedding.linear_1.weight.grad.abs().sum() > 0
    ref_grads = {n: p.grad for n, p in pipe.refinernet.named_parameters()}
    assert ref_grads["conv_in.weight"].abs().sum() > 0
    assert ref_grads["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"].abs().sum() > 0
    assert all(p.grad is None for p in pipe.vae.parameters())


def test_training_losses_reject_bad_batches(pipe):
    good = {k: torch.rand(1, 2, 3, 16, 16) for k in ("target", "rendered", "reference")}
    good["mask"] = torch.zeros(1, 2, 1, 16, 16)
    kw = dict(unet=pipe.unet, refinernet=pipe.refinernet, vae=pipe.vae, scheduler=pipe.scheduler)
    with pytest.raises(KeyError, match="reference"):
        training_losses({k: v for k, v in good.items() if k != "reference"}, **kw)
    with pytest.raises(ValueError, match="mask"):
        training_losses({**good, "mask": torch.zeros(1, 2, 16, 16)}, **kw)
    with pytest.raises(ValueError, match="stereo_loss_weight"):
        training_losses(good, stereo_loss_weight=-1.0, **kw)


def test_gradient_checkpointing_gives_the_same_gradients_with_fusion_and_til():
    """Checkpointed blocks recompute fusion and TIL during backward: the state they read must
    still be the forward's (it used to live in a context manager that had already exited)."""

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        pipe = build_pipeline("tiny", seed=3)
        torch.nn.init.normal_(
            pipe.unet.deviation_embedding.linear_2.weight, std=0.1, generator=torch.Generator().manual_seed(0)
        )
        for model in (pipe.unet, pipe.refinernet):
            model.train()
            if checkpointing:
                model.enable_gradient_checkpointing()
        x = _inputs(pipe, frames=3)
        predict_velocity(pipe.unet, pipe.refinernet, **x).square().mean().backward()
        return {
            f"{prefix}.{n}": p.grad.clone()
            for prefix, model in (("unet", pipe.unet), ("refinernet", pipe.refinernet))
            for n, p in model.named_parameters()
            if p.grad is not None
        }

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    assert any(k.startswith("refinernet.down_blocks") for k in plain)  # fusion carries gradient back
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


def test_model_save_load_round_trip_gives_identical_outputs(pipe, tmp_path):
    x = _inputs(pipe, frames=2)
    with torch.no_grad():
        before = predict_velocity(pipe.unet, pipe.refinernet, **x)
    pipe.unet.save_pretrained(tmp_path / "unet")
    pipe.refinernet.save_pretrained(tmp_path / "refinernet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    unet = SpatialDreamerDenoiser.from_pretrained(tmp_path / "unet")
    ref = RefinerNet.from_pretrained(tmp_path / "refinernet")
    assert ref.config.til_weight == pipe.refinernet.config.til_weight
    from spatialdreamer.models import attach_reference_fusion

    attach_reference_fusion(unet, ref)
    with torch.no_grad():
        after = predict_velocity(unet, ref, **x)
    for old, new in ((pipe.unet, unet), (pipe.refinernet, ref)):
        a, b = old.state_dict(), new.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # weights are bit-identical; CPU kernels may round differently on differently aligned
    # (memory-mapped) tensors, so outputs are compared at float32 precision
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_checkpointing_covers_the_temporal_blocks_and_switches_off():
    unet = build_pipeline("tiny").unet
    temporal = [m for n, m in unet.named_modules() if n.endswith("temporal_transformer_blocks.0")]
    assert temporal
    unet.enable_gradient_checkpointing()
    assert all("_unchecked_forward" in vars(m) for m in temporal)
    unet.disable_gradient_checkpointing()
    assert not any("_unchecked_forward" in vars(m) for m in temporal) and not unet.is_gradient_checkpointing
