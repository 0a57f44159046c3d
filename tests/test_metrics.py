"""Metrics against reference implementations and hand-computed cases: PSNR, SSIM, E_warp,
LPIPS (architecture, weight loading, errors) and FVD (Fréchet distance, I3D, extractors)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from spatialdreamer.dvg import dis_flow
from spatialdreamer.metrics import (
    LPIPS,
    FVDModelError,
    I3DFeatures,
    InceptionI3d,
    LPIPSWeightsError,
    e_warp,
    feature_statistics,
    find_backbone_weights,
    find_lpips_weights,
    frechet_distance,
    fvd,
    load_i3d,
    lpips,
    psnr,
    ssim,
    video_features,
)


def _pair(t=3, c=3, h=37, w=53, noise=0.08, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(t, c, h, w, generator=g)
    b = (a + noise * torch.randn(t, c, h, w, generator=g)).clamp(0, 1)
    return a, b


def _sk_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's Gaussian SSIM (Wang et al.), mean over frames."""
    return float(
        np.mean(
            [
                structural_similarity(
                    x.numpy(),
                    y.numpy(),
                    channel_axis=0,
                    data_range=1.0,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                )
                for x, y in zip(a, b, strict=True)
            ]
        )
    )


# --------------------------------------------------------------------------- PSNR / SSIM


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_psnr_matches_scikit_image(noise):
    a, b = _pair(noise=noise)
    ref = np.mean(
        [peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0) for x, y in zip(a, b, strict=True)]
    )
    assert abs(psnr(b, a) - ref) < 1e-3


def test_psnr_hand_computed_offset_and_data_range():
    a = torch.zeros(2, 3, 8, 8)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)
    assert psnr((a + 0.1) * 255, a * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize(("channels", "size"), [(3, (37, 53)), (1, (24, 31)), (3, (11, 11))])
def test_ssim_matches_scikit_image(channels, size):
    a, b = _pair(c=channels, h=size[0], w=size[1], noise=0.1, seed=channels)
    assert abs(ssim(b, a) - _sk_ssim(b, a)) < 1e-3


def test_ssim_agrees_with_scikit_image_on_a_smooth_synth_frame(scenes):
    s = scenes[0]
    shifted = torch.roll(s.left, shifts=2, dims=-1)
    assert abs(ssim(shifted, s.left) - _sk_ssim(shifted, s.left)) < 1e-3


def test_identical_videos_score_perfectly():
    a, _ = _pair()
    assert psnr(a, a) == pytest.approx(100.0)  # MSE floor 1e-10 keeps means finite
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_masked_psnr_counts_only_pixels_inside_the_mask():
    a, b = _pair(t=2, noise=0.1)
    mask = torch.zeros(2, 1, 37, 53, dtype=torch.bool)
    mask[:, :, 10:20, 5:30] = True
    b_outside_garbage = torch.where(mask, b, 1 - a)  # outside the mask: as wrong as can be
    expected = []
    for i in range(2):
        m = mask[i, 0].numpy()
        err = ((b[i].numpy() - a[i].numpy()) ** 2).mean(0)[m].mean()
        expected.append(10 * math.log10(1 / err))
    assert psnr(b_outside_garbage, a, mask) == pytest.approx(float(np.mean(expected)), abs=1e-3)


def test_masked_ssim_over_the_interior_equals_unmasked_scikit_ssim():
    a, b = _pair(noise=0.1)
    mask = torch.zeros(3, 1, 37, 53, dtype=torch.bool)
    mask[..., 5:-5, 5:-5] = True  # scikit-image crops a 5-pixel border (7-tap radius - 1)
    assert abs(ssim(b, a, mask) - _sk_ssim(b, a)) < 1e-3


def test_frames_with_an_empty_mask_are_skipped():
    a, b = _pair(t=3, noise=0.1)
    mask = torch.ones(3, 1, 37, 53, dtype=torch.bool)
    mask[1] = False
    per_frame = psnr(b, a, mask, reduction="none")
    assert torch.isnan(per_frame[1]) and not torch.isnan(per_frame[[0, 2]]).any()
    assert psnr(b, a, mask) == pytest.approx(float(per_frame[[0, 2]].double().mean()), abs=1e-5)
    assert math.isnan(ssim(b, a, torch.zeros_like(mask)))


@pytest.mark.parametrize(
    ("pred", "target", "mask", "message"),
    [
        (torch.rand(2, 3, 16), torch.rand(2, 3, 16), None, r"\[T,C,H,W\]"),
        (torch.rand(2, 4, 16, 16), torch.rand(2, 4, 16, 16), None, r"C in \(1, 3\)"),
        (torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16), None, "same shape"),
        (torch.rand(2, 3, 16, 16) * 255, torch.rand(2, 3, 16, 16), None, "divide by 255"),
        (torch.randint(0, 255, (2, 3, 16, 16)), torch.rand(2, 3, 16, 16), None, "floating point"),
        (
            torch.rand(2, 3, 16, 16),
            torch.rand(2, 3, 16, 16),
            torch.ones(2, 1, 8, 8, dtype=torch.bool),
            r"mask",
        ),
        (np.zeros((2, 3, 16, 16)), torch.rand(2, 3, 16, 16), None, "torch.Tensor"),
    ],
)
def test_bad_inputs_give_one_line_errors(pred, target, mask, message):
    for metric in (psnr, ssim):
        with pytest.raises((ValueError, TypeError), match=message) as info:
            metric(pred, target, mask)
        assert "\n" not in str(info.value)


def test_ssim_refuses_frames_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))


# --------------------------------------------------------------------------- E_warp


def _texture(h=40, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(
        0, 1
    )[0]


def test_e_warp_of_a_static_video_is_zero():
    video = _texture().unsqueeze(0).repeat(4, 1, 1, 1)
    assert e_warp(video) < 1e-10
    zero = torch.zeros(3, 2, 40, 64)
    assert e_warp(video, flow=zero, backward_flow=zero) < 1e-10  # bilinear round-off only


def test_e_warp_of_a_shifted_static_scene_with_exact_flow_is_zero():
    base = _texture(w=80)
    video = torch.stack([torch.roll(base, shifts=2 * t, dims=-1) for t in range(4)])[
        ..., 8:-8
    ]  # no wrap seen
    flow = torch.zeros(3, 2, 40, 64)
    flow[:, 0] = 2.0  # frame_t(p) = frame_{t+1}(p + (2, 0))
    assert e_warp(video, flow=flow, backward_flow=-flow) < 1e-10
    # the DIS default recovers the motion well enough to stay near zero, far below flicker
    dis = e_warp(video)
    flicker = video * torch.tensor([1.0, 0.7, 1.0, 0.7]).view(4, 1, 1, 1)
    assert dis < 2e-3
    assert e_warp(flicker, reference=video) > 20 * dis


def test_e_warp_mask_and_reduction():
    video = _texture().unsqueeze(0).repeat(3, 1, 1, 1)
    video[2, :, :, :32] = 0.0  # a change in the left half between frames 1 and 2
    mask = torch.zeros(3, 1, 40, 64, dtype=torch.bool)
    mask[..., 40:] = True  # right half only
    zero = torch.zeros(2, 2, 40, 64)
    per_pair = e_warp(video, flow=zero, backward_flow=zero, reduction="none")
    assert per_pair[0] < 1e-10 and per_pair[1] > 0.01
    assert e_warp(video, mask, flow=zero, backward_flow=zero) < 1e-10


def test_e_warp_uses_the_reference_video_for_flow():
    base = _texture(w=80)
    moving = torch.stack([torch.roll(base, shifts=2 * t, dims=-1) for t in range(3)])[..., 8:-8]
    still = moving[:1].repeat(3, 1, 1, 1)
    # a still video judged against true motion is inconsistent with it
    assert e_warp(still, reference=moving) > 10 * e_warp(still)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"video": torch.rand(1, 3, 16, 16)}, "at least 2 frames"),
        (
            {"video": torch.rand(3, 3, 16, 16), "flow": torch.zeros(2, 2, 16, 16)},
            "both flow and backward_flow",
        ),
        (
            {
                "video": torch.rand(3, 3, 16, 16),
                "flow": torch.zeros(3, 2, 16, 16),
                "backward_flow": torch.zeros(3, 2, 16, 16),
            },
            r"\[T-1,2,H,W\]",
        ),
        ({"video": torch.rand(3, 3, 16, 16), "reference": torch.rand(2, 3, 16, 16)}, "reference"),
        ({"video": torch.rand(3, 3, 16, 16), "mask": torch.ones(3, 1, 8, 8, dtype=torch.bool)}, "mask"),
    ],
)
def test_e_warp_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        e_warp(**kwargs)


def test_dis_flow_direction_matches_the_e_warp_convention():
    base = _texture(w=80)
    a, b = base[..., 8:-8], torch.roll(base, shifts=3, dims=-1)[..., 8:-8]
    flow = dis_flow(a[None], b[None])
    assert float(flow[0, 0, 10:-10, 10:-10].median()) == pytest.approx(3.0, abs=0.3)


# --------------------------------------------------------------------------- LPIPS

# torchvision's ImageNet checkpoints: (key, shape) of every convolution LPIPS uses
_ALEX_KEYS = {
    "features.0.weight": (64, 3, 11, 11),
    "features.3.weight": (192, 64, 5, 5),
    "features.6.weight": (384, 192, 3, 3),
    "features.8.weight": (256, 384, 3, 3),
    "features.10.weight": (256, 256, 3, 3),
}
_VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def test_lpips_backbones_have_torchvision_checkpoint_layouts():
    alex = LPIPS("alex", pretrained=False).features.state_dict()
    assert {k: tuple(v.shape) for k, v in alex.items() if k.endswith("weight")} == {
        k.removeprefix("features."): s for k, s in _ALEX_KEYS.items()
    }
    vgg = LPIPS("vgg", pretrained=False).features.state_dict()
    assert sorted(int(k.split(".")[0]) for k in vgg if k.endswith("weight")) == _VGG_CONVS
    assert tuple(vgg["28.weight"].shape) == (512, 512, 3, 3)


def test_lpips_is_zero_for_identical_and_grows_with_distortion():
    model = LPIPS("alex", pretrained=False)
    a, _ = _pair(t=2, h=64, w=64, noise=0.0)
    small = lpips((a + 0.02 * torch.randn_like(a)).clamp(0, 1), a, model=model)
    large = lpips((a + 0.3 * torch.randn_like(a)).clamp(0, 1), a, model=model)
    assert lpips(a, a, model=model) < 1e-7
    assert 0 < small < large


def test_masked_lpips_averages_the_distance_map_over_the_mask():
    model = LPIPS("alex", pretrained=False)
    a, _ = _pair(t=2, h=64, w=64, noise=0.0)
    b = a.clone()
    b[..., :20, :20] = torch.rand(2, 3, 20, 20)  # damage in the top-left corner only
    damaged = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    damaged[..., :20, :20] = True
    intact = torch.zeros_like(damaged)
    intact[..., 44:, 44:] = True
    assert lpips(b, a, damaged, model=model) > 3 * lpips(b, a, intact, model=model)
    # a full mask gives the plain score up to the upsampling of the coarse layers' maps
    full = torch.ones_like(damaged)
    assert lpips(b, a, full, model=model) == pytest.approx(lpips(b, a, model=model), rel=0.05)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_lpips_loads_backbone_and_linear_weights_from_files(tmp_path, fmt):
    source = LPIPS("alex", pretrained=False)
    backbone = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    linear = {f"lin{i}.model.1.weight": p.detach().clone() for i, p in enumerate(source.lins)}
    if fmt == "pth":
        torch.save(backbone, tmp_path / "alexnet-owt-test.pth")
        torch.save(linear, tmp_path / "alex.pth")
        paths = tmp_path / "alexnet-owt-test.pth", tmp_path / "alex.pth"
    else:
        save_file(backbone, tmp_path / "alexnet.safetensors")
        save_file(linear, tmp_path / "alex.safetensors")
        paths = tmp_path / "alexnet.safetensors", tmp_path / "alex.safetensors"
    loaded = LPIPS("alex", backbone_weights=paths[0], lpips_weights=paths[1])
    a, b = _pair(t=2, h=64, w=64, noise=0.2)
    assert lpips(b, a, model=loaded) == pytest.approx(lpips(b, a, model=source), rel=1e-6)


def test_lpips_finds_weights_in_the_hub_cache_and_an_installed_lpips_package(tmp_path, monkeypatch):
    source = LPIPS("alex", pretrained=False)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(
        {f"features.{k}": v for k, v in source.features.state_dict().items()},
        hub / "alexnet-owt-7be5be79.pth",
    )
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    torch.save(
        {f"lin{i}.model.1.weight": p.detach() for i, p in enumerate(source.lins)},
        package / "weights/v0.1/alex.pth",
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    assert find_backbone_weights("alex") == hub / "alexnet-owt-7be5be79.pth"
    assert find_lpips_weights("alex") == package / "weights" / "v0.1" / "alex.pth"
    a, b = _pair(t=1, h=64, w=64, noise=0.2)
    assert lpips(b, a) == pytest.approx(lpips(b, a, model=source), rel=1e-6)


def test_lpips_without_weights_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    module = sys.modules["spatialdreamer.metrics.lpips"]  # the package re-exports a function of that name
    monkeypatch.setattr(module, "_hub_checkpoint_dirs", lambda: [tmp_path / "hub"])
    with pytest.raises(LPIPSWeightsError, match="backbone_weights=PATH") as info:
        LPIPS("alex")
    assert "\n" not in str(info.value)
    source = LPIPS("vgg", pretrained=False)
    torch.save({f"features.{k}": v for k, v in source.features.state_dict().items()}, tmp_path / "vgg16.pth")
    with pytest.raises(LPIPSWeightsError, match="not found"):
        LPIPS("vgg", backbone_weights=tmp_path / "vgg16.pth", lpips_weights=tmp_path / "missing.pth")
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(LPIPSWeightsError, match="lin0..lin4"):
        LPIPS("vgg", backbone_weights=tmp_path / "vgg16.pth", lpips_weights=tmp_path / "partial.pth")
    with pytest.raises(LPIPSWeightsError, match="torchvision keys"):
        LPIPS("alex", backbone_weights=tmp_path / "vgg16.pth", lpips_weights=tmp_path / "partial.pth")


# --------------------------------------------------------------------------- FVD


def test_frechet_distance_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), rng.normal(size=(90, 6)) * 1.3 + 0.2
    m1, s1 = feature_statistics(x)
    m2, s2 = feature_statistics(y)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 32))
    assert frechet_distance(*feature_statistics(x), *feature_statistics(x)) == pytest.approx(0.0, abs=1e-8)
    d = frechet_distance(*feature_statistics(x), *feature_statistics(x + 0.5))
    assert d == pytest.approx(32 * 0.25, rel=1e-6)


def _colour_stats(videos: torch.Tensor) -> torch.Tensor:
    """A small pluggable extractor: per-channel mean and std over each video."""
    return torch.cat([videos.mean((1, 3, 4)), videos.std((1, 3, 4))], 1)


def test_fvd_with_a_pluggable_extractor():
    g = torch.Generator().manual_seed(0)
    real = [torch.rand(4, 3, 16, 16, generator=g) * 0.8 for _ in range(6)]
    same = [v.clone() for v in real]
    brighter = [(v + 0.2).clamp(0, 1) for v in real]
    assert fvd(same, real, _colour_stats) == pytest.approx(0.0, abs=1e-8)
    assert fvd(brighter, real, _colour_stats) > 0.1
    # with masks, differences outside them do not count
    masks = [torch.zeros(4, 1, 16, 16, dtype=torch.bool) for _ in real]
    for m in masks:
        m[..., :8] = True
    half = [torch.cat([v[..., :8], b[..., 8:]], -1) for v, b in zip(real, brighter, strict=True)]
    assert fvd(half, real, _colour_stats, masks) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="one shape"):
        video_features([real[0], torch.rand(5, 3, 16, 16)], _colour_stats)
    with pytest.raises(ValueError, match="N >= 2"):
        fvd(real[:1], real[:1], _colour_stats)


def test_i3d_state_dict_has_the_pytorch_i3d_layout():
    state = InceptionI3d().state_dict()
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_2c_3x3.bn.running_var": (192,),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
        "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert (
        sum(v.numel() for k, v in state.items() if "num_batches" not in k and "running" not in k) == 12697264
    )


def test_i3d_same_padding_halves_sizes_like_tensorflow():
    net = InceptionI3d(num_classes=5).eval()
    with torch.no_grad():
        feats = net.features(torch.zeros(1, 3, 16, 64, 96))
    assert tuple(feats.shape) == (1, 1024, 2, 2, 3)


@pytest.fixture(scope="module")
def i3d_files(tmp_path_factory):
    """A random InceptionI3d saved as an old-style .pt (no num_batches_tracked) and safetensors."""
    torch.manual_seed(0)
    net = InceptionI3d(num_classes=7).eval()
    for m in net.modules():  # non-trivial BN statistics, so that loading them is checked
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    root = tmp_path_factory.mktemp("i3d")
    state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, root / "rgb_test.pt")
    save_file(state, root / "rgb_test.safetensors")
    return net, root


@pytest.mark.parametrize("name", ["rgb_test.pt", "rgb_test.safetensors"])
def test_i3d_features_load_a_state_dict(i3d_files, name):
    net, root = i3d_files
    videos = torch.rand(2, 8, 3, 40, 40)
    ours = I3DFeatures(root / name, size=32)(videos)
    direct = I3DFeatures(model=net, size=32)(videos)
    assert ours.shape == (2, 7)
    assert torch.allclose(ours, direct, atol=1e-5)


def test_i3d_torchscript_with_the_stylegan_v_signature_gets_its_keyword_arguments(tmp_path):
    class Scripted(torch.nn.Module):
        def forward(
            self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
        ) -> torch.Tensor:
            flags = torch.tensor([float(rescale), float(resize), float(return_features)])
            return torch.cat([x.mean((1, 2, 3, 4)).unsqueeze(1), flags.expand(x.shape[0], 3)], 1)

    torch.jit.script(Scripted()).save(str(tmp_path / "i3d_torchscript.pt"))
    feats = I3DFeatures(tmp_path / "i3d_torchscript.pt", size=16)(torch.full((2, 4, 3, 20, 20), 0.75))
    assert feats[:, 0].tolist() == pytest.approx([0.5, 0.5])  # [0, 1] → [-1, 1]
    assert feats[0, 1:].tolist() == [0.0, 0.0, 1.0]  # rescale=False, resize=False, return_features=True


def test_i3d_without_weights_says_what_to_pass(tmp_path):
    with pytest.raises(FVDModelError, match="i3d=PATH"):
        I3DFeatures(None)
    with pytest.raises(FVDModelError, match="not found"):
        load_i3d(tmp_path / "missing.pt")
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(FVDModelError, match="not an InceptionI3d state dict"):
        load_i3d(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(FVDModelError, match="not a readable"):
        load_i3d(tmp_path / "text.pt")
    with pytest.raises(FVDModelError, match="i3d=PATH"):
        fvd([torch.rand(2, 3, 16, 16)] * 2, [torch.rand(2, 3, 16, 16)] * 2)
