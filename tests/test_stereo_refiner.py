"""Hole filling with a trained pipeline over a frame stream: windows blended across chunks."""

from __future__ import annotations

import pytest
import torch

from spatialdreamer.dvg import forward_warp
from spatialdreamer.stereo.refiner import RefinerError, StreamingRefiner, load_refiner_pipeline
from spatialdreamer.synth import make_scene


@pytest.fixture(scope="module")
def stream():
    scene = make_scene(3, height=32, width=48, frames=7)
    warped = forward_warp(scene.left, scene.disparity)
    return warped.image, warped.holes, scene.left


def _run(refiner: StreamingRefiner, stream, sizes: list[int]) -> torch.Tensor:
    rendered, holes, left = stream
    out, start = [], 0
    for size in sizes:
        sl = slice(start, start + size)
        out.append(refiner.push(rendered[sl], holes[sl], left[sl]))
        assert refiner.pending <= refiner.overlap  # memory: one chunk plus the overlap
        start += size
    out.append(refiner.flush())
    return torch.cat(out)


def test_every_frame_comes_out_once_in_order_with_holes_filled_and_the_rest_kept(tiny_pipeline_dir, stream):
    pipe = load_refiner_pipeline(str(tiny_pipeline_dir))
    refiner = StreamingRefiner(pipe, steps=2, overlap=1)
    out = _run(refiner, stream, [3, 2, 2])
    rendered, holes, _ = stream
    assert out.shape == rendered.shape and holes.any()
    keep = ~holes.expand_as(rendered)
    torch.testing.assert_close(out[keep], rendered.clamp(0, 1)[keep])
    assert not torch.equal(out[~keep], torch.zeros_like(out[~keep]))  # the holes were generated
    again = _run(StreamingRefiner(pipe, steps=2, overlap=1), stream, [3, 2, 2])
    torch.testing.assert_close(again, out)  # seeded: reproducible


def test_chunk_boundaries_are_blended_not_cut(tiny_pipeline_dir, stream):
    """The frame shared by two chunks is a blend of both runs, so it differs from either alone."""
    pipe = load_refiner_pipeline(str(tiny_pipeline_dir))
    rendered, holes, left = stream
    blended = _run(StreamingRefiner(pipe, steps=2, overlap=1), stream, [4, 3])
    first = StreamingRefiner(pipe, steps=2, overlap=0).push(rendered[:4], holes[:4], left[:4])
    hole = holes[3].expand(3, -1, -1)
    assert not torch.allclose(blended[3][hole], first[3][hole])
    assert torch.equal(blended[:3], first[:3])  # before the overlap nothing changes


def test_bad_refiner_paths_and_inputs_give_clear_errors(tmp_path, tiny_pipeline_dir, stream):
    with pytest.raises(RefinerError, match="not a SpatialDreamer pipeline folder"):
        load_refiner_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(RefinerError, match="could not load the pipeline"):
        load_refiner_pipeline(str(tmp_path))
    refiner = StreamingRefiner(load_refiner_pipeline(str(tiny_pipeline_dir)), steps=1)
    rendered, holes, left = stream
    with pytest.raises(ValueError, match="holes"):
        refiner.push(rendered, holes[:, :, :-1], left)
    with pytest.raises(ValueError, match="steps"):
        StreamingRefiner(refiner.pipe, steps=0)
