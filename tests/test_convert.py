"""`spatialdreamer convert`: every layout's geometry, frames, duration and audio kept, bad input."""

from __future__ import annotations

import pytest

from spatialdreamer.cli.main import main
from spatialdreamer.stereo import FORMATS
from spatialdreamer.video import probe_video, stream_frames

# source fixture: 48 frames at 24 fps with audio, rendered at 131x97 and stored padded to 132x98
_GEOMETRY = {  # (width, height) in units of the source's
    "full-sbs": (2, 1),
    "half-sbs": (1, 1),
    "full-tb": (1, 2),
    "half-tb": (1, 1),
    "anaglyph": (1, 1),
}


def _convert(src, out, *extra) -> int:
    return main(["convert", str(src), str(out), "--depth-model", "parallax", "--quiet", *extra])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_has_its_geometry_every_frame_and_the_audio(video_with_audio, tmp_path, fmt, capsys):
    assert _convert(video_with_audio, tmp_path, "--format", fmt) == 0
    outputs = list(tmp_path.glob("*.mp4"))
    assert len(outputs) == 1
    info = probe_video(outputs[0])
    source = probe_video(video_with_audio)
    assert (info.width, info.height) == (
        source.width * _GEOMETRY[fmt][0],
        source.height * _GEOMETRY[fmt][1],
    )
    frames = sum(len(c) for c in stream_frames(outputs[0], 16))
    assert frames == 48
    assert abs(info.duration - source.duration) < 0.1
    assert info.has_audio
    assert "wrote" in capsys.readouterr().out


def test_output_folder_gets_a_name_vr_players_detect(video_with_audio, tmp_path):
    assert _convert(video_with_audio, tmp_path, "--format", "half-sbs") == 0
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["clip_LR_Half_SBS.mp4"]


def test_start_and_end_keep_only_that_range_with_its_audio(video_with_audio, tmp_path):
    out = tmp_path / "part.mp4"
    assert _convert(video_with_audio, out, "--start", "0.5", "--end", "1.5") == 0
    assert sum(len(c) for c in stream_frames(out, 16)) == 24
    info = probe_video(out)
    assert info.has_audio and abs(info.duration - 1.0) < 0.1


def test_a_tiny_transformers_depth_model_from_a_local_path_converts(video_with_audio, tmp_path):
    from test_depth_transformers import _save_depth_anything

    model_dir = tmp_path / "tiny-depth"
    _save_depth_anything(model_dir, "relative")
    out = tmp_path / "out.mp4"
    code = main(["convert", str(video_with_audio), str(out), "--depth-model", str(model_dir), "--quiet"])
    assert code == 0
    assert sum(len(c) for c in stream_frames(out, 16)) == 48


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "not_a_video", "zero_frames", "audio_only", "truncated"]
)
def test_bad_input_exits_non_zero_with_one_line_and_no_output(bad_videos, tmp_path, capsys, kind):
    out = tmp_path / "out.mp4"
    assert _convert(bad_videos[kind], out) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("spatialdreamer convert: error:") and "\n" not in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_the_traceback(bad_videos, tmp_path, capsys):
    code = main(["-v", "convert", str(bad_videos["not_a_video"]), str(tmp_path / "o.mp4")])
    assert code == 1
    assert "Traceback" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_a_depth_model_that_cannot_load_names_the_options(video_with_audio, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "o.mp4"
    assert (
        main(["convert", str(video_with_audio), str(out), "--depth-model", "no-such/model", "--quiet"]) == 1
    )
    err = capsys.readouterr().err
    assert "parallax" in err and "\n" not in err.strip()
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "50"], "--budget"),
        (["--convergence", "2"], "--convergence"),
        (["--start", "2", "--end", "1"], "--end"),
    ],
)
def test_bad_options_fail_with_one_line(video_with_audio, tmp_path, capsys, args, message):
    assert _convert(video_with_audio, tmp_path / "o.mp4", *args) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_converting_onto_the_input_is_refused(video_with_audio, capsys):
    assert _convert(video_with_audio, video_with_audio) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert probe_video(video_with_audio).frame_count == 48
