import pytest
import torch

from spatialdreamer.synth import iter_frames, make_scene, random_spec


def test_same_seed_same_scene_and_different_seed_differs():
    a, b, c = (make_scene(s, height=24, width=32, frames=2) for s in (7, 7, 8))
    assert torch.equal(a.left, b.left) and torch.equal(a.occlusion, b.occlusion)
    assert not torch.equal(a.left, c.left)


@pytest.mark.parametrize(("h", "w", "t"), [(17, 31, 1), (64, 48, 5), (9, 200, 2)])
def test_any_size_and_length(h, w, t):
    scene = make_scene(1, height=h, width=w, frames=t)
    assert scene.left.shape == (t, 3, h, w) and scene.right.shape == (t, 3, h, w)
    assert scene.disparity.shape == scene.depth.shape == scene.occlusion.shape == (t, 1, h, w)
    assert scene.flow.shape == (max(t - 1, 0), 2, h, w)
    assert float(scene.left.min()) >= 0 and float(scene.left.max()) <= 1


def test_right_view_pixels_come_from_the_left_view_at_their_disparity(scenes):
    """Ground-truth consistency: a visible right pixel t shows the left view at t + d_right."""
    scene = scenes[0]
    w = scene.left.shape[-1]
    x = torch.arange(w).view(1, 1, 1, w) + scene.disparity_right
    keep = ~scene.occlusion & (x >= 0) & (x <= w - 1)
    x0 = x.floor().clamp(0, w - 2).long()
    frac = x - x0
    left = scene.left
    sampled = torch.lerp(left.gather(-1, x0.expand_as(left)), left.gather(-1, (x0 + 1).expand_as(left)), frac)
    diff = (sampled - scene.right).abs().amax(1, keepdim=True)[keep]
    assert float(diff.median()) < 0.01
    assert float((diff < 0.05).float().mean()) > 0.97


def test_scenes_contain_occlusions_thin_structures_and_motion(scenes):
    for scene in scenes:
        assert 0.005 < float(scene.occlusion.float().mean()) < 0.3
        assert any(layer.shape in ("pole", "wire") for layer in scene.spec.layers)
        assert float(scene.flow.abs().amax()) > 0


def test_depth_and_disparity_agree():
    scene = make_scene(2, height=32, width=48, frames=1)
    spec = scene.spec
    inv = spec.baseline / scene.depth
    assert torch.allclose(inv - spec.convergence, scene.disparity, atol=1e-3)


def test_frames_stream_one_at_a_time():
    spec = random_spec(0, height=16, width=16, frames=1000)
    first = next(iter_frames(spec))
    assert first["left"].shape == (3, 16, 16)


def test_too_small_scene_is_rejected():
    with pytest.raises(ValueError, match="at least 8x8"):
        random_spec(0, height=4, width=4)
