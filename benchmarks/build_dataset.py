"""Corpus-builder throughput and memory, per-stage costs and a capacity plan.

    python benchmarks/build_dataset.py [--videos 6] [--seconds 2] [--size 320x192] [--config demo]
    python benchmarks/build_dataset.py --plan VIDEOS MINUTES --gpus G --cpus C [--config default]
    python benchmarks/build_dataset.py --dedupe 450000     # near-duplicates on the driver at scale

``--plan`` measures each stage's cost here on synth video (CPU-s per frame or clip, bytes per
clip through the object store, GPU-s per frame when a GPU is present; otherwise the GPU rates
are the stated assumptions ``--depth-fps``/``--dvg-fps``), for the code as it is and for the
landed code's layout (flow on the GPU actor's CPU, float pixels and source frames through the
object store, CPU stages capped at 16 tasks), and prints for that cluster each stage's
throughput, the bottleneck, GPU utilisation and wall time. Without ``--plan``:

Writes N synth videos (and 4N for the memory check), then runs, each in a fresh subprocess in
its own session:

- the plain loop (``build(..., in_process=True)``) with 1 and with all torch threads;
- the Ray job on an embedded local Ray with ``num_cpus`` = the machine's cores, on N and 4N
  videos;

the plain loop (1 thread) and the Ray job on N videos alternate for ``--repeat`` rounds, so
that on a shared machine both see the same load; each line shows the load average. Besides
wall time, each run reports the CPU-seconds its build took in all the processes of its
session (driver, Ray Data's workers and actors, Ray's own processes), which load moves less.

Throughput is clips/s and frames/s of the build itself; Ray's start-up (``ray.init``) is timed
apart, since a cluster is started once and serves many jobs. Peak memory is the peak over the
run of the summed PSS (proportional set size: shared pages such as Ray's object store counted
once) of every process in the run's session (driver, raylet, GCS, workers), sampled every
0.2 s, in runs of their own (Ray on N and on 4N videos): reading a process's PSS walks its page
tables, and for the Ray job's dozen processes that took ~55 ms a sample, 4.5-5.5 CPU-s a run on
the same two cores, which had slowed the timed runs by 1-2 s. Prints a table of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # measure this checkout's code, also where another one is installed
    sys.path.insert(0, str(REPO))


def _session_pss_mib(sid: int) -> float:
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            for line in Path(f"/proc/{name}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


_RAY_SYSTEM = tuple(
    f"ray::{name}"
    for name in (
        "_StatsActor",
        "_AutoscalingCoordinatorActor",
        "ActorLocationTracker",
        "DashboardAgent",
        "RuntimeEnvAgent",
    )
)


def _session_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every live process in this process's session, by
    pid with its kind: the driver (this process), Ray Data's workers and actors running the
    stages, and Ray's own processes (raylet, GCS, dashboard agent, Ray Data's stats and
    coordinator actors)."""
    tick = os.sysconf("SC_CLK_TCK")
    sid, me = os.getsid(0), os.getpid()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:
                continue
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if int(name) == me:
            kind = "driver"
        elif command.startswith("ray::") and not command.startswith(_RAY_SYSTEM):
            kind = "stage workers"
        else:
            kind = "ray system"
        found[int(name)] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return found


class _CpuMeter:
    """CPU-seconds spent by the session's processes between ``start`` and ``stop``, sampled
    every half second so that processes that end meanwhile (actors of a finished stage) count."""

    def start(self) -> None:
        self.first = _session_cpu()
        self.last = dict(self.first)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self.last.update(_session_cpu())

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        self.last.update(_session_cpu())
        spent = {"driver": 0.0, "stage workers": 0.0, "ray system": 0.0}
        for pid, (kind, seconds) in self.last.items():
            spent[kind] += seconds - self.first.get(pid, (kind, 0.0))[1]
        return spent


def _measure(args: list[str], memory: bool = False) -> dict:
    """Run this script's child mode in a new session; returns its report, plus its peak PSS
    when ``memory`` (sampling costs CPU on the cores the run uses: not in timed runs)."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while memory and not done.is_set():
            peak[0] = max(peak[0], _session_pss_mib(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({process.returncode}): {' '.join(args)}")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_pss_mib"] = peak[0] if memory else None
    return report


def _child(mode: str, videos: str, output: str, config_name: str, threads: int) -> None:
    import torch

    from pipelines.build_dataset import build, load_config
    from spatialdreamer.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(threads)
    config = load_config(config_name)
    startup = 0.0
    if mode == "ray":
        from pipelines.build_dataset import _init_ray

        began = time.perf_counter()  # the job's own embedded Ray (its system settings, thread policy)
        ray = _init_ray("local", num_cpus=os.cpu_count(), log_to_driver=False)
        startup = time.perf_counter() - began
        ray.data.DataContext.get_current().enable_progress_bars = False
    meter = _CpuMeter()
    meter.start()
    began = time.perf_counter()
    summary = build(videos, output, config, overwrite=True, in_process=mode == "plain")
    elapsed = time.perf_counter() - began
    cpu = meter.stop()
    print(
        json.dumps(
            {
                "clips": summary["clips_written"],
                "frames": summary["frames_written"],
                "seconds": elapsed,
                "startup": startup,
                "failures": summary["failures"],
                "cpu": cpu,
            }
        )
    )


def _write_videos(folder: Path, count: int, seconds: float, size: tuple[int, int], offset: int = 0) -> None:
    import torch

    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(offset, offset + count):
        if not (folder / f"v{i:04d}.mp4").exists():
            spec = random_spec(1000 + i, height=h, width=w, frames=round(seconds * 24), fps=24.0)
            write_scene(spec, folder, f"v{i:04d}", audio=False)


def _nbytes(batch: dict) -> int:
    """Bytes a batch dict puts in the object store (array data and encoded bytes)."""
    import numpy as np

    total = 0
    for values in batch.values():
        items = values if values.dtype == object else [values]
        total += sum(len(v) if isinstance(v, bytes) else np.asarray(v).nbytes for v in items)
    return total


def measure_stages(config_name: str, source_size: tuple[int, int], work: Path, clips: int = 4) -> dict:
    """Per-stage costs of the corpus stages here, with one torch thread (CPU-s measured as
    process time): split per source frame, prepare/write per clip, the flow of both layouts per
    clip, and bytes per clip between stages for both layouts."""
    import torch

    from pipelines.build_dataset import load_config
    from spatialdreamer.corpus import CorpusConfig, DepthDVGStage, prepare_clips, rows_to_batch, split_video
    from spatialdreamer.corpus.prepare import encode_rgb_bytes
    from spatialdreamer.corpus.write import write_clip_stage
    from spatialdreamer.data.ids import video_id
    from spatialdreamer.data.shards import SHARD_FILES, pack_clips
    from spatialdreamer.dvg.flow import dis_flow, dis_pair_flows

    torch.set_num_threads(1)
    config = load_config(config_name)
    length = config.clip_length
    w, h = source_size
    frames_needed = length * clips
    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    spec = random_spec(7, height=h, width=w, frames=frames_needed, fps=24.0)
    path = str(write_scene(spec, work / "source", "source", audio=False).left)
    row = {"path": path, "video_id": video_id(path), "source": "bench", "license": "", "tags": []}
    # the CPU-measurable stages run with the weight-free depth model; the GPU rate is separate
    cpu_config = CorpusConfig.from_dict({**config.__dict__, "depth_model": "parallax", "device": "cpu"})
    began = time.process_time()
    rows = list(split_video(row, str(work / "scratch_split"), cpu_config))
    split_per_frame = (time.process_time() - began) / frames_needed
    rows = [r for r in rows if r["frames"].shape[0] == length][:clips]
    stage = DepthDVGStage(cpu_config, str(work / "scratch"), device="cpu")
    prepare_s = write_s = flow_before = flow_after = rgb_s = 0.0
    bytes_split = bytes_prepared = bytes_dvg = 0
    for r in rows:
        batch = rows_to_batch([r])
        bytes_split += _nbytes(batch)
        t0 = time.process_time()
        prepared = prepare_clips(batch, str(work / "scratch"), cpu_config)
        prepare_s += time.process_time() - t0
        bytes_prepared += _nbytes(prepared)
        out = stage(prepared)
        bytes_dvg += _nbytes(out)
        t0 = time.process_time()
        write_clip_stage(out, str(work / "scratch"), cpu_config)
        write_s += time.process_time() - t0
        t0 = time.process_time()
        encode_rgb_bytes(r["frames"], 24.0, cpu_config.crf)
        rgb_s += time.process_time() - t0
        t0 = time.process_time()
        dis_pair_flows(r["frames"], scale=cpu_config.flow_scale)
        flow_after += time.process_time() - t0
        # the landed code: DIS t->t+1 and t+1->t on the source view, then again on the warped
        # view, at full size (4 (T-1) calls), on the GPU actor's CPU
        x = torch.from_numpy(r["frames"]).permute(0, 3, 1, 2).float() / 255
        t0 = time.process_time()
        for _ in range(2):
            dis_flow(x[:-1], x[1:])
            dis_flow(x[1:], x[:-1])
        flow_before += time.process_time() - t0
    n = len(rows)
    written = [json.loads(p.read_text()) for p in sorted((work / "scratch" / "_rows").rglob("*.json"))]
    loose = {r["clip_id"]: {c: str(work / "scratch" / r[c]) for c in SHARD_FILES} for r in written}
    t0 = time.process_time()
    pack_clips(str(work / "pack.tar"), loose)
    pack_s = (time.process_time() - t0) / max(1, len(loose))
    t, hh, ww = length, config.height, config.width
    landed_in = t * hh * ww * 3  # uint8 frames into depth + DVG
    landed_out = t * hh * ww * (3 + 3 + 3 + 1 + 1 + 4)  # frames, right, back u8; 2 bool masks; f32 disparity
    gpu = _measure_gpu(config, rows) if torch.cuda.is_available() else None
    return {
        "clip_length": length,
        "split_cpu_s_per_frame": split_per_frame,
        "prepare_cpu_s_per_clip": prepare_s / n,
        "write_cpu_s_per_clip": write_s / n,
        "pack_cpu_s_per_clip": pack_s,
        "clip_bytes": os.path.getsize(work / "pack.tar") / max(1, len(loose)),
        "segment_seconds": float(config.segment_seconds),
        "stride": config.stride,
        "rgb_encode_cpu_s_per_clip": rgb_s / n,
        "flow_cpu_s_per_clip_before": flow_before / n,
        "flow_cpu_s_per_clip_after": flow_after / n,
        "bytes_before": {"split->dvg": landed_in, "dvg->write": landed_out},
        "bytes_after": {
            "split->prepare": bytes_split / n,
            "prepare->dvg": bytes_prepared / n,
            "dvg->write": bytes_dvg / n,
        },
        "gpu_s_per_frame": gpu,
        "actor_host_s_per_clip": _actor_host_s_per_clip(bytes_prepared / n, bytes_dvg / n),
        "flow_scale": cpu_config.flow_scale,
    }


def _actor_host_s_per_clip(bytes_in: float, bytes_out: float, repeats: int = 5) -> float:
    """Host-side seconds per clip of a depth + DVG actor on a GPU, measured as memory copies
    here: the inputs to the device, the outputs back, and their put into the object store
    (the ops themselves, packing masks and disparity codes included, run on the device)."""
    import numpy as np

    source = np.ones(int(bytes_in + 2 * bytes_out), dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # first touch of the pages is not part of the cost
    began = time.process_time()  # CPU time, like the other stages: robust to a loaded machine
    for _ in range(repeats):
        np.copyto(target, source)
    return (time.process_time() - began) / repeats


def _measure_gpu(config, rows: list[dict]) -> float | None:
    """GPU-s per frame of depth + DVG with the config's depth model on CUDA (None if it cannot load)."""
    import torch

    from spatialdreamer.corpus import DepthDVGStage, prepare_clips, rows_to_batch

    try:
        stage = DepthDVGStage(config, "/tmp/bench-gpu-scratch", device="cuda")
    except Exception as exc:
        print(f"  (GPU present but the depth model did not load: {str(exc).splitlines()[0]})")
        return None
    batches = [prepare_clips(rows_to_batch(rows[i : i + 4]), "/tmp/bench-gpu-scratch", config) for i in (0,)]
    stage(batches[0])  # warm-up
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(3):
        stage(batches[0])
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / (3 * sum(len(f) for f in batches[0]["frames"]))


def _plan(costs: dict, videos: int, minutes: float, gpus: int, cpus: int, args) -> None:
    """Print the capacity plan for the landed layout and for this one."""
    t = costs["clip_length"]
    frames = videos * minutes * 60 * args.fps
    clips = frames / t
    measured_gpu = costs["gpu_s_per_frame"]
    gpu_s_frame = measured_gpu if measured_gpu else 1 / args.depth_fps + 1 / args.dvg_fps
    gpu_clip = gpu_s_frame * t
    split_clip = costs["split_cpu_s_per_frame"] * t * args.source_cost
    mib = 2**20
    print(
        f"\nplan: {videos} videos x {minutes:g} min at {args.fps:g} fps = {frames / 1e6:.2f} M frames, "
        f"{clips / 1e3:.0f} k clips of {t} frames; {gpus} GPUs, {cpus} CPUs"
    )
    if measured_gpu:
        print(f"  GPU depth + DVG measured here: {1 / measured_gpu:.0f} frames/s per GPU")
    else:
        print(
            f"  GPU rates ASSUMED (no GPU here): depth {args.depth_fps:g} frames/s, warp + masks "
            f"{args.dvg_fps:g} frames/s per GPU -> {gpu_clip * 1e3:.0f} GPU-ms per clip"
        )
    print(
        f"  measured here per clip: split {split_clip:.3f} CPU-s (x{args.source_cost:g} for the source "
        f"size), prepare {costs['prepare_cpu_s_per_clip']:.3f}, write {costs['write_cpu_s_per_clip']:.3f}; "
        f"flow {costs['flow_cpu_s_per_clip_before']:.3f} (landed) vs "
        f"{costs['flow_cpu_s_per_clip_after']:.3f} CPU-s; GPU actor host work "
        f"{costs['actor_host_s_per_clip'] * 1e3:.0f} ms (serial with the GPU work)"
    )

    def report(label: str, stages: dict[str, float], gpu_busy_per_clip: float, gpu_bytes: float) -> None:
        bottleneck = min(stages, key=stages.get)
        rate = stages[bottleneck]
        wall = clips / rate
        util = min(1.0, rate * gpu_busy_per_clip / gpus)
        print(f"\n  {label}")
        for name, value in stages.items():
            mark = "  <- bottleneck" if name == bottleneck else ""
            print(f"    {name:<34} {value:8.1f} clips/s{mark}")
        print(
            f"    wall {wall / 3600:.2f} h, GPUs {100 * util:.0f} % busy, "
            f"{gpu_bytes / mib:.1f} MiB per clip in+out of the GPU stage "
            f"({rate * gpu_bytes / gpus / 1e9 * 8:.2f} Gb/s per GPU node)"
        )

    before_bytes = sum(costs["bytes_before"].values())
    flow_before = costs["flow_cpu_s_per_clip_before"]
    write_before = costs["write_cpu_s_per_clip"] + costs["rgb_encode_cpu_s_per_clip"]
    report(
        "landed code (flow on each GPU actor's one CPU, CPU stages capped at 16 tasks)",
        {
            "split (16 tasks)": 16 / split_clip,
            "depth + DVG + flow (1 actor per GPU)": gpus / (gpu_clip + flow_before),
            "write (16 tasks)": 16 / write_before,
        },
        gpu_clip,
        before_bytes,
    )
    after = costs["bytes_after"]
    cpu_pool = max(1.0, cpus - gpus)  # one CPU per GPU actor feeds its GPU
    cpu_per_clip = (
        split_clip
        + costs["prepare_cpu_s_per_clip"]
        + costs["write_cpu_s_per_clip"]
        + costs["pack_cpu_s_per_clip"]
    )
    report(
        "this code (CPU stages scale over the cluster's CPUs, flow in the prepare stage)",
        {
            "split + prepare + write + pack (CPU pool)": cpu_pool / cpu_per_clip,
            "depth + DVG (1 actor per GPU)": gpus / (gpu_clip + costs["actor_host_s_per_clip"]),
        },
        gpu_clip,
        after["prepare->dvg"] + after["dvg->write"],
    )
    per_frame = costs["split_cpu_s_per_frame"] * args.source_cost
    whole = minutes * 60 * args.fps * per_frame
    segment = min(minutes * 60, costs["segment_seconds"] or minutes * 60) * args.fps * per_frame
    print(
        f"\n  longest serial task: one segment's split, {segment / 60:.2f} min "
        f"(segment_seconds {costs['segment_seconds']:g}; a whole {minutes:g}-min video was "
        f"{whole / 60:.2f} min, "
        f"a 2-hour film {120 * 60 * args.fps * per_frame / 60:.0f} min)"
    )
    per_segment = (costs["segment_seconds"] or minutes * 60) * args.fps / costs["stride"]
    print(
        f"  output objects: landed 7 per clip (6 shard files + a row record; {7 * clips / 1e6:.2f} M) "
        f"and 6 reads per training sample; now 2 per segment (a tar + a manifest part, "
        f"{2 * clips / per_segment / 1e3:.1f} k, packs of "
        f"~{per_segment * costs['clip_bytes'] / 2**20:.0f} MiB) "
        f"and 1 ranged read per sample; packing {costs['pack_cpu_s_per_clip'] * 1e3:.1f} CPU-ms per clip"
    )


def _print_costs(costs: dict) -> None:
    mib = 2**20
    before, after = costs["bytes_before"], costs["bytes_after"]
    print("\nbytes per clip through the object store")
    print(
        f"  landed: split->dvg {before['split->dvg'] / mib:.2f} MiB, "
        f"dvg->write {before['dvg->write'] / mib:.2f} MiB"
        f"  = {sum(before.values()) / mib:.2f} MiB (GPU stage in+out {sum(before.values()) / mib:.2f} MiB)"
    )
    print(
        f"  now:    split->prepare {after['split->prepare'] / mib:.2f} MiB, prepare->dvg "
        f"{after['prepare->dvg'] / mib:.2f} MiB, dvg->write {after['dvg->write'] / mib:.2f} MiB"
        f"  = {sum(after.values()) / mib:.2f} MiB (GPU stage in+out "
        f"{(after['prepare->dvg'] + after['dvg->write']) / mib:.2f} MiB)"
    )
    print(
        f"optical flow per clip: landed {costs['flow_cpu_s_per_clip_before']:.3f} CPU-s on the GPU "
        f"actor's CPU (4 (T-1) DIS calls, full size); now {costs['flow_cpu_s_per_clip_after']:.3f} "
        f"CPU-s in the prepare stage (2 (T-1) calls at flow_scale {costs['flow_scale']:g})"
    )


def measure_dedupe(clips: int, per_video: int = 300, bits: int = 6) -> None:
    """Near-duplicate marking on the driver at corpus scale: ``clips`` random perceptual hashes
    (1 % planted copies of another video's clip with up to 6 bits flipped), ``per_video`` clips
    a video; prints CPU-seconds and the memory it adds."""
    import resource

    import numpy as np
    import pandas as pd

    from spatialdreamer.corpus import near_duplicates

    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, clips, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    values |= rng.integers(0, 2, clips).astype(np.uint64)
    for source, target in zip(
        rng.integers(0, clips, clips // 100), rng.integers(0, clips, clips // 100), strict=True
    ):
        value = int(values[source])
        for bit in rng.choice(64, rng.integers(0, 7), replace=False):
            value ^= 1 << int(bit)
        values[target] = value
    videos = [f"v{i // per_video:05d}" for i in range(clips)]
    frame = pd.DataFrame(
        {
            "clip_id": [f"{v}-{i:06d}" for i, v in enumerate(videos)],
            "video_id": videos,
            "phash": [f"{int(v):016x}" for v in values],
        }
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began, cpu = time.perf_counter(), time.process_time()
    found = int(near_duplicates(frame, bits).notna().sum())
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(
        f"dedupe: {clips} clips ({clips // per_video} videos x {per_video}), bits {bits}: "
        f"{time.process_time() - cpu:.1f} CPU-s ({time.perf_counter() - began:.1f} s wall, load "
        f"{os.getloadavg()[0]:.1f}), +{added:.0f} MiB peak beyond the three columns "
        f"({frame.memory_usage(deep=True).sum() / 2**20:.0f} MiB), {found} duplicates"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", nargs=2, type=float, metavar=("VIDEOS", "MINUTES"), default=None)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=512)
    parser.add_argument("--fps", type=float, default=24.0, help="source frame rate in the plan")
    parser.add_argument("--source-size", default="1280x720", help="synth source size for the split cost")
    parser.add_argument(
        "--source-cost", type=float, default=1.0, help="scale the split cost (e.g. 2.25 for 1080p)"
    )
    parser.add_argument(
        "--depth-fps", type=float, default=300.0, help="assumed depth frames/s per GPU (no GPU here)"
    )
    parser.add_argument("--dvg-fps", type=float, default=1000.0, help="assumed warp + mask frames/s per GPU")
    parser.add_argument("--videos", type=int, default=6, help="N: videos in the throughput runs")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", default="320x192")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--dedupe",
        type=int,
        default=0,
        metavar="CLIPS",
        help="only time near-duplicate marking of CLIPS clips",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of (plain loop, Ray job) on N videos, alternating"
    )
    parser.add_argument("--child", nargs=5, metavar=("MODE", "VIDEOS", "OUT", "CONFIG", "THREADS"))
    args = parser.parse_args()
    if args.dedupe:
        measure_dedupe(args.dedupe)
        return
    if args.child:
        mode, videos, out, config, threads = args.child
        _child(mode, videos, out, config, int(threads))
        return
    if args.plan:
        config = args.config if args.config != "demo" else "default"
        with tempfile.TemporaryDirectory(prefix="bench-plan-") as scratch:
            size = tuple(int(v) for v in args.source_size.lower().split("x"))
            costs = measure_stages(config, size, Path(args.work or scratch))
        _print_costs(costs)
        _plan(costs, int(args.plan[0]), args.plan[1], args.gpus, args.cpus, args)
        return

    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as scratch:
        work = Path(args.work or scratch)
        small, large = work / "videos_n", work / "videos_4n"
        print(f"writing {args.videos} + {4 * args.videos} synth videos ({args.size}, {args.seconds} s) ...")
        _write_videos(small, args.videos, args.seconds, size)
        _write_videos(large, 4 * args.videos, args.seconds, size)
        cores = os.cpu_count() or 1
        runs = [
            ("plain loop, 1 torch thread", ["plain", str(small), str(work / "out_plain1"), args.config, "1"]),
            (
                f"plain loop, {cores} torch threads",
                ["plain", str(small), str(work / "out_plainN"), args.config, str(cores)],
            ),
            (f"Ray job, N={args.videos}", ["ray", str(small), str(work / "out_ray_n"), args.config, "1"]),
            (
                f"plain loop, 1 thread, 4N={4 * args.videos}",
                ["plain", str(large), str(work / "out_plain_4n"), args.config, "1"],
            ),
            (
                f"Ray job, 4N={4 * args.videos}",
                ["ray", str(large), str(work / "out_ray_4n"), args.config, "1"],
            ),
        ]
        plain1, plain_n, ray_n_run, plain_4n_run, ray_4n_run = runs
        # the plain loop and the Ray job on N videos alternate, round by round, so that both see
        # the same load on a shared machine; each round's ratio compares runs minutes apart
        order = [plain1, ray_n_run] * args.repeat + [plain_n, plain_4n_run, ray_4n_run]
        results: dict[str, list[dict]] = {}
        for label, child in order:
            report = _measure(child)
            results.setdefault(label, []).append(report)
            _print_run(label, report)
        peaks = {}
        for label, child in (ray_n_run, ray_4n_run):
            report = _measure(child, memory=True)
            peaks[label] = report["peak_pss_mib"]
            _print_run(f"{label} (memory)", report)

        def fps(report: dict) -> float:
            return report["frames"] / report["seconds"]

        rounds = [fps(r) / fps(p) for p, r in zip(results[plain1[0]], results[ray_n_run[0]], strict=True)]
        best_plain = max(fps(r) for r in results[plain1[0]] + results[plain_n[0]])
        ray_n, ray_4n = max(results[ray_n_run[0]], key=fps), results[ray_4n_run[0]][0]
        print(
            "\nRay / plain loop (1 thread) throughput, N videos, per round: "
            + ", ".join(f"{r:.2f}x" for r in rounds)
            + f"  (median {sorted(rounds)[len(rounds) // 2]:.2f}x; target >= 0.85x)"
        )
        print(f"Ray (best) / best plain loop throughput, N videos: {fps(ray_n) / best_plain:.2f}x")
        plain_4n = results[plain_4n_run[0]][0]
        print(f"Ray / plain loop (1 thread) throughput, 4N videos: {fps(ray_4n) / fps(plain_4n):.2f}x")
        with_startup = ray_n["frames"] / (ray_n["seconds"] + ray_n["startup"])
        print(f"  same, counting Ray start-up in the N run:     {with_startup / best_plain:.2f}x")
        plain_n_median = sorted(results[plain1[0]], key=fps)[len(results[plain1[0]]) // 2]
        ray_n_median = sorted(results[ray_n_run[0]], key=fps)[len(results[ray_n_run[0]]) // 2]
        _print_job_size(plain_n_median, plain_4n, ray_n_median, ray_4n)
        cpu_plain = min(sum(r["cpu"].values()) for r in results[plain1[0]])
        cpu_ray = min(sum(r["cpu"].values()) for r in results[ray_n_run[0]])
        print(
            "CPU-seconds of the build, Ray / plain (N videos, least of the rounds): "
            f"{cpu_ray / cpu_plain:.2f}x"
        )
        low, high = peaks[ray_n_run[0]], peaks[ray_4n_run[0]]
        print(
            f"Ray peak memory 4N / N:                        {high / low:.2f}x "
            f"({low:.0f} -> {high:.0f} MiB; target <= 1.3x)"
        )


def job_size_model(plain: tuple[dict, dict], ray: tuple[dict, dict]) -> dict:
    """Each engine's time as ``fixed + per_clip * clips``, from its runs on N and 4N videos,
    and the job size from which Ray's throughput is at least 0.85x the plain loop's.

    The fixed part is what a job pays whatever its size (Ray: starting its workers and Ray
    Data's own actors; both: the first call of each stage); the per-clip part is the rate a
    long job runs at.
    """

    def fit(small: dict, large: dict) -> tuple[float, float]:
        per_clip = (large["seconds"] - small["seconds"]) / max(1, large["clips"] - small["clips"])
        return small["seconds"] - per_clip * small["clips"], per_clip

    (plain_fixed, plain_clip), (ray_fixed, ray_clip) = fit(*plain), fit(*ray)
    # plain(c) / ray(c) >= 0.85  <=>  c * (plain_clip - 0.85 ray_clip) >= 0.85 ray_fixed - plain_fixed
    gain = plain_clip - 0.85 * ray_clip
    need = 0.85 * ray_fixed - plain_fixed
    break_even = max(0.0, need / gain) if gain > 0 else float("inf")
    return {
        "plain_fixed_s": plain_fixed,
        "plain_s_per_clip": plain_clip,
        "ray_fixed_s": ray_fixed,
        "ray_s_per_clip": ray_clip,
        "steady_ratio": plain_clip / ray_clip,
        "clips_for_0.85x": break_even,
    }


def _print_job_size(plain_n: dict, plain_4n: dict, ray_n: dict, ray_4n: dict) -> None:
    model = job_size_model((plain_n, plain_4n), (ray_n, ray_4n))
    print(
        f"Job size (time = fixed + per clip, fitted on N and 4N): plain {model['plain_fixed_s']:.1f} s"
        f" + {model['plain_s_per_clip']:.3f} s/clip, Ray {model['ray_fixed_s']:.1f} s"
        f" + {model['ray_s_per_clip']:.3f} s/clip"
    )
    clips = model["clips_for_0.85x"]
    reach = f"from ~{clips:.0f} clips" if clips != float("inf") else "never (Ray's per-clip rate is lower)"
    print(
        f"  Ray / plain as a job grows: {model['steady_ratio']:.2f}x; >= 0.85x {reach}"
        f" (the N run has {plain_n['clips']} clips)"
    )


def _print_run(label: str, report: dict) -> None:
    clips, frames, seconds, cpu = report["clips"], report["frames"], report["seconds"], report["cpu"]
    memory = f"  peak PSS {report['peak_pss_mib']:7.0f} MiB" if report["peak_pss_mib"] is not None else ""
    print(
        f"  {label:<32} {clips:>4} clips {frames:>5} frames in {seconds:7.1f} s"
        f"  {clips / seconds:6.2f} clips/s {frames / seconds:7.1f} frames/s{memory}"
        f"  CPU-s {sum(cpu.values()):6.1f} ("
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        + ")"
        + (f"  (ray.init {report['startup']:.1f} s)" if report["startup"] else "")
        + f"  load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
