"""pipelines.train: the Ray Train job on a local 2-CPU Ray (2 workers), resume, bad input."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.train import load_config, main
from spatialdreamer.models import SpatialDreamerPipeline
from spatialdreamer.train import STATE_DIR

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _state(folder) -> dict:
    return json.loads((folder / STATE_DIR / "state.json").read_text())


def test_job_trains_two_workers_writes_a_loadable_pipeline_and_resumes(ray_session, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--corpus", corpus, "--output", str(out), "--config", "tiny", "--num-workers", "2"]
    # stage 1: single frames, temporal layers frozen
    assert main([*args, "--stage", "frames", "--steps", "1"]) == 0
    assert "trained frames stage to step 1" in capsys.readouterr().out
    frames_state = _state(out / "frames" / "step_00000001")
    assert frames_state["config"]["stage"] == "frames" and frames_state["config"]["batch_size"] == 4
    # stage 2 starts from stage 1's checkpoint
    assert main([*args, "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trained video stage to step 2" in printed
    assert f"started from: {out / 'frames' / 'step_00000001'}" in printed
    first = out / "video" / "step_00000002"
    state = _state(first)
    assert state["step"] == 2 and state["world_size"] == 2
    assert state["metrics"]["samples_seen"] == 2 * 2 * 2  # steps x batch x workers
    pipe = SpatialDreamerPipeline.from_pretrained(out / "pipeline")
    assert type(pipe.refinernet).__name__ == "RefinerNet" and not (out / "pipeline" / STATE_DIR).exists()

    # rerunning with more steps resumes from the latest checkpoint instead of starting over
    assert main([*args, "--steps", "3"]) == 0
    resumed = _state(out / "video" / "step_00000003")
    assert resumed["step"] == 3 and resumed["metrics"]["start_step"] == 2
    assert "trained video stage to step 3" in capsys.readouterr().out
    assert os.path.isfile(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corpus", "/nonexistent/corpus"], "no clips table under /nonexistent/corpus"),
        (["--query", "hole_ratio > 5"], "no clips in .* match query 'hole_ratio > 5'"),
        (["--config", "gigantic"], "train config 'gigantic' not found .*base, full, tiny"),
    ],
    ids=["missing_corpus", "empty_after_filter", "unknown_config"],
)
def test_bad_input_gives_a_one_line_error(corpus, tmp_path, capsys, extra, message):
    import re

    args = ["--corpus", corpus, "--output", str(tmp_path / "out"), *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing started


def test_config_overrides_and_unknown_settings(tmp_path):
    config, ray_cfg = load_config("tiny", {"steps": 7, "num_workers": 3, "query": "hole_ratio < 1"})
    assert (config.steps, config.query, ray_cfg["num_workers"]) == (7, "hole_ratio < 1", 3)
    frames, _ = load_config("tiny", {"steps": 7}, stage="frames")  # the config's stages: section
    assert (frames.stage, frames.frames, frames.batch_size, frames.steps) == ("frames", 1, 4, 7)
    assert config.stage == "video" and config.batch_size == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  model: tiny\nray:\n  num_gpus: 4\n")
    with pytest.raises(ValueError, match="unknown ray settings: num_gpus"):
        load_config(str(bad))
