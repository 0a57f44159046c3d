import pytest
import torch

from spatialdreamer.dvg import forward_warp


def _psnr_on(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(1, keepdim=True)[mask].mean()
    return float(10 * torch.log10(1.0 / mse))


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def _row(values, disparity):
    img = torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)
    d = torch.tensor(disparity, dtype=torch.float32).view(1, 1, 1, -1)
    return img, d


def test_warp_matches_synth_right_view_on_visible_pixels(scenes):
    for scene in scenes:
        out = forward_warp(scene.left, scene.disparity)
        visible = ~scene.occlusion & ~out.holes
        assert _psnr_on(out.image, scene.right, visible) > 35.0
        assert visible.float().mean() > 0.85


def test_warp_holes_match_true_occlusion(scenes):
    for scene in scenes:
        out = forward_warp(scene.left, scene.disparity)
        assert _iou(out.holes, scene.occlusion) > 0.85


def test_warped_disparity_is_the_right_view_disparity(scenes):
    scene = scenes[0]
    out = forward_warp(scene.left, scene.disparity)
    visible = ~scene.occlusion & ~out.holes
    err = (out.disparity - scene.disparity_right).abs()[visible]
    assert float(err.median()) < 0.01


def test_integer_shift_is_exact_with_right_border_holes():
    img = torch.rand(2, 3, 5, 12)
    out = forward_warp(img, torch.full((2, 1, 5, 12), 3.0))
    assert torch.equal(out.image[..., :9], img[..., 3:])
    assert out.holes[..., 9:].all() and not out.holes[..., :9].any()
    assert torch.equal(out.source_x[0, 0, 0, :9], torch.arange(3.0, 12.0))


def test_subpixel_shift_interpolates_a_ramp_exactly():
    ramp = torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 3, 20).contiguous()
    out = forward_warp(ramp, torch.full((1, 1, 3, 20), 2.25))
    expected = torch.arange(17.0) + 2.25
    assert torch.allclose(out.image[0, 0, :, :17], expected.expand(3, 17), atol=1e-5)
    # the last source pixel lands at 16.75 and covers half a pixel either side, no more
    assert out.image[0, 0, 0, 17] == 19.0 and out.holes[..., 18:].all()


def test_slanted_surface_is_stretched_without_holes():
    w = 64
    d = torch.linspace(0.0, 20.0, w).view(1, 1, 1, w)  # 0.32 px more disparity per pixel
    out = forward_warp(torch.rand(1, 3, 1, w), d)
    assert not out.holes[..., :40].any()


def _nearest_wins_reference(values, disparity):
    """Brute force for integer disparities: the largest disparity landing on a column wins."""
    w = len(values)
    best = [None] * w
    for x, (v, d) in enumerate(zip(values, disparity, strict=True)):
        t = x - d
        if 0 <= t < w and (best[t] is None or d > best[t][1]):
            best[t] = (v, d)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_nearest_source_wins_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    w = 96
    disparity = torch.zeros(w, dtype=torch.long)
    for _ in range(6):  # crossing layers at random depths
        start = int(torch.randint(0, w - 8, (1,), generator=g))
        length = int(torch.randint(1, 20, (1,), generator=g))
        disparity[start : start + length] = int(torch.randint(1, 16, (1,), generator=g))
    values = torch.randperm(w, generator=g).float()
    img, d = _row(values.tolist(), disparity.float().tolist())
    # steps of 1 px are depth edges here, not one slanted surface
    out = forward_warp(img, d, edge_threshold=0.5)
    ref = _nearest_wins_reference(values.tolist(), disparity.tolist())
    for t in range(w):
        if ref[t] is None:
            assert out.holes[0, 0, 0, t], f"column {t}: nothing lands here, must be a hole"
        elif not out.holes[0, 0, 0, t]:
            assert float(out.image[0, 0, 0, t]) == ref[t][0], f"column {t}: a farther pixel won"


def test_thin_pole_does_not_hide_the_wall_beside_it():
    d = [0.0] * 21
    d[10:13] = [8.0] * 3
    out = forward_warp(*_row(list(range(21)), d))
    assert out.image[0, 0, 0, 5:10].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert out.holes[0, 0, 0].nonzero().flatten().tolist() == [10, 11, 12]


def test_background_through_a_gap_in_the_foreground_is_a_layered_hole():
    d = [0.0] * 26
    d[10:15] = [10.0] * 5  # near part of an object
    d[15:20] = [8.0] * 5  # its farther part: a 2 px step opens a gap between them
    out = forward_warp(*_row(list(range(26)), d))
    holes = out.holes[0, 0, 0]
    # background pixels 5 and 6 would land in the gap between the two parts: hidden
    assert holes[5] and holes[6]
    assert out.image[0, 0, 0, :5].tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert out.image[0, 0, 0, 7:12].tolist() == [15.0, 16.0, 17.0, 18.0, 19.0]


def test_invalid_sources_neither_cover_nor_occlude():
    img = torch.arange(10.0).view(1, 1, 1, 10)
    valid = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    valid[..., 4] = False
    out = forward_warp(img, torch.zeros(1, 1, 1, 10), valid=valid)
    assert out.holes[0, 0, 0].nonzero().flatten().tolist() == [4]


def test_towards_left_mirrors_towards_right():
    img, d = torch.rand(2, 3, 8, 40), torch.rand(2, 1, 8, 40) * 6
    left = forward_warp(img, d, towards="left")
    mirrored = forward_warp(img.flip(-1), d.flip(-1))
    assert torch.equal(left.image, mirrored.image.flip(-1))
    assert torch.equal(left.holes, mirrored.holes.flip(-1))
    assert torch.equal(left.disparity, mirrored.disparity.flip(-1))


def test_batch_equals_items(scenes):
    img = torch.cat([s.left[:2] for s in scenes])
    disp = torch.cat([s.disparity[:2] for s in scenes])
    batched = forward_warp(img, disp)
    for i in range(img.shape[0]):
        single = forward_warp(img[i : i + 1], disp[i : i + 1])
        assert torch.equal(batched.image[i : i + 1], single.image)
        assert torch.equal(batched.holes[i : i + 1], single.holes)


def test_cpu_result_is_deterministic_across_runs_and_thread_counts(scenes):
    scene = scenes[1]
    first = forward_warp(scene.left, scene.disparity)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # conftest runs tests on one thread
        second = forward_warp(scene.left, scene.disparity)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first.image, second.image) and torch.equal(first.holes, second.holes)


def test_half_precision_image_keeps_its_dtype():
    out = forward_warp(torch.rand(1, 3, 4, 16, dtype=torch.float16), torch.ones(1, 1, 4, 16))
    assert out.image.dtype == torch.float16 and out.holes.dtype == torch.bool


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(scenes):
    scene = scenes[0]
    cpu = forward_warp(scene.left, scene.disparity)
    gpu = forward_warp(scene.left.cuda(), scene.disparity.cuda())
    assert torch.allclose(gpu.image.cpu(), cpu.image, atol=1e-5)
    assert (gpu.holes.cpu() != cpu.holes).float().mean() < 1e-3


@pytest.mark.parametrize(
    ("image", "disparity", "message"),
    [
        (torch.rand(3, 8, 8), torch.zeros(1, 1, 8, 8), r"image must be \[B,C,H,W\]"),
        (torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8), r"disparity must be \[B,1,H,W\]"),
        (torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 8, 9), r"disparity must be \[B,1,H,W\]"),
        (torch.randint(0, 255, (1, 3, 8, 8)), torch.zeros(1, 1, 8, 8), "floating point"),
        (torch.rand(1, 3, 8, 1), torch.zeros(1, 1, 8, 1), "at least 2 pixels wide"),
    ],
)
def test_bad_inputs_raise_clear_errors(image, disparity, message):
    with pytest.raises((ValueError, TypeError), match=message):
        forward_warp(image, disparity)


def test_bad_options_raise_clear_errors():
    img, d = torch.rand(1, 3, 4, 8), torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="towards"):
        forward_warp(img, d, towards="up")
    with pytest.raises(ValueError, match="edge_threshold"):
        forward_warp(img, d, edge_threshold=2.0)
    with pytest.raises(ValueError, match="valid"):
        forward_warp(img, d, valid=torch.ones(1, 1, 4, 8))


def test_row_blocks_give_the_same_result(scenes, monkeypatch):
    import spatialdreamer.dvg.warp as warp_module

    scene = scenes[0]
    whole = forward_warp(scene.left, scene.disparity)
    monkeypatch.setattr(warp_module, "_BLOCK_PIXELS", 7 * scene.left.shape[-1])
    blocked = forward_warp(scene.left, scene.disparity)
    for name in ("image", "holes", "disparity", "source_x"):
        assert torch.equal(getattr(whole, name), getattr(blocked, name))


def test_noisy_disparity_keeps_scratch_memory_bounded():
    """Every pixel a depth edge: the work must stay linear in the number of pixels."""
    out = forward_warp(torch.rand(1, 3, 64, 256), torch.rand(1, 1, 64, 256) * 40)
    assert out.holes.any() and (~out.holes).any()


def _assert_same_warp(a, b):
    for name in ("image", "holes", "disparity", "source_x"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), f"{name} differs"


def _random_rows(seed, smooth):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 3, 12, 257, generator=g)
    disparity = torch.rand(2, 1, 12, 257, generator=g) * 40
    if smooth:  # slanted surfaces with a few depth edges, as in real footage
        disparity = torch.nn.functional.avg_pool2d(disparity, (1, 9), 1, (0, 4)) * 3
    valid = torch.rand(2, 1, 12, 257, generator=g) > 0.1
    return img, disparity, valid


@pytest.mark.parametrize("towards", ["right", "left"])
@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
def test_compiled_cpu_kernel_equals_the_torch_ops_bit_for_bit(towards, smooth, with_valid):
    pytest.importorskip("numba")
    for seed in range(3):
        img, disparity, valid = _random_rows(seed, smooth)
        kwargs = {"towards": towards, "valid": valid if with_valid else None}
        _assert_same_warp(
            forward_warp(img, disparity, backend="torch", **kwargs),
            forward_warp(img, disparity, backend="compiled", **kwargs),
        )


@pytest.mark.parametrize("edge_threshold", [0.25, 1.0])
def test_compiled_cpu_kernel_equals_the_torch_ops_on_synth_scenes(scenes, edge_threshold):
    pytest.importorskip("numba")
    for scene in scenes:
        for towards in ("right", "left"):
            kwargs = {"towards": towards, "edge_threshold": edge_threshold}
            _assert_same_warp(
                forward_warp(scene.left, scene.disparity, backend="torch", **kwargs),
                forward_warp(scene.left, scene.disparity, backend="compiled", **kwargs),
            )


def test_compiled_cpu_kernel_gives_the_same_result_on_any_number_of_threads(scenes):
    pytest.importorskip("numba")
    from spatialdreamer.dvg import _warp_kernel

    img = torch.cat([s.left for s in scenes])  # 12 frames: enough rows to be split
    disparity = torch.cat([s.disparity for s in scenes])
    one = _warp_kernel.warp_rows_cpu(img, disparity, None, 1.0, False, threads=1)
    three = _warp_kernel.warp_rows_cpu(img, disparity, None, 1.0, False, threads=3)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


def test_auto_backend_keeps_gradients_and_other_dtypes_on_the_torch_ops():
    img = torch.rand(1, 3, 4, 16, requires_grad=True)
    out = forward_warp(img, torch.full((1, 1, 4, 16), 1.5))
    out.image.sum().backward()  # the torch ops are differentiable in the image
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="float32"):
        forward_warp(
            torch.rand(1, 3, 4, 16, dtype=torch.float64), torch.ones(1, 1, 4, 16), backend="compiled"
        )
    with pytest.raises(ValueError, match="backend"):
        forward_warp(torch.rand(1, 3, 4, 16), torch.ones(1, 1, 4, 16), backend="numba")


def _hole_runs(holes: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of holes in a 1-D bool row."""
    runs, start = [], None
    for x, h in enumerate([*holes.tolist(), False]):
        if h and start is None:
            start = x
        elif not h and start is not None:
            runs.append((start, x))
            start = None
    return runs


@pytest.mark.parametrize("backend", ["torch", "compiled", "cuda"])
@pytest.mark.parametrize("towards", ["right", "left"])
@pytest.mark.parametrize("fall", [[1.5] * 10, [3.0] * 6, [2.0, 0.0] * 5, [1.2, 2.5, 0.5, 3.0, 1.1, 1.1]])
def test_a_steep_disparity_ramp_opens_one_contiguous_disocclusion(backend, towards, fall):
    """Soft depth edges (as learned depth gives) fall faster than 1 px per px: one hole, no comb."""
    if backend == "compiled":
        pytest.importorskip("numba")
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    near, w = 30.0, 96
    ramp = [near]
    for step in fall:
        ramp.append(ramp[-1] - step)
    d = [near] * 40 + ramp[1:] + [ramp[-1] - 1.5] + [ramp[-1] - 3.0] * (w - 41 - len(fall))
    img, disparity = _row(list(range(w)), d)
    if towards == "left":  # the mirrored layout: the near side on the right, warping the other way
        img, disparity = img.flip(-1), disparity.flip(-1)
    if backend == "cuda":
        img, disparity, backend = img.cuda(), disparity.cuda(), "torch"
    out = forward_warp(img, disparity, towards=towards, backend=backend)
    holes = out.holes[0, 0, 0].cpu() if towards == "right" else out.holes[0, 0, 0].cpu().flip(-1)
    inner = [run for run in _hole_runs(holes) if run[0] > 0 and run[1] < w - 1]
    assert len(inner) == 1, f"alternating holes {inner}"
    assert inner[0][1] - inner[0][0] >= sum(fall) - 2  # the ramp's whole disocclusion


@pytest.mark.parametrize("radius", [(0, 0), (2, 1), (1, 0), (0, 3), (5, 2), (40, 40)])
def test_compiled_dilation_equals_dilate_foreground(radius):
    pytest.importorskip("numba")
    from spatialdreamer.dvg import _warp_kernel
    from spatialdreamer.dvg.disparity import dilate_foreground

    g = torch.Generator().manual_seed(3)
    disparity = torch.randn(3, 1, 17, 33, generator=g) * 5
    assert torch.equal(_warp_kernel.dilate_cpu(disparity, radius), dilate_foreground(disparity, radius))
    wide = torch.randn(2, 1, 300, 400, generator=g)  # rows shared among threads
    assert torch.equal(_warp_kernel.dilate_cpu(wide, radius, threads=2), dilate_foreground(wide, radius))


@pytest.mark.parametrize("towards", ["right", "left"])
@pytest.mark.parametrize("smooth", [False, True])
def test_the_uint8_warp_resolves_targets_as_the_float_warp(towards, smooth):
    """The uint8 warp (the renderer's, without mirrored borders) and the float warp share one
    resolve step: the same holes (layered ones included), disparity and rounded pixels."""
    pytest.importorskip("numba")
    import numpy as np

    from spatialdreamer.dvg import _warp_kernel

    for seed in range(3):
        img, disparity, _ = _random_rows(seed, smooth)
        float_warp = forward_warp(img, disparity, towards=towards, backend="compiled")
        assert bool(float_warp.holes.any())
        out = np.empty((*img.shape[:1], *img.shape[2:], 3), np.uint8)
        holes, warped = _warp_kernel.warp_rows_u8_cpu(img, disparity, 1.0, 0, towards == "left", out)
        assert np.array_equal(holes, float_warp.holes[:, 0].numpy())
        assert np.array_equal(warped, float_warp.disparity[:, 0].numpy())
        rounded = float_warp.image.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)
        assert np.array_equal(out, rounded.numpy())
