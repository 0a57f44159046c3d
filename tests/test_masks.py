import pytest
import torch

from spatialdreamer.dvg import (
    dis_flow,
    flow_warp,
    forward_backward_consistent,
    refine_masks_temporally,
    warp_back_pair,
)
from spatialdreamer.synth import make_scene


@pytest.fixture(scope="module")
def fast_scenes():
    """Objects moving several pixels per frame, no camera pan: mask motion is object motion."""
    return [make_scene(seed, height=128, width=192, frames=3, motion=4.0, pan=0.0) for seed in (0, 1, 3)]


def _recall_precision(pred, truth):
    hit = (pred & truth).sum()
    return float(hit / truth.sum()), float(hit / pred.sum().clamp(min=1))


def test_a_blinking_hole_is_restored_from_its_moving_neighbours(fast_scenes):
    for scene in fast_scenes:
        truth = warp_back_pair(scene.left, scene.disparity).back_holes
        blinked = truth.clone()
        blinked[1] = False  # the middle frame lost its mask
        refined = refine_masks_temporally(scene.left, blinked, scene.disparity)
        naive = blinked.clone()
        naive[1] |= blinked[0] & blinked[2]  # same vote without motion compensation
        recall, precision = _recall_precision(refined[1], truth[1])
        naive_recall, _ = _recall_precision(naive[1], truth[1])
        assert recall > 0.6 and precision > 0.95
        assert recall > naive_recall + 0.2


def test_refinement_never_removes_holes(fast_scenes):
    scene = fast_scenes[0]
    masks = torch.rand(3, 1, 128, 192) > 0.7
    refined = refine_masks_temporally(scene.left, masks, scene.disparity)
    assert (refined | masks).equal(refined)


def test_short_clips_are_returned_unchanged():
    masks = torch.rand(2, 1, 8, 8) > 0.5
    out = refine_masks_temporally(torch.rand(2, 3, 8, 8), masks, torch.zeros(2, 1, 8, 8))
    assert torch.equal(out, masks) and out is not masks


def test_dis_flow_recovers_synth_motion(fast_scenes):
    scene = fast_scenes[1]
    flow = dis_flow(scene.left[:-1], scene.left[1:])
    epe = (flow - scene.flow).norm(dim=1)
    assert float(epe.median()) < 0.5


def test_flow_warp_and_consistency_on_a_pure_translation():
    img = torch.rand(1, 1, 16, 16)
    fwd = torch.zeros(1, 2, 16, 16)
    fwd[:, 0] = 2.0
    moved = flow_warp(img, fwd)
    assert torch.allclose(moved[..., :14], img[..., 2:], atol=1e-5)
    ok = forward_backward_consistent(fwd, -fwd)
    assert ok[..., :14].all() and not ok[..., 15:].any()


def test_bad_mask_inputs_raise():
    with pytest.raises(ValueError, match=r"masks \[T,1,H,W\]"):
        refine_masks_temporally(
            torch.rand(3, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.bool), torch.zeros(3, 1, 8, 8)
        )
    with pytest.raises(TypeError, match="bool"):
        refine_masks_temporally(torch.rand(3, 3, 8, 8), torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="disparity"):
        refine_masks_temporally(
            torch.rand(3, 3, 8, 8), torch.zeros(3, 1, 8, 8, dtype=torch.bool), torch.zeros(3, 1, 8, 9)
        )
