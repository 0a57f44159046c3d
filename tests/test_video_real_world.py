"""Real-world files the reader must take: each one built here with PyAV, small and fast."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from spatialdreamer.video import DecodeStats, VideoError, probe_video, read_frames, stream_frames
from spatialdreamer.video.streams import main_video_stream

TS_PACKET = 188


def _pattern(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: a smooth gradient with a bright bar whose column moves with ``i``."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 60)], -1)
    img = img.astype(np.uint8)
    col = (i * 4) % max(width - 4, 1)
    img[:, col : col + 4] = 255
    return img


def _write_video(
    path: Path,
    sizes: list[tuple[int, int]],
    rate: int = 24,
    *,
    fmt: str | None = None,
    gop: int = 12,
    sar: Fraction | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    first_pts: int = 0,
) -> Path:
    """One H.264 stream with a frame per entry of ``sizes`` (all the same size)."""
    width, height = sizes[0]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate, options={"bf": "0", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for i in range(len(sizes)):
            frame = av.VideoFrame.from_ndarray(_pattern(i, width, height), format="rgb24")
            frame.pts = (pts[i] if pts is not None else i) + first_pts
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _ts_packets(data: bytes) -> list[bytes]:
    assert len(data) % TS_PACKET == 0
    return [data[i : i + TS_PACKET] for i in range(0, len(data), TS_PACKET)]


def _pid(packet: bytes) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def _video_pid(packets: list[bytes]) -> int:
    counts: dict[int, int] = {}
    for p in packets:
        counts[_pid(p)] = counts.get(_pid(p), 0) + 1
    return max(counts, key=counts.get)  # the video elementary stream carries most packets


def _pes_index(packets: list[bytes], pid: int) -> list[int]:
    """For each TS packet, the index of the video PES (frame) it belongs to, or -1."""
    out, current = [], -1
    for p in packets:
        if _pid(p) == pid:
            if p[1] & 0x40:  # payload_unit_start_indicator: a new PES, i.e. a new frame
                current += 1
            out.append(current)
        else:
            out.append(-1)
    return out


def _png_bytes(img: np.ndarray) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def _write_two_video_streams(path: Path) -> Path:
    """An MKV with cover art (an attached picture), the main video, then a smaller second one."""
    with av.open(str(path), mode="w") as container:
        container.add_attachment("cover.png", "image/png", _png_bytes(_pattern(0, 40, 40)))
        main = container.add_stream("libx264", rate=24, options={"bf": "0"})
        main.width, main.height, main.pix_fmt = 64, 48, "yuv420p"
        second = container.add_stream("libx264", rate=12, options={"bf": "0"})
        second.width, second.height, second.pix_fmt = 32, 16, "yuv420p"
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(_pattern(i, 64, 48), format="rgb24")
            frame.pts = i
            container.mux(main.encode(frame))
            if i % 2 == 0:
                small = av.VideoFrame.from_ndarray(_pattern(i, 32, 16), format="rgb24")
                small.pts = i // 2
                container.mux(second.encode(small))
        container.mux(main.encode(None))
        container.mux(second.encode(None))
    return path


def _write_short_video_long_audio(path: Path) -> Path:
    """MKV: 1 s of video (24 frames), 3 s of audio; Matroska keeps no per-stream duration."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=24, options={"bf": "0"})
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        audio = container.add_stream("flac", rate=8000, layout="mono")
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(_pattern(i, 48, 32), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for k in range(3):
            tone = np.sin(np.arange(8000) * 0.1 * (k + 1)).astype(np.float32)[None] * 0.3
            samples = av.AudioFrame.from_ndarray((tone * 32767).astype(np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 8000, k * 8000
            container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
    return path


def _rewrite_ts(source: Path, path: Path, keep_frame=None, garble_frames=()) -> Path:
    """Copy a TS packet by packet: drop the video frames ``keep_frame`` rejects, and overwrite
    with noise all but the first TS packet (the one with the PES header) of ``garble_frames``."""
    packets = _ts_packets(source.read_bytes())
    pid = _video_pid(packets)
    rng = np.random.default_rng(0)
    out, started = [], set()
    for packet, frame in zip(packets, _pes_index(packets, pid), strict=True):
        if frame >= 0 and keep_frame is not None and not keep_frame(frame):
            continue
        if frame in garble_frames and frame in started:
            packet = packet[:4] + rng.integers(0, 256, TS_PACKET - 4, dtype=np.uint8).tobytes()
        started.add(frame)
        out.append(packet)
    path.write_bytes(b"".join(out))
    return path


def _garble_first_packets(source: Path, path: Path, count: int) -> Path:
    """Remux ``source`` with the payload of its first ``count`` video packets replaced by noise."""
    rng = np.random.default_rng(1)
    with av.open(str(source)) as src, av.open(str(path), mode="w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for i, packet in enumerate(src.demux(src.streams.video[0])):
            if packet.dts is None:
                continue
            if i < count:
                noisy = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                noisy.pts, noisy.dts, noisy.time_base = packet.pts, packet.dts, packet.time_base
                noisy.is_keyframe = packet.is_keyframe
                packet = noisy
            packet.stream = out
            dst.mux(packet)
    return path


def _concat_ts(path: Path, parts: list[Path]) -> Path:
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    return path


def _strip_stream_durations(path: Path) -> Path:
    """Rename Matroska's per-stream DURATION tags, as files from other muxers have none."""
    path.write_bytes(path.read_bytes().replace(b"DURATION", b"DURATIOX"))
    return path


def _read_all(path: Path, **kw):
    stats = DecodeStats()
    chunks = list(stream_frames(path, stats=stats, **kw))
    frames = torch.cat([c.frames for c in chunks])
    stamps = torch.cat([c.timestamps for c in chunks])
    return frames, stamps, chunks, stats


def _red_profile(frames: torch.Tensor) -> torch.Tensor:
    """Mean red value per column of the first frame (the pattern's red is a left-right ramp)."""
    return frames[0, 0].float().mean(0)


def test_anamorphic_video_comes_out_at_its_display_aspect(tmp_path):
    path = _write_video(tmp_path / "anamorphic.mp4", [(240, 180)] * 6, sar=Fraction(4, 3))
    info = probe_video(path)
    assert (info.coded_width, info.coded_height) == (240, 180)
    assert (info.width, info.height) == (320, 180) and info.sample_aspect_ratio == Fraction(4, 3)
    frames, _, _, _ = _read_all(path)
    assert frames.shape == (6, 3, 180, 320)
    red = _red_profile(frames[1:])  # stretched, not padded or cropped: the ramp spans the width
    assert red[0] < 10 and red[-1] > 245 and abs(float(red[160]) - 128) < 8
    assert read_frames(path, [3]).shape == (1, 3, 180, 320)


def test_main_video_stream_is_taken_past_cover_art_and_a_second_stream(tmp_path):
    path = _write_two_video_streams(tmp_path / "two_streams.mkv")
    with av.open(str(path)) as container:
        kinds = [(s.codec_context.name, s.width) for s in container.streams.video]
    assert kinds == [("h264", 64), ("h264", 32), ("png", 40)]
    info = probe_video(path)
    assert (info.stream_index, info.width, info.height, info.frame_count) == (0, 64, 48, 24)
    frames, _, _, _ = _read_all(path)
    assert frames.shape == (24, 3, 48, 64)


def test_the_default_video_stream_is_preferred(tmp_path):
    path = tmp_path / "default_second.mkv"
    with av.open(str(path), mode="w") as container:
        small = container.add_stream("libx264", rate=24, options={"bf": "0"})
        small.width, small.height, small.pix_fmt = 32, 32, "yuv420p"
        main = container.add_stream("libx264", rate=24, options={"bf": "0"})
        main.width, main.height, main.pix_fmt = 64, 48, "yuv420p"
        main.disposition = av.stream.Disposition.default
        for stream in (small, main):
            for i in range(12):
                frame = av.VideoFrame.from_ndarray(_pattern(i, stream.width, stream.height), format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.stream_index, info.width, info.height) == (1, 64, 48)
    frames, _, _, _ = _read_all(path)
    assert frames.shape == (12, 3, 48, 64)


def test_cover_art_listed_first_is_skipped_and_cover_art_alone_is_refused():
    from types import SimpleNamespace

    pic = SimpleNamespace(disposition=av.stream.Disposition.attached_pic)
    video = SimpleNamespace(disposition=av.stream.Disposition(0))
    container = SimpleNamespace(streams=SimpleNamespace(video=[pic, video]))
    assert main_video_stream(container) == (video, None)
    container = SimpleNamespace(streams=SimpleNamespace(video=[pic]))
    assert main_video_stream(container) == (None, "contains no video stream (only cover art)")


def test_corrupt_first_packets_are_skipped_and_counted(tmp_path):
    source = _write_video(tmp_path / "clean.mkv", [(64, 48)] * 36, rate=25, gop=12)
    path = _garble_first_packets(source, tmp_path / "garbled.mkv", 3)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    frames, stamps, chunks, stats = _read_all(path, chunk_size=10)
    # the decoder rejects the noise, then has no reference frame until the next keyframe (12)
    assert frames.shape[0] == 24 and stats.dropped == 12 and stats.rejected >= 3
    assert chunks[-1].dropped == 12
    assert stamps[0].item() == pytest.approx(12 / 25, abs=1e-3)


def test_corrupt_first_frames_of_a_transport_stream_are_skipped_and_counted(tmp_path):
    source = _write_video(tmp_path / "clean.ts", [(64, 48)] * 36, rate=25, fmt="mpegts", gop=12)
    path = _rewrite_ts(source, tmp_path / "corrupt.ts", garble_frames={0, 1, 2})
    frames, _, chunks, stats = _read_all(path)
    assert frames.shape[0] == 24 and stats.dropped >= 11 and chunks[-1].dropped == stats.dropped
    assert frames.shape[-2:] == (48, 64)


def test_transport_stream_joined_mid_gop_decodes_from_its_first_keyframe(tmp_path):
    source = _write_video(tmp_path / "clean.ts", [(64, 48)] * 36, rate=25, fmt="mpegts", gop=12)
    path = _rewrite_ts(source, tmp_path / "joined_late.ts", keep_frame=lambda i: i >= 5)
    info = probe_video(path)
    frames, stamps, _, stats = _read_all(path)
    assert frames.shape[0] == 24 and stats.dropped == 7  # frames 5..11 lack their keyframe
    assert stamps[0].item() == pytest.approx(7 / 25, abs=1e-3)  # from the stream's first packet
    clean, _, _, _ = _read_all(source)
    assert torch.equal(frames, clean[12:])
    assert info.frame_count == 31


def test_resolution_change_mid_stream_is_scaled_to_the_first_size(tmp_path):
    first = _write_video(tmp_path / "a.ts", [(64, 48)] * 12, rate=25, fmt="mpegts")
    second = _write_video(tmp_path / "b.ts", [(96, 64)] * 12, rate=25, fmt="mpegts", first_pts=12)
    path = _concat_ts(tmp_path / "size_change.ts", [first, second])
    frames, stamps, _, stats = _read_all(path, chunk_size=8)
    assert frames.shape == (24, 3, 48, 64) and stats.rescaled == 12
    assert torch.allclose(stamps, torch.arange(24, dtype=torch.float64) / 25, atol=1e-3)
    red = _red_profile(frames[13:])  # the whole later picture, scaled: the ramp spans the width
    assert red[0] < 10 and red[-1] > 240


@pytest.mark.parametrize("suffix", ["mkv", "mp4"])
def test_sparse_variable_frame_rate_is_read_with_its_timestamps(tmp_path, suffix):
    stamps_ms = [i * 33 for i in range(10)] + [3300 + i * 33 for i in range(10)]  # a 3 s pause
    path = _write_video(
        tmp_path / f"screen.{suffix}", [(48, 32)] * 20, time_base=Fraction(1, 1000), pts=stamps_ms
    )
    if suffix == "mkv":
        _strip_stream_durations(path)
    info = probe_video(path)
    assert info.duration == pytest.approx(3.63, abs=0.05)
    frames, stamps, _, stats = _read_all(path)
    assert frames.shape[0] == 20 and stats.dropped == 0
    assert torch.allclose(stamps, torch.tensor(stamps_ms, dtype=torch.float64) / 1000, atol=2e-3)


def test_length_comes_from_the_video_stream_not_the_longer_audio(tmp_path):
    path = _strip_stream_durations(_write_short_video_long_audio(tmp_path / "long_audio.mkv"))
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(3.0, abs=0.05)
        assert container.streams.video[0].duration is None
        assert "DURATION" not in container.streams.video[0].metadata
    info = probe_video(path)
    assert info.duration == pytest.approx(1.0, abs=0.05) and info.frame_count == 24
    frames, _, _, _ = _read_all(path)  # not "truncated": the video has all its frames
    assert frames.shape[0] == 24


def test_start_offset_in_a_stream_with_a_nonzero_start_time(tmp_path):
    path = _write_video(tmp_path / "late_start.ts", [(64, 48)] * 50, rate=25, fmt="mpegts", first_pts=250)
    info = probe_video(path)
    assert info.start_time == pytest.approx(10.0) and info.frame_count == 50
    everything, _, _, _ = _read_all(path)
    frames, stamps, _, _ = _read_all(path, start=0.4)
    assert frames.shape[0] == 40 and stamps[0].item() == pytest.approx(0.4, abs=1e-3)
    assert torch.equal(frames, everything[10:])
    middle, _, _, _ = _read_all(path, start=0.4, end=1.0)
    assert torch.equal(middle, everything[10:25])


@pytest.mark.parametrize(("codec", "pix_fmt"), [("png", "rgb24"), ("mjpeg", "yuvj444p")])
def test_a_still_image_named_like_a_video_is_recognised(tmp_path, codec, pix_fmt):
    img = _pattern(3, 40, 30)
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = 40, 30, pix_fmt
    encoder.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
    path = tmp_path / "photo.mp4"
    path.write_bytes(b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)]))
    info = probe_video(path)
    assert info.is_image and info.frame_count == 1 and (info.width, info.height) == (40, 30)
    frames, _, _, _ = _read_all(path)
    assert frames.shape == (1, 3, 30, 40)
    if codec == "png":  # lossless: the very pixels
        assert np.array_equal(frames[0].permute(1, 2, 0).numpy(), img)
    assert not probe_video(_write_video(tmp_path / "clip.mp4", [(32, 32)] * 2)).is_image


def test_a_stream_with_no_decodable_frame_fails_with_one_line(tmp_path):
    source = _write_video(tmp_path / "clean.mkv", [(64, 48)] * 12, rate=25)
    path = _garble_first_packets(source, tmp_path / "noise.mkv", 12)
    with pytest.raises(VideoError, match="does not decode") as caught:
        probe_video(path)
    assert "\n" not in str(caught.value)


def test_a_matroska_file_cut_short_is_still_reported_truncated(tmp_path):
    whole = _write_video(tmp_path / "whole.mkv", [(48, 32)] * 96, gop=12)
    data = whole.read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: len(data) // 2])  # its header still declares 4 s
    info = probe_video(path)
    assert info.duration == pytest.approx(4.0, abs=0.1) and not info.frame_count_exact
    with pytest.raises(VideoError, match="truncated") as caught:
        _read_all(path)
    assert "\n" not in str(caught.value)


def test_probe_without_decoding_reports_the_display_size(tmp_path):
    path = _write_video(tmp_path / "anamorphic.mkv", [(240, 180)] * 3, sar=Fraction(4, 3))
    info = probe_video(path, decode_check=False)
    assert (info.coded_width, info.coded_height, info.width, info.height) == (240, 180, 320, 180)
