"""The corpus's CPU stages (plan, split, prepare, write, pack) run without torch: their Ray
workers skip its import (~2 CPU-s and ~200 MB each); and their numpy paths give what the
tensor paths give."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialdreamer.corpus.scores import flow_scores
from spatialdreamer.synth import random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video import stream_arrays, stream_frames
from spatialdreamer.video.clips import ClipSplitter, resize_and_crop
from spatialdreamer.video.shots import CutDetector

ROOT = Path(__file__).resolve().parents[1]

_CPU_STAGES = """
import sys
import numpy as np
from pipelines.build_dataset import load_config
from spatialdreamer.corpus.batches import rows_to_batch
from spatialdreamer.corpus.pack import pack_video
from spatialdreamer.corpus.prepare import prepare_clips
from spatialdreamer.corpus.segments import plan_video
from spatialdreamer.corpus.sources import find_sources
from spatialdreamer.corpus.split import split_video
from spatialdreamer.corpus.write import write_clip_stage

video, root = sys.argv[1], sys.argv[2]
config = load_config("tiny", {"shot_detector": "histogram"})
row = find_sources(video).videos[0]
written = 0
for segment in plan_video(row, root, config):
    for clip in split_video(segment, root, config):
        batch = prepare_clips(rows_to_batch([clip]), root, config)
        # what depth + DVG hands on (it needs torch; the write stage must not)
        out = {k: v for k, v in batch.items() if k not in ("frames", "flow_forward", "flow_backward")}
        frames = batch["frames"]
        bits = np.packbits(np.zeros(frames.shape[:4], bool), axis=-1)
        out |= {"right": frames, "back": frames, "right_holes_bits": bits, "back_holes_bits": bits}
        out["disparity_u16"] = np.full(frames.shape[:4], 32768, np.uint16)
        for key in ("budget", "disparity_p05", "disparity_p50", "disparity_p95", "depth_p05",
                    "depth_p50", "depth_p95", "depth_edges", "hole_ratio", "right_hole_ratio"):
            out[key] = np.array([0.5])
        out["depth_model"] = np.array(["none"], dtype=object)
        written += len(write_clip_stage(out, root, config)["clip_id"])
packed = pack_video(row, root, config)["packed"]
heavy = sorted(name for name in ("torch", "kornia", "transformers", "diffusers") if name in sys.modules)
print("clips", written, "packed", packed, "heavy", heavy or "none")
"""


def test_cpu_stages_run_without_importing_torch(tmp_path):
    spec = random_spec(4, height=96, width=160, frames=40)
    video = write_scene(spec, tmp_path / "videos", "v").left
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _CPU_STAGES, str(video), str(tmp_path / "corpus")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[0] == "clips" and int(words[1]) >= 2 and words[3] == words[1], result.stdout
    assert words[-1] == "none", result.stdout


def test_numpy_and_tensor_paths_agree(tmp_path):
    spec = random_spec(5, height=96, width=160, frames=30)
    video = write_scene(spec, tmp_path, "v").left
    arrays = list(stream_arrays(video, chunk_size=7))
    tensors = list(stream_frames(video, chunk_size=7))
    pixels = np.concatenate([c.frames for c in arrays])
    frames = torch.cat([c.frames for c in tensors])
    assert np.array_equal(pixels, frames.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(
        np.concatenate([c.timestamps for c in arrays]), torch.cat([c.timestamps for c in tensors])
    )

    small = resize_and_crop(pixels, 64, 48)
    assert small.shape == (30, 48, 64, 3)
    assert np.array_equal(small, resize_and_crop(frames, 64, 48).permute(0, 2, 3, 1).numpy())

    cuts = pixels.copy()
    cuts[10:] = 255 - cuts[10:]  # a hard cut at frame 10
    cuts[20:] = cuts[20:] // 3  # and another at 20
    flags = CutDetector()(cuts)
    assert flags == CutDetector()(torch.from_numpy(cuts).permute(0, 3, 1, 2))
    assert [i for i, cut in enumerate(flags) if cut] == [0, 10, 20]

    splitter = ClipSplitter(8, 8, 4)
    clips = [c for frame, cut in zip(cuts, flags, strict=True) for c in splitter.push(frame, 0.0, cut)]
    clips += splitter.finish()
    assert all(isinstance(c.frames, np.ndarray) and c.frames.shape[1:] == (96, 160, 3) for c in clips)

    flow = np.random.default_rng(0).normal(0, 3, (5, 2, 40, 64)).astype(np.float32)
    from_array, from_tensor = flow_scores(flow, 0.5), flow_scores(torch.from_numpy(flow), 0.5)
    assert from_array["camera_motion"] == from_tensor["camera_motion"]  # the same (lower) middle value
    assert abs(from_array["motion_score"] - from_tensor["motion_score"]) < 1e-5 * from_tensor["motion_score"]


def test_bad_frames_are_one_clear_error():
    with pytest.raises(ValueError, match=r"\[T,H,W,3\] array of uint8"):
        CutDetector()(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T,3,H,W\] tensor of uint8"):
        CutDetector()(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[T,H,W,3\] array"):
        resize_and_crop(np.zeros((2, 3, 8, 8), np.uint8), 4, 4)
