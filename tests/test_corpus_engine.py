"""The corpus engine's stages by resource: cuts and trimming, flow once per pair, compact data
between stages, clip scores and filters, the failure policy and the device choice."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import torch

from pipelines.build_dataset import choose_device, load_config
from spatialdreamer.corpus import (
    CorpusConfig,
    DepthDVGStage,
    TransientError,
    is_transient,
    prepare_clips,
    record_failure,
    rows_to_batch,
    split_video,
    write_clip_stage,
)
from spatialdreamer.corpus.batches import pack_bits_on_device, pack_mask, unpack_mask
from spatialdreamer.corpus.records import accounted_clips, retry_transient
from spatialdreamer.corpus.scores import depth_scores, frame_scores, quality_problem
from spatialdreamer.data.codecs import disparity_to_u16
from spatialdreamer.data.ids import video_id
from spatialdreamer.dvg import warp_back_pair
from spatialdreamer.dvg.flow import dis_pair_flows, flow_warp, upscale_flow, view_flow
from spatialdreamer.synth import make_scene, random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video.clips import ClipSplitter, clip_ranges
from spatialdreamer.video.shots import CutDetector


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def clip_rows(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    video = write_scene(random_spec(2, height=96, width=160, frames=24), root / "in", "v").left
    row = {"path": str(video), "video_id": video_id(str(video)), "source": "in", "license": "", "tags": []}
    return list(split_video(row, str(root / "scratch"), tiny))


def _shots(lengths: list[int], size=(48, 64)) -> torch.Tensor:
    """Frames of shots of the given lengths: each a distinct colour with a little texture."""
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 200, 220)]
    frames = []
    for shot, length in enumerate(lengths):
        base = np.array(colours[shot % len(colours)], np.float32)
        for _ in range(length):
            noise = rng.normal(0, 6, (*size, 3))
            frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


# --- cuts and clips ----------------------------------------------------------------------------


def test_a_cut_close_to_the_previous_one_is_kept_and_no_clip_crosses_it():
    frames = _shots([10, 4, 20])
    detector = CutDetector()
    flags = detector(frames[:7]) + detector(frames[7:])  # streamed in chunks
    assert [i for i, cut in enumerate(flags) if cut] == [0, 10, 14]
    splitter = ClipSplitter(8, 8, 4, trim=2)
    clips = [c for i in range(len(frames)) for c in splitter.push(frames[i], i / 24, flags[i])]
    clips += splitter.finish()
    spans = [(c.start, c.stop) for c in clips]
    assert spans == [(0, 8), (16, 24), (24, 32)]  # the 4-frame shot is too short after trimming
    assert all(not (c.start < cut < c.stop) for c in clips for cut in (10, 14))


def test_a_dissolve_is_flagged_inside_the_transition_and_nowhere_else():
    a, b = _shots([20]).float(), _shots([0, 20]).float()
    mix = [a[i] * (1 - w) + b[i] * w for i, w in enumerate(np.linspace(0, 1, 16))]
    frames = torch.cat([a[:12], torch.stack(mix).round().to(torch.uint8), b[:12].to(torch.uint8)])
    frames = frames.to(torch.uint8)
    flags = CutDetector()(frames)
    cuts = [i for i, cut in enumerate(flags) if cut]
    assert cuts[0] == 0 and len(cuts) >= 2
    assert all(12 <= c < 28 for c in cuts[1:]), cuts


def test_trimmed_streaming_splitter_makes_exactly_the_planned_clips():
    rng = random.Random(1)
    for _ in range(400):
        length, trim = rng.randint(1, 9), rng.randint(0, 4)
        stride, minimum, total = rng.randint(1, 12), rng.randint(1, length), rng.randint(0, 50)
        cuts = sorted(rng.sample(range(1, total), k=min(rng.randint(0, 5), total - 1))) if total > 1 else []
        splitter, got = ClipSplitter(length, stride, minimum, trim), []
        for i in range(total):
            for clip in splitter.push(torch.tensor([i]), i / 24, i in cuts):
                assert clip.frames.flatten().tolist() == list(range(clip.start, clip.stop))
                assert len(splitter.buffer) <= length + trim
                got.append((clip.shot, clip.start, clip.stop))
        got += [(c.shot, c.start, c.stop) for c in splitter.finish()]
        assert got == clip_ranges(cuts, total, length, stride, minimum, trim)
        for _, start, stop in got:  # trim frames away from every cut
            assert all(stop <= c - trim or start >= c + trim for c in cuts)


# --- flow once per pair, reused -----------------------------------------------------------------


def test_pair_flows_are_computed_once_per_pair_and_match_the_scene():
    scene = make_scene(1, height=96, width=160, frames=4, motion=3.0, pan=0.0)
    frames = (scene.left.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    forward, backward = dis_pair_flows(frames)
    assert forward.shape == backward.shape == (3, 2, 96, 160)
    assert float((torch.from_numpy(forward) - scene.flow).norm(dim=1).median()) < 0.5
    half, _ = dis_pair_flows(frames, scale=0.5)
    assert half.shape == (3, 2, 48, 80)
    up = upscale_flow(torch.from_numpy(half), 96, 160)
    assert float((up - scene.flow).norm(dim=1).median()) < 1.0
    with pytest.raises(ValueError, match="uint8"):
        dis_pair_flows(frames.astype(np.float32))


def test_flow_carried_into_the_other_eye_matches_its_motion():
    scene = make_scene(3, height=96, width=160, frames=3, motion=3.0, pan=1.0)
    d = scene.disparity
    pair = warp_back_pair(scene.left, d)
    carried, holes = view_flow(scene.flow, d[:-1], d[1:])
    right = pair.warped
    ok = ~(holes | pair.warped_holes[:-1] | flow_warp(pair.warped_holes[1:].float(), carried).gt(0.5))
    ok[..., :8] = False
    ok[..., -8:] = False

    def error(flow):
        return float(((flow_warp(right[1:], flow) - right[:-1]).abs().mean(1, keepdim=True))[ok].mean())

    assert error(carried) < 0.5 * error(torch.zeros_like(carried))
    assert error(carried) < error(scene.flow)  # the disparity change is accounted for


def test_carried_flow_follows_a_change_of_depth():
    """Still in the source view, but coming nearer (disparity 2 -> 5 px): in the other eye the
    surface moves 3 px to the left."""
    flow = torch.zeros(1, 2, 8, 32)
    carried, holes = view_flow(flow, torch.full((1, 1, 8, 32), 2.0), torch.full((1, 1, 8, 32), 5.0))
    inside = ~holes[0, 0, :, 4:-4]
    assert torch.allclose(carried[0, 0, :, 4:-4][inside], torch.tensor(-3.0))
    assert torch.allclose(carried[0, 1], torch.tensor(0.0))
    with pytest.raises(ValueError, match="flow"):
        view_flow(torch.zeros(1, 2, 8, 30), torch.zeros(1, 1, 8, 32), torch.zeros(1, 1, 8, 32))


def test_dvg_stage_uses_the_handed_in_flow_and_runs_no_dis(tiny, clip_rows, tmp_path, monkeypatch):
    prepared = prepare_clips(rows_to_batch(clip_rows[:1]), str(tmp_path), tiny)

    def no_dis(*args, **kwargs):
        raise AssertionError("DVG estimated flow again in the depth + DVG stage")

    # (the weight-free ``parallax`` depth model of the tiny config tracks flow itself; that is
    # its depth estimate, not DVG's flow)
    monkeypatch.setattr("spatialdreamer.dvg.sample.dis_flow", no_dis)
    monkeypatch.setattr("spatialdreamer.dvg.masks.dis_flow", no_dis)
    out = DepthDVGStage(tiny, str(tmp_path), device="cpu")(prepared)
    assert len(out["clip_id"]) == 1


def test_depth_batch_reaches_the_depth_model(tiny, monkeypatch, tmp_path):
    import spatialdreamer.corpus.dvg as dvg

    seen = {}

    def fake_loader(name, device="auto", **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(dvg, "load_depth_estimator", fake_loader)
    config = CorpusConfig.from_dict({**tiny.__dict__, "depth_model": "some/model", "depth_batch": 24})
    with pytest.raises(RuntimeError, match="stop here"):
        DepthDVGStage(config, str(tmp_path), device="cpu")
    assert seen == {"name": "some/model", "max_batch_size": 24}


# --- compact data between stages ----------------------------------------------------------------


def _nbytes(batch: dict) -> int:
    total = 0
    for values in batch.values():
        for v in values if values.dtype == object else [values]:
            total += len(v) if isinstance(v, bytes) else np.asarray(v).nbytes
    return total


def test_only_compact_data_crosses_between_stages(tiny, clip_rows, tmp_path):
    config = CorpusConfig.from_dict({**tiny.__dict__, "flow_scale": 0.5})
    split = rows_to_batch(clip_rows[:1])
    assert split["frames"].dtype == np.uint8
    prepared = prepare_clips(split, str(tmp_path), config)
    assert prepared["flow_forward"].dtype == np.float16 and prepared["flow_forward"].shape[-2:] == (40, 64)
    assert isinstance(prepared["rgb_mp4"][0], bytes) and len(prepared["rgb_mp4"][0]) > 0
    out = DepthDVGStage(config, str(tmp_path), device="cpu")(prepared)
    assert not {"frames", "flow_forward", "flow_backward"} & set(out)
    assert out["right"].dtype == out["back"].dtype == np.uint8
    assert out["back_holes_bits"].shape[-1] == 128 // 8 and out["disparity_u16"].dtype == np.uint16
    t, h, w = 8, 80, 128
    landed = t * h * w * (3 + 3 * 2 + 2 * 1 + 4)  # frames, right, back u8; bool masks; float32 disparity
    assert _nbytes(out) < 0.6 * landed
    written = write_clip_stage(out, str(tmp_path), config)
    assert list(written["clip_id"]) == list(out["clip_id"])


def test_mask_bits_and_disparity_codes_are_lossless():
    mask = torch.rand(3, 5, 13) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(mask), 13), mask.numpy())
    assert np.array_equal(pack_bits_on_device(mask).numpy(), pack_mask(mask))  # the CUDA path
    from spatialdreamer.corpus.dvg import disparity_codes

    d = torch.randn(2, 7, 9) * 40
    assert np.array_equal(disparity_codes(d), disparity_to_u16(d))


# --- scores and filters -------------------------------------------------------------------------


def test_frame_scores_see_bars_darkness_blur_and_duplicates():
    rng = np.random.default_rng(0)
    sharp = rng.integers(40, 220, (4, 80, 128, 3), dtype=np.uint8)
    boxed = sharp.copy()
    boxed[:, :10] = 0
    boxed[:, -10:] = 0
    blurred = np.stack([cv2.GaussianBlur(f, (9, 9), 3) for f in sharp])
    s, b, bl = frame_scores(sharp), frame_scores(boxed), frame_scores(blurred)
    assert s["black_border"] == 0 and b["black_border"] == pytest.approx(20 / 80)
    assert bl["sharpness"] < 0.2 * s["sharpness"]
    assert frame_scores(sharp // 10)["brightness"] < 0.1 < s["brightness"]
    assert s["phash"] == frame_scores(sharp.copy())["phash"] and len(s["phash"]) == 16
    config = CorpusConfig(max_black_border=0.1, min_sharpness=5.0, min_brightness=0.05)
    assert quality_problem(b, config).startswith("black bars: black_border 0.25 > max_black_border 0.1")
    assert quality_problem(frame_scores(sharp // 10), config).startswith("too dark")
    assert quality_problem(s, config) is None


def test_filtered_clips_are_recorded_once_and_never_reach_the_gpu_stage(tiny, clip_rows, tmp_path):
    config = CorpusConfig.from_dict({**tiny.__dict__, "min_brightness": 0.99})
    out = prepare_clips(rows_to_batch(clip_rows[:2]), str(tmp_path), config)
    assert len(out["clip_id"]) == 0
    records = sorted((tmp_path / "_failures").rglob("*.filter.json"))
    assert len(records) == 2
    assert json.loads(records[0].read_text())["error"].startswith("too dark: brightness")
    assert {r["clip_id"] for r in clip_rows[:2]} <= accounted_clips(str(tmp_path), clip_rows[0]["video_id"])


def test_depth_scores_describe_the_scene_not_the_drawn_budget(tiny, clip_rows, tmp_path):
    outs = []
    for budget in ([1.0, 1.0], [6.0, 6.0]):
        config = CorpusConfig.from_dict({**tiny.__dict__, "budget_range": budget})
        outs.append(
            DepthDVGStage(config, str(tmp_path), device="cpu")(
                prepare_clips(rows_to_batch(clip_rows[:1]), str(tmp_path), config)
            )
        )
    low, high = outs
    for key in ("depth_p05", "depth_p50", "depth_p95", "depth_edges"):
        assert low[key][0] == high[key][0], key
    assert high["disparity_p95"][0] > 3 * low["disparity_p95"][0]
    flat = depth_scores(torch.full((2, 1, 8, 8), 0.5))
    assert flat["depth_edges"] == 0.0 and flat["depth_p05"] == flat["depth_p95"] == 0.5


# --- failure policy -----------------------------------------------------------------------------


def test_errors_are_classified_transient_or_permanent():
    assert is_transient(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_transient(ConnectionResetError("connection reset by peer"))
    assert is_transient(OSError("AWS Error SLOW_DOWN: Please reduce your request rate (503)"))
    assert not is_transient(OSError("disk full"))
    assert not is_transient(ValueError("frames must be non-empty"))


def test_transient_errors_are_retried_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("read timed out")
        return "ok"

    assert retry_transient(flaky, "test") == "ok" and len(calls) == 3

    def always(exc):
        def call():
            calls.append(1)
            raise exc

        return call

    calls.clear()
    with pytest.raises(TransientError, match="after 2 attempts"):
        retry_transient(always(ConnectionError("gone")), "test", attempts=2)
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(ValueError, match="bad input"):
        retry_transient(always(ValueError("bad input")), "test")
    assert len(calls) == 1  # permanent: not retried


def test_a_transient_error_is_never_recorded_as_a_failure(tmp_path):
    with pytest.raises(TransientError, match="throttl"):
        record_failure(str(tmp_path), "s3://b/v.mp4", "write", OSError("request throttled (429)"), clip="c")
    assert not (tmp_path / "_failures").exists()
    record_failure(str(tmp_path), "s3://b/v.mp4", "write", OSError("disk full"), clip="c")
    assert len(list((tmp_path / "_failures").rglob("*.json"))) == 1


def test_storage_throttling_in_the_write_stage_is_retried_not_recorded(
    tiny, clip_rows, tmp_path, monkeypatch
):
    import spatialdreamer.corpus.write as write

    monkeypatch.setattr("time.sleep", lambda s: None)
    batch = DepthDVGStage(tiny, str(tmp_path), device="cpu")(
        prepare_clips(rows_to_batch(clip_rows[:1]), str(tmp_path), tiny)
    )
    real, failures = write.storage.upload, [0]

    def throttled(local, target):
        failures[0] += 1
        if failures[0] <= 2:
            raise OSError("SlowDown: please reduce your request rate")
        return real(local, target)

    monkeypatch.setattr(write.storage, "upload", throttled)
    assert len(write_clip_stage(batch, str(tmp_path), tiny)["clip_id"]) == 1
    assert not (tmp_path / "_failures").exists()
    monkeypatch.setattr(write.storage, "upload", lambda *a: (_ for _ in ()).throw(OSError("503 Slow Down")))
    with pytest.raises(TransientError):
        write_clip_stage(batch, str(tmp_path / "other"), tiny)
    assert not (tmp_path / "other" / "_failures").exists()


# --- device choice --------------------------------------------------------------------------------


class _FakeRay:
    def __init__(self, gpus_after: int | None):
        self.polls, self.gpus_after = 0, gpus_after

    def cluster_resources(self):
        self.polls += 1
        ready = self.gpus_after is not None and self.polls > self.gpus_after
        return {"CPU": 8.0, **({"GPU": 2.0} if ready else {})}


def test_device_choice_never_drops_to_cpu_silently(tiny, monkeypatch):
    import ray.autoscaler.sdk as sdk

    import pipelines.build_dataset as job

    requests = []
    monkeypatch.setattr(sdk, "request_resources", lambda **kw: requests.append(kw))
    auto = CorpusConfig.from_dict({**tiny.__dict__, "device": "auto", "gpu_wait_s": 30})
    monkeypatch.setattr(job, "_max_cluster_gpus", lambda: None)
    assert choose_device(_FakeRay(0), auto, sleep=lambda s: None) == ("cuda", "2 GPUs in the cluster")
    device, reason = choose_device(_FakeRay(None), auto, sleep=lambda s: None)
    assert device == "cpu" and "no GPU" in reason and not requests
    monkeypatch.setattr(job, "_max_cluster_gpus", lambda: 8.0)  # an autoscaler can add GPU nodes
    assert choose_device(_FakeRay(3), auto, sleep=lambda s: None)[0] == "cuda"
    assert requests[0] == {"bundles": [{"GPU": 1.0}]} and requests[-1] == {"bundles": []}
    cuda = CorpusConfig.from_dict({**tiny.__dict__, "device": "cuda", "gpu_wait_s": 0})
    with pytest.raises(RuntimeError, match="no GPU joined the cluster within 0 s"):
        choose_device(_FakeRay(None), cuda, sleep=lambda s: None)
    assert choose_device(_FakeRay(0), CorpusConfig.from_dict({**tiny.__dict__, "device": "cpu"}))[0] == "cpu"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "gpu"}, "device must be auto, cuda or cpu"),
        ({"split_tasks": 0}, "split_tasks must be null"),
        ({"dvg_actors": [0, None]}, "dvg_actors"),
        ({"flow_scale": 0}, "flow_scale"),
        ({"trim": -1}, "trim >= 0"),
        ({"max_retries": -1}, "max_retries"),
        ({"min_brightness": 0.9, "max_brightness": 0.1}, "min_brightness <= max_brightness"),
    ],
)
def test_bad_engine_settings_are_one_clear_error(values, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig.from_dict(values)


def test_pools_scale_with_the_cluster_by_default():
    config = load_config("default")
    assert config.split_tasks is config.prepare_tasks is config.write_tasks is None
    assert config.dvg_actors == [1, None] and config.device == "auto"


def test_cpu_stages_retry_a_bounded_number_of_times_and_only_transient_errors():
    from ray.data import TaskPoolStrategy

    from pipelines.build_dataset import _actor_retries, _pool, _task_retries

    settings = _pool(None, 0.5)
    assert settings == {"compute": TaskPoolStrategy(size=None), "num_cpus": 0.5}  # scales with the cluster
    assert _task_retries(3) == {"max_retries": 3, "retry_exceptions": [TransientError]}
    assert _actor_retries(2) == {"max_restarts": 2, "max_task_retries": 2}


def test_stages_pass_resources_by_name_and_only_unnamed_retry_settings_as_remote_args():
    """Ray Data deprecates ``**ray_remote_args``; the job passes that way only the retry
    settings Ray has no named parameter for, without the warning. When Ray names one of them,
    this fails: pass it by name then."""
    import inspect
    import warnings

    from ray.data import Dataset
    from ray.util.annotations import RayDeprecationWarning

    from pipelines.build_dataset import RETRY_ARGS, _stage

    for method in (Dataset.flat_map, Dataset.map_batches):
        named = set(inspect.signature(method).parameters)
        assert {"compute", "num_cpus", "num_gpus"} <= named and not named & set(RETRY_ARGS)
    passed = {}

    def like_ray(fn, **kwargs):
        passed.update(kwargs, fn=fn)
        remote = {k: v for k, v in kwargs.items() if k in RETRY_ARGS}
        if remote:
            warnings.warn("`ray_remote_args` is deprecated", RayDeprecationWarning, stacklevel=2)
        warnings.warn("another deprecation", RayDeprecationWarning, stacklevel=2)
        return "ds"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _stage(like_ray, len, {"max_retries": 2}, num_cpus=0.5) == "ds"
    assert passed == {"fn": len, "max_retries": 2, "num_cpus": 0.5}
    assert [str(w.message) for w in caught] == ["another deprecation"]  # only that warning is silenced
    with pytest.raises(ValueError, match="named parameters"):
        _stage(like_ray, len, {"num_cpus": 1})


def test_the_gpu_pool_grows_to_every_gpu_the_cluster_has_or_may_add(tiny, monkeypatch):
    import pipelines.build_dataset as job

    config = CorpusConfig.from_dict({**tiny.__dict__, "dvg_actors": [1, None], "dvg_batch_size": 4})
    monkeypatch.setattr(job, "_max_cluster_gpus", lambda: 8.0)
    pool = job._dvg_pool(_FakeRay(0), config, "cuda")
    assert (pool["compute"].min_size, pool["compute"].max_size) == (1, 8)
    assert pool["batch_size"] == 4 and pool["num_gpus"] == 1.0
    pool = job._dvg_pool(_FakeRay(None), config, "cpu")  # 8 CPUs at 0.5 each, half for the rest
    assert pool["compute"].max_size == 8 and pool["batch_size"] == 1 and "num_gpus" not in pool


def test_a_learned_flow_runs_in_the_gpu_stage_and_the_prepare_stage_runs_none(
    tiny, clip_rows, tmp_path, monkeypatch
):
    from spatialdreamer.metrics.raft import RAFT

    torch.manual_seed(0)
    raft = RAFT().eval()
    raft.update_block.flow_head.conv2.weight.data.mul_(1e-3)  # random weights, small flows
    torch.save(raft.state_dict(), tmp_path / "raft.pth")
    config = CorpusConfig.from_dict({**tiny.__dict__, "flow_model": str(tmp_path / "raft.pth")})
    assert config.learned_flow and config.content_hash() != tiny.content_hash()
    short = {**clip_rows[0], "frames": clip_rows[0]["frames"][:3]}  # 3 frames keep RAFT on CPU quick
    prepared = prepare_clips(rows_to_batch([short]), str(tmp_path), config)
    assert "flow_forward" not in prepared and "camera_motion" not in prepared

    def no_dis(*args, **kwargs):
        raise AssertionError("DIS ran although a learned flow was given")

    monkeypatch.setattr("spatialdreamer.dvg.sample.dis_flow", no_dis)
    monkeypatch.setattr("spatialdreamer.dvg.masks.dis_flow", no_dis)
    out = DepthDVGStage(config, str(tmp_path), device="cpu")(prepared)
    assert len(out["clip_id"]) == 1 and np.isfinite(out["camera_motion"][0])
