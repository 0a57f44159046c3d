import av
import numpy as np
import pytest
import torch

from spatialdreamer.synth import make_scene
from spatialdreamer.video import (
    VideoError,
    VideoWriter,
    probe_video,
    read_frames,
    read_lossless,
    stream_frames,
    write_lossless,
)
from spatialdreamer.video import reader as reader_module


def _all_frames(path, **kw):
    chunks = list(stream_frames(path, **kw))
    return torch.cat([c.frames for c in chunks]), torch.cat([c.timestamps for c in chunks]), chunks


def _audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


def test_probe_reports_size_rate_length_and_audio(video_with_audio):
    info = probe_video(video_with_audio)
    assert (info.width, info.height) == (132, 98)  # odd 131x97 padded to even for 4:2:0
    assert info.fps == pytest.approx(24.0) and info.frame_count == 48
    assert info.duration == pytest.approx(2.0, abs=0.05) and info.has_audio and info.rotation == 0


def test_streaming_in_chunks_returns_every_frame_in_order(video_with_audio):
    frames, stamps, chunks = _all_frames(video_with_audio, chunk_size=10)
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 8]
    assert [c.start_index for c in chunks] == [0, 10, 20, 30, 40]
    assert frames.shape == (48, 3, 98, 132) and frames.dtype == torch.uint8
    assert torch.allclose(stamps, torch.arange(48, dtype=torch.float64) / 24, atol=1e-3)


def test_start_and_end_select_a_time_range(video_with_audio):
    frames, stamps, _ = _all_frames(video_with_audio, chunk_size=7, start=0.5, end=1.0)
    assert frames.shape[0] == 12
    assert stamps[0] == pytest.approx(0.5, abs=1e-3)


def test_encoding_is_visually_lossless_and_pads_odd_sizes(tmp_path):
    scene = make_scene(0, height=63, width=95, frames=6)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 24.0) as writer:
        writer.write(scene.left[:3])
        writer.write(scene.left[3:])
    frames, _, _ = _all_frames(out)
    assert frames.shape == (6, 3, 64, 96)
    decoded = frames[..., :63, :95].float() / 255
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    mse = (((decoded - scene.left) * luma).sum(1) ** 2).mean()
    assert 10 * torch.log10(1 / mse) > 38.0  # luma: 4:2:0 halves chroma resolution by design


def test_audio_is_copied_with_the_video_and_trimmed_with_it(video_with_audio, tmp_path):
    frames, _, _ = _all_frames(video_with_audio)
    out = tmp_path / "with_audio.mp4"
    with VideoWriter(out, 24.0, audio_from=video_with_audio) as writer:
        writer.write(frames)
    assert probe_video(out).has_audio
    assert _audio_seconds(out) == pytest.approx(2.0, abs=0.06)
    part = tmp_path / "part.mp4"
    with VideoWriter(part, 24.0, audio_from=video_with_audio, audio_range=(0.5, 1.5)) as writer:
        writer.write(frames[12:36])
    assert _audio_seconds(part) == pytest.approx(1.0, abs=0.06)


def test_pcm_audio_is_reencoded_when_the_container_cannot_hold_it(media_dir, tmp_path):
    from spatialdreamer.synth.videos import write_tone

    wav = write_tone(media_dir / "tone_for_mp4.wav", 1.0)
    out = tmp_path / "pcm_source.mp4"
    with VideoWriter(out, 24.0, audio_from=wav) as writer:
        writer.write(torch.rand(24, 3, 32, 32))
    assert probe_video(out).audio_codec == "aac"
    assert _audio_seconds(out) == pytest.approx(1.0, abs=0.06)


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    stamps = torch.tensor([0.0, 0.04, 0.1, 0.13, 0.3, 0.31, 0.5], dtype=torch.float64)
    out = tmp_path / "vfr.mp4"
    with VideoWriter(out, 24.0) as writer:
        writer.write(torch.rand(7, 3, 32, 32), timestamps=stamps)
    _, read_back, _ = _all_frames(out, check_complete=False)
    assert torch.allclose(read_back, stamps, atol=2e-3)


def test_rotation_is_applied_so_frames_come_out_upright(tmp_path):
    img = np.zeros((32, 48, 3), dtype=np.uint8)
    img[:4, :4] = 255  # a white square at the stored top-left corner
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (90, 32, 48)
    frames, _, _ = _all_frames(path)
    assert frames.shape[-2:] == (48, 32)
    # rotated 90 degrees counter-clockwise for display: stored top-left ends up bottom-left
    assert frames[0, :, -3, 1].float().mean() > 200 and frames[0, :, 1, 1].float().mean() < 50
    assert read_frames(path, [0]).shape[-2:] == (48, 32)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_random_access_matches_streaming(video_with_audio, backend):
    streamed, _, _ = _all_frames(video_with_audio)
    picked = read_frames(video_with_audio, [40, 3, 17], backend=backend)
    if backend == "pyav":
        assert torch.equal(picked, streamed[[40, 3, 17]])
    else:  # decord converts YUV -> RGB less accurately: the same frames, a few levels off
        for frame, index in zip(picked.float(), [40, 3, 17], strict=True):
            errors = [(frame - streamed[i].float()).abs().mean() for i in (index - 1, index, index + 1)]
            assert errors[1] < min(errors[0], errors[2]) and errors[1] <= 4.0
    with pytest.raises(IndexError):
        read_frames(video_with_audio, [48], backend=backend)


def test_pyav_failure_falls_back_to_decord(video_with_audio, monkeypatch):
    def broken(*args, **kwargs):
        raise av.error.InvalidDataError(1094995529, "forced failure")
        yield  # pragma: no cover

    monkeypatch.setattr(reader_module, "_stream_pyav", broken)
    frames, _, _ = _all_frames(video_with_audio, chunk_size=16)
    assert frames.shape[0] == 48


def test_lossless_storage_is_bit_exact(tmp_path):
    depth = np.random.default_rng(0).integers(0, 65536, (4, 17, 23), dtype=np.uint16)
    assert np.array_equal(read_lossless(write_lossless(tmp_path / "d.mkv", depth)), depth)
    mask = np.random.default_rng(1).random((4, 17, 23)) > 0.5
    assert np.array_equal(read_lossless(write_lossless(tmp_path / "m.mkv", mask)) > 127, mask)
    with pytest.raises(TypeError, match="uint16"):
        write_lossless(tmp_path / "f.mkv", np.zeros((1, 4, 4), dtype=np.float32))


def test_writer_leaves_nothing_behind_on_failure(tmp_path):
    out = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, 24.0) as writer:
        writer.write(torch.rand(2, 3, 16, 16))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(out, 24.0).close()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_a_size_change(tmp_path):
    writer = VideoWriter(tmp_path / "x.mp4", 24.0)
    writer.write(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="frame size changed"):
        writer.write(torch.rand(1, 3, 16, 18))
    writer.abort()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "file not found"),
        ("empty", "file is empty"),
        ("not_a_video", "not a readable video"),
        ("zero_frames", "zero frames"),
        ("audio_only", "no video stream"),
    ],
)
def test_bad_inputs_fail_with_one_clear_line(bad_videos, kind, message):
    with pytest.raises(VideoError, match=message) as info:
        probe_video(bad_videos[kind])
    assert "\n" not in str(info.value)


def test_truncated_video_is_reported(bad_videos):
    with pytest.raises(VideoError, match="truncated|not a readable|does not decode|corrupt"):
        probe_video(bad_videos["truncated"])
        list(stream_frames(bad_videos["truncated"]))


def test_video_error_survives_pickling_across_processes():
    import pickle

    error = pickle.loads(pickle.dumps(VideoError("/x/clip.mp4", "file is empty")))
    assert isinstance(error, VideoError)
    assert (error.path, error.reason, str(error)) == (
        "/x/clip.mp4",
        "file is empty",
        "/x/clip.mp4: file is empty",
    )


def test_8_bit_frames_become_yuv_with_luma_exact_and_chroma_within_a_level_of_accurate_rounding(tmp_path):
    """The writer converts 8-bit RGB without swscale's accurate rounding (a third cheaper):
    luma is the same, chroma at most one level off; more than 8 bits keep it."""
    from av.video.reformatter import Interpolation

    from spatialdreamer.video import VideoWriter
    from spatialdreamer.video.colour import sws_colorspace, sws_range

    scene = make_scene(0, height=96, width=160, frames=1)
    rgb = (scene.left[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    writer = VideoWriter(tmp_path / "x.mp4", 24.0)
    writer.write(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    fast = writer._yuv_frame(rgb)
    accurate = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p",
        dst_colorspace=sws_colorspace(writer.colour.matrix),
        dst_color_range=sws_range(writer.colour),
        interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND,
    )
    writer.close()
    planes = [[np.frombuffer(f.planes[i], np.uint8).astype(int) for i in range(3)] for f in (fast, accurate)]
    assert np.array_equal(planes[0][0], planes[1][0])
    for i in (1, 2):
        assert np.abs(planes[0][i] - planes[1][i]).max() <= 1
