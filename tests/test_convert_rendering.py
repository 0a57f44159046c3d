"""`spatialdreamer convert` rendering options: --eye, --convergence auto with --report, bad values."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from spatialdreamer.cli.main import main
from spatialdreamer.synth import make_scene
from spatialdreamer.video import VideoWriter, probe_video, stream_frames


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory):
    """24 frames of one synth scene, then 24 of another: one cut at frame 24."""
    path = tmp_path_factory.mktemp("shots") / "two_shots.mp4"
    first = make_scene(1, height=64, width=96, frames=24, pan=0.0).left
    second = make_scene(2, height=64, width=96, frames=24, pan=0.0).left
    with VideoWriter(path, 24.0, crf=12) as writer:
        writer.write((torch.cat([first, second]) * 255).round().to(torch.uint8))
    return path


def _convert(src, out, *extra) -> int:
    return main(["convert", str(src), str(out), "--depth-model", "parallax", "--quiet", *extra])


def _halves(path, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.cat([c.frames for c in stream_frames(path, 16)]).float()
    return frames[..., :width], frames[..., width:]


def test_eye_choice_decides_which_half_is_the_source(two_shots, tmp_path):
    source = torch.cat([c.frames for c in stream_frames(two_shots, 16)]).float()
    width = probe_video(two_shots).width
    changed = {}
    for eye in ("both", "left"):
        out = tmp_path / f"{eye}.mp4"
        assert _convert(two_shots, out, "--eye", eye, "--budget", "10") == 0
        left, right = _halves(out, width)
        changed[eye] = [float((half - source).abs().mean()) for half in (left, right)]
    noise = changed["left"][1]  # --eye left: the right eye is the source, re-encoded (4:2:0)
    assert changed["left"][0] > 2 * noise  # the left eye is synthesized with the whole disparity
    assert min(changed["both"]) > 1.5 * noise  # both eyes synthesized, half the disparity each


def test_auto_convergence_writes_one_report_row_per_shot(two_shots, tmp_path):
    report = tmp_path / "shots.csv"
    out = tmp_path / "auto.mp4"
    assert (
        _convert(two_shots, out, "--convergence", "auto", "--comfort", "1.5", "1", "--report", str(report))
        == 0
    )
    table = pd.read_csv(report)
    assert table["first_frame"].tolist() == [0, 24] and table["frames"].sum() == 48
    assert (table["mode"] == "auto").all()
    assert (table["crossed_pct_max"] <= 1.5 + 1e-3).all() and (table["uncrossed_pct_max"] <= 1.0 + 1e-3).all()
    assert table["start_s"].iloc[1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eye", "both", "--refiner", "some/pipeline"], "--eye right or --eye left"),
        (["--report", "shots.txt"], ".csv or .json"),
        (["--smoothing", "1"], "--smoothing"),
        (["--edge-dilation", "1", "2", "3"], "--edge-dilation"),
        (["--comfort", "0", "1"], "comfort"),
        (["--b-frames", "-1"], "--b-frames"),
    ],
)
def test_bad_rendering_options_fail_with_one_line_and_no_output(two_shots, tmp_path, capsys, args, message):
    out = tmp_path / "o.mp4"
    assert _convert(two_shots, out, *args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_convergence_takes_auto_or_a_number(two_shots, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _convert(two_shots, tmp_path / "o.mp4", "--convergence", "middle")
    assert "--convergence" in capsys.readouterr().err
