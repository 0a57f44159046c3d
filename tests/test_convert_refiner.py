"""`spatialdreamer convert --refiner`: a trained pipeline fills the holes of a streamed video."""

from __future__ import annotations

import torch

from spatialdreamer.cli.main import main
from spatialdreamer.video import probe_video, stream_frames


def _frames(path) -> torch.Tensor:
    return torch.cat([c.frames for c in stream_frames(path, 16)]).float()


def test_refiner_converts_every_frame_with_audio_and_generates_the_holes(
    video_with_audio, tiny_pipeline_dir, tmp_path, capsys
):
    common = ["convert", str(video_with_audio), "--depth-model", "parallax", "--quiet", "--budget", "6"]
    classical, refined = tmp_path / "classical.mp4", tmp_path / "refined.mp4"
    assert main([*common[:2], str(classical), *common[2:], "--no-inpaint", "--eye", "right"]) == 0
    args = [
        *common[:2],
        str(refined),
        *common[2:],
        "--refiner",
        str(tiny_pipeline_dir),
        "--refiner-steps",
        "2",
    ]
    assert main([*args, "--chunk", "12"]) == 0
    assert "wrote" in capsys.readouterr().out
    info, source = probe_video(refined), probe_video(video_with_audio)
    assert (info.width, info.height) == (2 * source.width, source.height) and info.has_audio
    assert abs(info.duration - source.duration) < 0.1
    a, b, src = _frames(classical), _frames(refined), _frames(video_with_audio)
    assert a.shape == b.shape and a.shape[0] == 48
    width = source.width
    own = (b[..., :width] - src).abs().flatten(1).mean(1)
    next_frame = (b[1:, ..., :width] - src[:-1]).abs().flatten(1).mean(1)
    assert (own[1:] < next_frame).all()  # every frame is paired with its own source frame
    right_diff = (a[..., width:] - b[..., width:]).abs()
    assert right_diff.mean() > (a[..., :width] - b[..., :width]).abs().mean()  # more than encoding noise
    # the model's pixels in the holes: in most frames the right eye holds a change larger than
    # encoding alone ever makes in the same (left) eye; a frame whose holes are a few pixels
    # (mirrored borders and steady depth leave few) may not
    noise = (a[..., :width] - b[..., :width]).abs().flatten(1).amax(1)
    far = right_diff.flatten(1).amax(1) > noise.max()
    assert far.float().mean() >= 0.8, far


def test_a_bad_refiner_is_one_line_and_leaves_no_output(video_with_audio, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(
        ["convert", str(video_with_audio), str(out), "--depth-model", "parallax", "--refiner", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "not a SpatialDreamer pipeline folder" in err
    assert not out.exists()
    assert main(["convert", str(video_with_audio), str(out), "--refiner-steps", "0"]) == 1
    assert "--refiner-steps" in capsys.readouterr().err
