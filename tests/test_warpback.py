import torch

from spatialdreamer.dvg import forward_warp, warp_back_pair


def test_round_trip_returns_the_source_outside_holes(scenes):
    for scene in scenes:
        pair = warp_back_pair(scene.left, scene.disparity)
        keep = ~pair.back_holes
        mse = ((pair.back - pair.target) ** 2).mean(1, keepdim=True)[keep].mean()
        assert 10 * torch.log10(1 / mse) > 40.0  # two linear interpolations
        assert torch.equal(pair.target, scene.left)


def test_round_trip_holes_are_where_the_other_eye_cannot_see(scenes):
    for scene in scenes:
        pair = warp_back_pair(scene.left, scene.disparity)
        truth = scene.occlusion_left
        iou = (pair.back_holes & truth).sum() / (pair.back_holes | truth).sum()
        assert iou > 0.8


def test_round_trip_with_integer_disparity_is_exact():
    img = torch.rand(1, 3, 6, 40)
    d = torch.zeros(1, 1, 6, 40)
    d[..., 15:25] = 4.0
    pair = warp_back_pair(img, d)
    keep = (~pair.back_holes).expand_as(img)
    assert torch.equal(pair.back[keep], img[keep])
    # the four background columns left of the object are hidden from the right eye
    assert pair.back_holes[0, 0, 0].nonzero().flatten().tolist() == [11, 12, 13, 14]
    assert pair.warped_holes[0, 0, 0].nonzero().flatten().tolist() == [21, 22, 23, 24]


def test_other_eye_view_is_the_forward_warp(scenes):
    scene = scenes[2]
    pair = warp_back_pair(scene.left, scene.disparity)
    direct = forward_warp(scene.left, scene.disparity)
    assert torch.equal(pair.warped, direct.image) and torch.equal(pair.warped_holes, direct.holes)


def test_round_trip_from_the_right_eye_mirrors():
    img, d = torch.rand(1, 3, 5, 32), torch.zeros(1, 1, 5, 32)
    d[..., 10:16] = 3.0
    from_right = warp_back_pair(img, d, towards="left")
    mirrored = warp_back_pair(img.flip(-1), d.flip(-1))
    assert torch.equal(from_right.back_holes, mirrored.back_holes.flip(-1))
