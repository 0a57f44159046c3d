"""`spatialdreamer convert` outputs people rely on: the suffix picks the container, existing
files are kept, long names fit, pictures give pictures, tiny and damaged videos, late audio,
and batches (folder, glob, list) with skips, failures and clashing names."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from test_video_real_world import _garble_first_packets, _write_video

from spatialdreamer.cli.main import main
from spatialdreamer.video import stream_frames

_FAST = ["--depth-model", "parallax", "--quiet"]


def _convert(src, out, *extra) -> int:
    return main(["convert", str(src), str(out), *_FAST, *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("spatialdreamer convert: error:") and "\n" not in err, err
    return err


def _frames(path) -> int:
    return sum(len(c) for c in stream_frames(path, 16))


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """12 frames at 24 fps, 64x48 (fast to convert)."""
    return _write_video(tmp_path_factory.mktemp("short") / "short.mp4", [(64, 48)] * 12)


@pytest.mark.parametrize(
    ("suffix", "format_name", "codec"),
    [(".webm", "matroska,webm", "vp9"), (".avi", "avi", "mpeg4"), (".mkv", "matroska,webm", "h264")],
)
def test_the_output_suffix_picks_the_container_and_its_codec(
    short_clip, tmp_path, suffix, format_name, codec
):
    out = tmp_path / f"out{suffix}"
    assert _convert(short_clip, out) == 0
    with av.open(str(out)) as container:
        assert container.format.name == format_name
        assert container.streams.video[0].codec_context.name == codec
    assert _frames(out) == 12


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [("out.webm", ["--codec", "h264"], "cannot hold h264"), ("out.flv", [], "cannot write .flv")],
)
def test_a_container_that_cannot_hold_the_codec_is_refused(
    short_clip, tmp_path, capsys, name, extra, message
):
    assert _convert(short_clip, tmp_path / name, *extra) == 1
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_unless_overwrite_is_asked(short_clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    assert _convert(short_clip, out) == 1
    assert "--overwrite" in _one_line_error(capsys)
    assert out.read_bytes() == b"precious"
    assert _convert(short_clip, out, "-y") == 0
    assert _frames(out) == 12


def test_a_long_utf8_name_is_shortened_to_fit_with_the_layout_tag(short_clip, tmp_path):
    stem = "é" * 118 + "xyz"  # 239 bytes: with "_LRF_Full_SBS.mp4" over the 255-byte limit
    source = tmp_path / f"{stem}.mp4"
    source.write_bytes(short_clip.read_bytes())
    out_dir = tmp_path / "out"
    assert _convert(source, out_dir) == 0
    (output,) = out_dir.iterdir()
    assert len(output.name.encode()) <= 255 and output.name.endswith("_LRF_Full_SBS.mp4")
    assert output.name.startswith("é" * 100)


def _png(path: Path, width: int = 64, height: int = 48) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 4 % 256, y * 5 % 256, np.full_like(x, 90)], -1).astype(np.uint8)
    ok, data = cv2.imencode(".png", img)
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize("name", ["photo.png", "photo_named_like_a.mp4"])
def test_a_picture_in_gives_a_stereo_picture_out(tmp_path, name):
    source = _png(tmp_path / name)
    out_dir = tmp_path / "out"
    assert _convert(source, out_dir) == 0
    (output,) = out_dir.iterdir()
    assert output.suffix == ".png" and output.name.endswith("_LRF_Full_SBS.png")
    picture = cv2.imread(str(output))
    assert picture.shape == (48, 128, 3)
    jpeg = tmp_path / "out.jpg"
    assert _convert(source, jpeg, "--format", "half-sbs") == 0
    assert cv2.imread(str(jpeg)).shape == (48, 64, 3)


def test_a_picture_asked_to_become_a_video_is_refused(tmp_path, capsys):
    assert _convert(_png(tmp_path / "photo.png"), tmp_path / "out.mp4") == 1
    assert "still picture" in _one_line_error(capsys)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("count", [1, 2, 3])
def test_videos_of_one_to_three_frames_convert(tmp_path, count):
    source = _write_video(tmp_path / "tiny.mp4", [(64, 48)] * count)
    out = tmp_path / "out.mp4"
    assert _convert(source, out) == 0
    assert _frames(out) == count


def test_dropped_corrupt_frames_are_counted_in_the_output_line(tmp_path, capsys):
    clean = _write_video(tmp_path / "clean.mkv", [(64, 48)] * 36, rate=25, gop=12)
    garbled = _garble_first_packets(clean, tmp_path / "garbled.mkv", 3)
    assert _convert(garbled, tmp_path / "out.mp4") == 0
    assert "12 undecodable source frames dropped" in capsys.readouterr().out
    assert _frames(tmp_path / "out.mp4") == 24


def test_audio_that_starts_late_stays_in_sync(tmp_path):
    source = tmp_path / "late_audio.mkv"
    with av.open(str(source), mode="w") as container:
        video = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i in range(48):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, dtype=np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(48000, 96000, 1024):  # audio from 1 s to 2 s
            samples = np.full((1, 1024), 0.1, dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    out = tmp_path / "out.mp4"
    assert _convert(source, out) == 0
    with av.open(str(out)) as container:
        first = next(container.decode(audio=0))
        assert float(first.pts * first.time_base) == pytest.approx(1.0, abs=0.05)


def _library(root: Path, clip: Path) -> Path:
    """Two clips named alike in different folders, a hidden macOS file and a broken video."""
    for folder in (root, root / "sub"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (root / "._clip.mp4").write_bytes(b"macOS metadata")
    (root / "broken.mp4").write_text("not a video")
    return root


def test_a_folder_batch_mirrors_subfolders_skips_what_exists_and_lists_failures(short_clip, tmp_path, capsys):
    library = _library(tmp_path / "library", short_clip)
    out = tmp_path / "out"
    assert _convert(library, out, "--recursive", "--skip-errors") == 1  # one failure
    captured = capsys.readouterr()
    assert "failed: " in captured.err and "broken.mp4" in captured.err
    assert "2 converted, 0 skipped (output exists), 1 failed" in captured.out
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert outputs == ["clip_LRF_Full_SBS.mp4", "sub/clip_LRF_Full_SBS.mp4"]
    (library / "broken.mp4").unlink()
    assert _convert(library, out, "--recursive") == 0
    assert "0 converted, 2 skipped" in capsys.readouterr().out


def test_without_skip_errors_a_batch_stops_at_the_first_failure(short_clip, tmp_path, capsys):
    library = _library(tmp_path / "library", short_clip)
    assert _convert(library, tmp_path / "out") == 1  # broken.mp4 comes first
    assert "broken.mp4" in _one_line_error(capsys)


def test_a_glob_and_a_list_file_give_each_input_once_with_unique_names(short_clip, tmp_path, capsys):
    library = _library(tmp_path / "library", short_clip)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# my clips\nlibrary/clip.mp4\n./library/clip.mp4\nlibrary/sub/clip.mp4\n")
    out = tmp_path / "from_list"
    assert _convert(listing, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip (2)_LRF_Full_SBS.mp4", "clip_LRF_Full_SBS.mp4"]
    assert _convert(str(library / "*" / "clip.mp4"), tmp_path / "from_glob") == 0
    assert [p.name for p in (tmp_path / "from_glob").iterdir()] == ["clip_LRF_Full_SBS.mp4"]
    capsys.readouterr()


def test_an_empty_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _convert(tmp_path / "empty", tmp_path / "out") == 1
    assert "no videos or pictures found" in _one_line_error(capsys)
