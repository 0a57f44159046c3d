"""Evaluation: the benchmark set, the baselines, the scoring harness, its bad-input errors, the
``spatialdreamer eval`` command and (one test) the Ray job."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spatialdreamer.cli.main import main as cli_main
from spatialdreamer.dvg import forward_warp
from spatialdreamer.eval import (
    DVGFill,
    Identity,
    NaiveDIBR,
    PredictStage,
    RefinerDVG,
    ScoreStage,
    align_to,
    build_baselines,
    ensure_benchmark,
    evaluate_pairs,
    format_markdown,
    load_scene,
    pair_videos,
    scene_files,
    score_files,
    score_video,
    summarise,
    write_results,
)
from spatialdreamer.eval.benchmark import BenchmarkConfig
from spatialdreamer.video import VideoWriter, write_lossless

SMALL = BenchmarkConfig(scenes=2, seed=3, height=48, width=64, frames=8)


def _write(path, frames: torch.Tensor, fps: float = 24.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps, codec="ffv1") as writer:
        writer.write(frames)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ensure_benchmark(root, SMALL)
    return root


@pytest.fixture(scope="module")
def predictions(bench, tmp_path_factory):
    """Every weight-free baseline run on the benchmark by the predict stage (no Ray)."""
    out = tmp_path_factory.mktemp("eval_out")
    stage = PredictStage(bench, out, ["identity", "naive_dibr", "dvg_fill"], threads=None)
    rows = stage({"scene": SMALL.names()})
    return out, pd.DataFrame(rows)


# --------------------------------------------------------------------------- benchmark


def test_benchmark_is_deterministic_reused_and_refuses_other_settings(bench, tmp_path):
    scene = load_scene(bench, "bench_0003")
    assert scene.left.shape == scene.right.shape == (8, 3, 48, 64)
    assert scene.disparity.shape == scene.occlusion.shape == (8, 1, 48, 64)
    assert scene.occlusion.dtype == torch.bool and scene.occlusion.any()
    assert scene.fps == pytest.approx(24.0)
    stamp = scene_files(bench, "bench_0003")["right"].stat().st_mtime_ns
    assert ensure_benchmark(bench, SMALL) == ["bench_0003", "bench_0004"]
    assert scene_files(bench, "bench_0003")["right"].stat().st_mtime_ns == stamp  # not rewritten
    again = tmp_path / "again"
    ensure_benchmark(again, BenchmarkConfig(scenes=1, seed=3, height=48, width=64, frames=8))
    twin = load_scene(again, "bench_0003")
    assert torch.equal(twin.left, scene.left) and torch.equal(twin.right, scene.right)  # lossless, seeded
    assert torch.equal(twin.disparity, scene.disparity)
    with pytest.raises(ValueError, match="another folder"):
        ensure_benchmark(bench, BenchmarkConfig(scenes=2, seed=4, height=48, width=64, frames=8))


def test_load_scene_names_missing_files(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="incomplete: missing"):
        load_scene(bench, "bench_9999")


def test_the_ground_truth_is_the_right_view(bench):
    """DVG on the true disparity must beat copying the left view by far; a swapped eye or a
    sign error in the benchmark would make the warp worse than doing nothing."""
    scene = load_scene(bench, "bench_0003")
    copy = score_video(Identity()(scene.left, scene.disparity), scene.right, scene.occlusion)
    dvg = score_video(DVGFill()(scene.left, scene.disparity), scene.right, scene.occlusion)
    assert dvg["psnr"] > copy["psnr"] + 5
    assert dvg["ssim"] > copy["ssim"]


# --------------------------------------------------------------------------- baselines


def test_baselines_on_simple_disparities():
    g = torch.Generator().manual_seed(0)
    left = torch.rand(2, 3, 24, 32, generator=g)
    zero = torch.zeros(2, 1, 24, 32)
    assert torch.equal(Identity()(left, zero), left)
    assert torch.allclose(NaiveDIBR()(left, zero), left)
    assert torch.allclose(DVGFill()(left, zero), left, atol=1e-6)
    shifted = NaiveDIBR()(left, zero + 3)  # every pixel moves 3 columns left
    assert torch.allclose(shifted[..., :-3], left[..., 3:])


def test_baselines_check_their_inputs():
    with pytest.raises(ValueError, match=r"left must be a float \[T,3,H,W\]"):
        Identity()(torch.rand(3, 24, 32), torch.zeros(1, 24, 32))
    with pytest.raises(ValueError, match=r"disparity must be \[T,1,H,W\]"):
        NaiveDIBR()(torch.rand(2, 3, 24, 32), torch.zeros(2, 1, 24, 31))
    with pytest.raises(ValueError, match="unknown methods"):
        build_baselines(["identity", "magic"])
    with pytest.raises(ValueError, match="--pipeline PATH"):
        build_baselines(["dvg_refiner"])


def test_align_to_recovers_one_scale_and_shift_per_video():
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(align_to(x, 7.5 * x - 2.0), 7.5 * x - 2.0, atol=1e-5)


def test_refiner_baseline_runs_a_saved_pipeline_and_keeps_warped_pixels(bench, tiny_pipeline_dir):
    scene = load_scene(bench, "bench_0003")
    refiner = RefinerDVG(tiny_pipeline_dir, num_inference_steps=2)
    out = refiner(scene.left, scene.disparity)
    assert out.shape == scene.left.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    warp = forward_warp(scene.left, scene.disparity)
    keep = ~warp.holes.expand_as(out)
    assert torch.allclose(out[keep], warp.image.clamp(0, 1)[keep], atol=1e-5)
    assert not torch.allclose(out[~keep], torch.zeros_like(out[~keep]))  # holes were generated
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        RefinerDVG(bench / "no_pipeline_here")


# --------------------------------------------------------------------------- harness


def test_score_video_of_the_ground_truth_is_perfect_and_at_the_e_warp_floor(bench):
    scene = load_scene(bench, "bench_0004")
    row = score_video(scene.right, scene.right, scene.occlusion, chunk_size=3)  # chunks cross pairs
    assert row["frames"] == 8
    assert row["psnr"] == pytest.approx(100.0) and row["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["psnr_holes"] == pytest.approx(100.0)
    assert row["e_warp_x1e3"] == pytest.approx(row["e_warp_gt_x1e3"])
    assert math.isnan(row["lpips"]) and row["fvd_pred"] is None
    whole = score_video(scene.right, scene.right, chunk_size=8)
    assert whole["e_warp_x1e3"] == pytest.approx(row["e_warp_x1e3"], rel=1e-6)  # chunking is invisible


def test_score_video_takes_a_pluggable_flow():
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 12, 24, generator=g), size=(48, 96), mode="bicubic"
    )
    video = torch.stack([torch.roll(base[0].clamp(0, 1), 2 * t, dims=-1) for t in range(4)])[..., 8:-8]

    def exact(source, target):  # frame_t(p) = frame_{t+1}(p + (2, 0)); backward is the opposite
        flow = torch.zeros(source.shape[0], 2, *source.shape[-2:])
        flow[:, 0] = 2.0 if torch.allclose(torch.roll(source, 2, -1)[..., 4:-4], target[..., 4:-4]) else -2.0
        return flow

    def still(source, target):
        return torch.zeros(source.shape[0], 2, *source.shape[-2:])

    assert score_video(video, video, flow_fn=exact)["e_warp_x1e3"] < 1e-6
    assert score_video(video, video, flow_fn=still)["e_warp_x1e3"] > 1.0


def test_score_files_names_mismatched_frame_counts_and_sizes(bench, tmp_path):
    gt = scene_files(bench, "bench_0003")["right"]
    scene = load_scene(bench, "bench_0003")
    short = _write(tmp_path / "short.mkv", scene.right[:5])
    with pytest.raises(ValueError, match="frame counts differ: pred has 5, gt has 8 frames"):
        score_files(short, gt, chunk_size=4)
    small = _write(tmp_path / "small.mkv", scene.right[..., :40, :60])
    with pytest.raises(ValueError, match="frame sizes differ: pred is 60x40, gt is 64x48"):
        score_files(small, gt)
    mask = write_lossless(tmp_path / "mask.mkv", np.zeros((7, 48, 64), bool))
    with pytest.raises(ValueError, match="mask has 7"):
        score_files(gt, gt, mask)


@pytest.mark.parametrize(
    "case", ["missing", "file", "empty", "pred_without_gt", "gt_without_pred", "masks", "twice"]
)
def test_pair_videos_bad_folders_give_one_line_errors(bench, tmp_path, case):
    pred, gt = tmp_path / "pred", bench / "right"
    right = scene_files(bench, "bench_0003")["right"]
    masks = None
    if case == "file":
        pred.write_text("not a folder")
    elif case != "missing":
        pred.mkdir()
    if case in ("pred_without_gt", "gt_without_pred", "masks", "twice"):
        for name in ("bench_0003", "bench_0004"):
            (pred / f"{name}.mkv").write_bytes(right.read_bytes())
    if case == "pred_without_gt":
        (pred / "extra.mkv").write_bytes(right.read_bytes())
    if case == "gt_without_pred":
        (pred / "bench_0004.mkv").unlink()
    if case == "masks":
        masks = tmp_path / "masks"
        masks.mkdir()
    if case == "twice":
        (pred / "bench_0003.mp4").write_bytes(b"")
    expected = {
        "missing": "does not exist",
        "file": "is not a directory",
        "empty": "holds no videos",
        "pred_without_gt": "1 predictions have no ground truth",
        "gt_without_pred": "1 ground-truth videos have no prediction",
        "masks": "--masks .* lacks 2 videos",
        "twice": "two videos named bench_0003",
    }[case]
    with pytest.raises((ValueError, FileNotFoundError, NotADirectoryError), match=expected) as info:
        pair_videos(pred, gt, masks)
    assert "\n" not in str(info.value)


def test_evaluate_pairs_records_a_corrupt_video_and_goes_on(bench, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "bench_0003.mkv").write_bytes(scene_files(bench, "bench_0003")["right"].read_bytes())
    (pred / "bench_0004.mkv").write_text("this is not a video")
    pairs = pair_videos(pred, bench / "right", bench / "occlusion", bench / "left")
    rows = evaluate_pairs(pairs, "mine")
    assert list(rows["method"]) == ["mine", "mine", "identity", "identity"]
    errors = dict(zip(rows["video"][:2], rows["error"][:2], strict=True))
    assert errors["bench_0003"] == "" and errors["bench_0004"].startswith("bench_0004.mkv: ")
    summary = summarise(rows, order=["identity"])
    assert list(summary["method"]) == ["identity", "mine"]
    assert summary.set_index("method").loc["mine", "failed"] == 1
    assert summary.set_index("method").loc["mine", "psnr"] == pytest.approx(100.0)


def test_summary_fvd_omitted_columns_and_written_tables(tmp_path):
    rng = np.random.default_rng(0)

    def row(method, video, psnr, feats):
        return {
            "method": method,
            "video": video,
            "psnr": psnr,
            "ssim": 0.9,
            "lpips": float("nan"),
            "e_warp_x1e3": 1.0,
            "e_warp_gt_x1e3": 0.5,
            "fvd_pred": feats.astype(np.float32).tobytes(),
            "fvd_gt": (feats * 0).astype(np.float32).tobytes(),
            "error": "",
        }

    rows = [row("a", f"v{i}", 30.0 + i, rng.normal(size=4)) for i in range(3)]
    rows += [
        row("b", "v0", 20.0, rng.normal(size=4)),
        {**row("b", "v1", 0.0, rng.normal(size=4)), "error": "bad"},
    ]
    summary = summarise(rows)
    by = summary.set_index("method")
    assert by.loc["a", "psnr"] == pytest.approx(31.0)
    assert by.loc["b", "psnr"] == pytest.approx(20.0) and by.loc["b", "failed"] == 1
    assert by.loc["a", "fvd"] > 0 and math.isnan(by.loc["b", "fvd"])  # one good video: no FVD
    table = format_markdown(summary, ["a note"], {"a": "Method A"})
    assert "LPIPS" not in table  # nobody had LPIPS weights: the column is left out, not faked
    assert "| Method A | 31.00 | 0.9000 |" in table and "1 (1 failed)" in table and "- a note" in table
    csv_path, md_path = write_results(pd.DataFrame(rows), summary, tmp_path, ["a note"], {"a": "Method A"})
    assert pd.read_csv(csv_path)["label"].tolist() == ["Method A", "b"]
    assert "fvd_pred" not in pd.read_csv(tmp_path / "per_video.csv").columns
    assert md_path.read_text() == table


def test_stages_predict_and_score_in_a_loop(bench, predictions):
    out, rows = predictions
    assert (rows["error"] == "").all() and len(rows) == 6
    assert all(
        (out / "pred" / m / "bench_0003.mkv").is_file() for m in ("identity", "naive_dibr", "dvg_fill")
    )
    broken = PredictStage(bench, out / "broken", ["identity"], threads=None)({"scene": ["bench_9999"]})
    scored = pd.DataFrame(ScoreStage(threads=None)({k: list(v) + broken[k] for k, v in rows.items()}))
    assert scored["error"].tolist()[-1].startswith("bench_9999: benchmark scene bench_9999 is incomplete")
    good = scored[scored["error"] == ""].groupby("method")["psnr"].mean()
    assert good["dvg_fill"] > good["identity"] + 5
    assert (scored["fvd_pred"] == b"").all()


# --------------------------------------------------------------------------- CLI


def test_cli_eval_writes_tables_with_the_copy_left_row(bench, predictions, tmp_path, capsys):
    out, _ = predictions
    rc = cli_main(
        [
            "eval",
            "--pred",
            str(out / "pred" / "dvg_fill"),
            "--benchmark",
            str(bench),
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| Copy left view (identity) |" in printed and "| DVG + classical fill |" in printed
    assert "LPIPS omitted" in printed and "FVD omitted" in printed
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["method"].tolist() == ["identity", "dvg_fill"] and (results["videos"] == 2).all()


def test_cli_eval_bad_input_is_one_line(bench, predictions, tmp_path, capsys):
    out, _ = predictions
    assert cli_main(["eval", "--pred", str(tmp_path / "nope"), "--gt", str(bench / "right"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("spatialdreamer eval: error: --pred") and "does not exist" in err and "\n" not in err
    )
    assert cli_main(["eval", "--pred", str(out / "pred" / "dvg_fill"), "--quiet"]) == 1
    assert "pass --gt DIR" in capsys.readouterr().err
    mine = tmp_path / "mine"
    scene = load_scene(bench, "bench_0003")
    _write(mine / "bench_0003.mkv", scene.right)
    _write(mine / "bench_0004.mkv", scene.right[:6])
    rc = cli_main(
        ["eval", "--pred", str(mine), "--gt", str(bench / "right"), "--out", str(tmp_path / "o"), "--quiet"]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert (
        "failed: mine bench_0004: bench_0004.mkv: frame counts differ: pred has 6, gt has 8" in captured.err
    )
    assert "| mine |" in captured.out and "1 (1 failed)" in captured.out
    assert "Copy-the-left-view baseline not scored" in captured.out


# --------------------------------------------------------------------------- the Ray job


def test_evaluate_job_scores_baselines_refiner_and_a_prediction_folder(
    bench, predictions, tiny_pipeline_dir, tmp_path
):
    ray = pytest.importorskip("ray")
    from pipelines.evaluate import main as job_main

    out_dir, _ = predictions
    config = tmp_path / "eval_small.yaml"
    config.write_text(
        "scenes: 2\nseed: 3\nwidth: 64\nheight: 48\nframes: 8\nfps: 24.0\n"
        "methods: [identity, dvg_fill]\nrefiner_steps: 1\n"
        "predict_concurrency: [1, 1]\nscore_concurrency: [1, 1]\n"
    )
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rc = job_main(
            [
                "--out", str(tmp_path / "out"), "--benchmark", str(bench), "--config", str(config),
                "--pipeline", str(tiny_pipeline_dir),
                "--pred", str(out_dir / "pred" / "naive_dibr"), "--name", "my_method",
            ]
        )  # fmt: skip
    finally:
        if started:
            ray.shutdown()
    assert rc == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results["method"].tolist() == ["identity", "dvg_fill", "dvg_refiner", "my_method"]
    assert (results["videos"] == 2).all() and (results["failed"] == 0).all()
    per_video = pd.read_csv(tmp_path / "out" / "per_video.csv")
    assert len(per_video) == 8 and per_video["psnr"].notna().all()
    assert (tmp_path / "out" / "pred" / "dvg_refiner" / "bench_0004.mkv").is_file()
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| DVG + RefinerNet |" in markdown and "E_warp of the ground-truth videos themselves" in markdown
