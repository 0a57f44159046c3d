"""Colour and encoding: the right matrix per size (or the source's own), tags written, bars
within 1/255 of what the source decodes to, 10 bits kept, hvc1, quiet encoders."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.frame import PictureType
from av.video.reformatter import ColorRange, Colorspace

from spatialdreamer.cli.main import main
from spatialdreamer.video import VideoWriter, probe_video, stream_frames
from spatialdreamer.video.colour import Colour, standard_colour

# 75 % SMPTE bars: white, yellow, cyan, green, magenta, red, blue
_BARS = np.array(
    [[191, 191, 191], [191, 191, 0], [0, 191, 191], [0, 191, 0], [191, 0, 191], [191, 0, 0], [0, 0, 191]],
    dtype=np.uint8,
)


def _bars(width: int, height: int) -> np.ndarray:
    columns = np.arange(width) * len(_BARS) // width
    return np.ascontiguousarray(np.broadcast_to(_BARS[columns][None], (height, width, 3)))


def _write_source(path, width, height, matrix: str | None, frames: int = 2, pix_fmt: str = "yuv420p"):
    """Bars encoded by FFmpeg itself (x264, lossless): tagged with ``matrix``, or untagged (then
    with BT.709, which is what players assume for HD)."""
    spaces = {"bt709": (Colorspace.ITU709, 1), "bt601": (Colorspace.ITU601, 6), None: (Colorspace.ITU709, 2)}
    sws, tag = spaces[matrix]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if matrix is not None:
            ctx = stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = tag
            ctx.color_range = int(ColorRange.MPEG)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_bars(width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=sws, dst_color_range=ColorRange.MPEG)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _first_frame(path) -> np.ndarray:
    return next(iter(stream_frames(path, 1))).frames[0].permute(1, 2, 0).numpy().astype(np.float64)


def _bar_errors(decoded: np.ndarray, reference: np.ndarray) -> list[float]:
    """Mean absolute error (0-255) inside each bar, away from its edges (chroma subsampling)."""
    width = reference.shape[1]
    errors = []
    for k in range(len(_BARS)):
        a, b = k * width // len(_BARS) + 4, (k + 1) * width // len(_BARS) - 4
        errors.append(float(np.abs(decoded[:, a:b] - reference[:, a:b]).mean()))
    return errors


def _tags(path) -> tuple[int, int, int, int]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.colorspace, frame.color_primaries, frame.color_trc, frame.color_range


def test_players_convention_picks_the_matrix_by_size():
    assert standard_colour(1280, 720).matrix == 1  # BT.709
    assert standard_colour(1920, 800).matrix == 1  # letterboxed HD
    assert standard_colour(720, 480).matrix == 6  # BT.601 (525 lines)
    assert standard_colour(720, 576).matrix == 5  # BT.601 (625 lines)


@pytest.mark.parametrize(("width", "height", "matrix"), [(1280, 720, 1), (640, 480, 6)])
def test_the_writer_tags_and_decodes_bars_within_one_level(tmp_path, width, height, matrix):
    out = tmp_path / "bars.mp4"
    with VideoWriter(out, 24.0, crf=0, preset="ultrafast") as writer:
        writer.write(torch.from_numpy(_bars(width, height)).permute(2, 0, 1)[None])
    assert _tags(out) == (matrix, matrix, matrix, int(ColorRange.MPEG))
    # 8-bit limited-range YUV holds 219 levels of luma: a round trip may move a bar by a level
    assert max(_bar_errors(_first_frame(out), _bars(width, height).astype(np.float64))) <= 1.5


@pytest.mark.parametrize(
    ("width", "height", "source_matrix", "expected"),
    [(1280, 720, "bt709", 1), (640, 480, "bt601", 6), (1280, 720, None, 1), (1280, 720, "bt601", 6)],
    ids=["hd-bt709", "sd-bt601", "hd-untagged", "hd-tagged-bt601"],
)
def test_converted_bars_keep_the_colours_the_source_decodes_to(
    tmp_path, width, height, source_matrix, expected
):
    source = _write_source(tmp_path / "src.mp4", width, height, source_matrix)
    out = tmp_path / "out.mp4"
    args = ["--depth-model", "parallax", "--budget", "0", "--crf", "0", "--preset", "ultrafast", "--quiet"]
    assert main(["convert", str(source), str(out), *args]) == 0
    assert _tags(out) == (expected, expected, expected, int(ColorRange.MPEG))
    reference = _first_frame(source)
    assert (
        max(_bar_errors(reference, _bars(width, height).astype(np.float64))) <= 2.0
    )  # the right matrix (a wrong one is 6-33 off)
    left = _first_frame(out)[:, :width]
    assert max(_bar_errors(left, reference)) <= 1.0


def test_a_ten_bit_source_is_written_with_ten_bits_and_yuv444_on_request(tmp_path):
    source = _write_source(tmp_path / "src10.mkv", 64, 48, "bt709", pix_fmt="yuv420p10le")
    assert probe_video(source).bit_depth == 10
    out = tmp_path / "out10.mkv"
    assert main(["convert", str(source), str(out), "--depth-model", "parallax", "--quiet"]) == 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    out444 = tmp_path / "out444.mp4"
    args = ["--depth-model", "parallax", "--pix-fmt", "yuv444p", "--quiet"]
    assert main(["convert", str(source), str(out444), *args]) == 0
    with av.open(str(out444)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_hdr_tags_of_the_source_are_passed_through(tmp_path):
    colour = Colour(matrix=9, primaries=9, transfer=16)  # BT.2020 with PQ
    source = tmp_path / "hdr.mkv"
    with VideoWriter(source, 24.0, pix_fmt="yuv420p10le", colour=colour, preset="ultrafast") as writer:
        writer.write(torch.full((2, 3, 48, 64), 128, dtype=torch.uint8))
    info = probe_video(source)
    assert info.colour == colour and info.colour.is_hdr
    out = tmp_path / "hdr_out.mkv"
    assert main(["convert", str(source), str(out), "--depth-model", "parallax", "--quiet"]) == 0
    assert _tags(out)[:3] == (9, 9, 16)


def test_h265_in_mp4_is_tagged_hvc1_and_x265_stays_quiet(tmp_path, capfd):
    source = _write_source(tmp_path / "src.mp4", 64, 48, "bt709")
    out = tmp_path / "out.mp4"
    assert (
        main(["convert", str(source), str(out), "--depth-model", "parallax", "--codec", "h265", "--quiet"])
        == 0
    )
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_tag == "hvc1"
    err = capfd.readouterr().err
    assert "x265 [info]" not in err


def _ramp_source(path, width: int = 256, height: int = 32, frames: int = 3):
    """A grey ramp over 0.3-0.5 written losslessly at 10 bits: about 200 levels where 8 bits
    have about 50."""
    ramp = np.linspace(0.3, 0.5, width, dtype=np.float32)
    rgb = torch.from_numpy(np.broadcast_to(ramp, (frames, 3, height, width)).copy())
    with VideoWriter(path, 24.0, pix_fmt="yuv420p10le", crf=0, preset="ultrafast") as writer:
        writer.write(rgb)
    return path


def _levels(path, half: slice) -> int:
    """Distinct green values along the middle row of the first frame, at 16-bit scale."""
    frames = next(iter(stream_frames(path, 1, high_bit_depth=True))).frames
    assert frames.dtype == torch.uint16
    return len(np.unique(frames[0, 1, frames.shape[2] // 2, half].numpy()))


def test_a_ten_bit_source_keeps_its_gradations_through_the_conversion(tmp_path):
    source = _ramp_source(tmp_path / "ramp10.mkv")
    assert _levels(source, slice(None)) > 150  # 8 bits would give at most 52 here
    eight = next(iter(stream_frames(source, 1))).frames
    assert eight.dtype == torch.uint8  # 8 bits unless asked for more
    out = tmp_path / "ramp_sbs.mkv"
    args = ["--depth-model", "parallax", "--crf", "0", "--quiet"]
    assert main(["convert", str(source), str(out), *args]) == 0
    for half in (slice(8, 120), slice(264, 376)):  # inside each eye, away from the borders
        assert _levels(out, half) > 60  # the source has 77 there; processed at 8 bits: 23-28


def _has_b_frames(path) -> bool:
    with av.open(str(path)) as container:
        return any(frame.pict_type == PictureType.B for frame in container.decode(video=0))


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_b_frames_are_off_unless_asked_for(tmp_path, codec):
    """B-frames make still regions pulse (coded coarser than the frames around them): the
    converter writes none by default; the encoder's usual ones on request."""
    moving = torch.rand(1, 3, 48, 64).repeat(12, 1, 1, 1)
    for t in range(12):
        moving[t] = torch.roll(moving[t], shifts=t, dims=-1)
    found = {}
    for b_frames in (0, None):
        path = tmp_path / f"{codec}-{b_frames}.mp4"
        with VideoWriter(path, 24.0, codec=codec, preset="medium", b_frames=b_frames) as writer:
            writer.write(moving)
        found[b_frames] = _has_b_frames(path)
    assert not found[0]
    assert found[None]  # the check sees B-frames where the encoder makes them
