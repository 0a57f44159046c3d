"""``make demo``: the most complete path on generated data, with nothing to download.

1. writes procedural stereo videos (with an audio track) to ``OUT/videos``;
2. runs DVG on one scene's exact depth and prints warp quality against its true right view;
   writes a preview video (source | right view with holes | warp-back view | its mask);
3. converts a video to full side-by-side stereo with the weight-free depth backend;
4. builds a small stereo training corpus from the synth videos with the Ray Data job
   (``pipelines.build_dataset``, ``demo`` config, embedded Ray) and prints its manifest summary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from spatialdreamer.convert import ConvertOptions, convert_video
from spatialdreamer.dvg import forward_warp, warp_back_pair
from spatialdreamer.synth import iter_frames, random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video import VideoWriter

__all__ = ["run_demo"]

_SIZE = (192, 320)  # height, width
_SECONDS = 4.0
_FPS = 24.0


def _dvg_preview(out_dir: Path, seed: int) -> dict[str, float]:
    spec = random_spec(seed, height=_SIZE[0], width=_SIZE[1], frames=int(_SECONDS * _FPS), fps=_FPS)
    sq_err = hole_inter = hole_union = visible = 0.0
    path = out_dir / "dvg_preview.mp4"
    with VideoWriter(path, _FPS) as writer:
        for frame in iter_frames(spec):
            left, disparity = frame["left"][None], frame["disparity"][None]
            right = forward_warp(left, disparity)
            truth = frame["occlusion"][None]
            keep = ~right.holes & ~truth
            sq_err += float(((right.image - frame["right"][None]) ** 2).mean(1, keepdim=True)[keep].sum())
            visible += float(keep.sum())
            hole_inter += float((right.holes & truth).sum())
            hole_union += float((right.holes | truth).sum())
            pair = warp_back_pair(left, disparity)
            mask = pair.back_holes.float().expand(-1, 3, -1, -1)
            top = torch.cat([left, right.image], -1)
            bottom = torch.cat([pair.back, mask], -1)
            writer.write(torch.cat([top, bottom], -2))
    mse = sq_err / max(visible, 1.0)
    return {
        "psnr_visible": 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item(),
        "hole_iou": hole_inter / max(hole_union, 1.0),
        "preview": str(path),
    }


def run_demo(out_dir: str | os.PathLike = "demo_out", count: int = 3) -> dict:
    """Run the demo into ``out_dir``; returns what it printed as a dict."""
    out = Path(out_dir)
    began = time.perf_counter()
    videos = out / "videos"
    print(f"[1/4] writing {count} synth stereo videos to {videos} ...")
    paths = []
    for seed in range(count):
        spec = random_spec(seed, height=_SIZE[0], width=_SIZE[1], frames=int(_SECONDS * _FPS), fps=_FPS)
        paths.append(write_scene(spec, videos, f"synth_{seed:04d}").left)

    print("[2/4] DVG on exact depth: forward warp vs the true right view, warp-back pairs ...")
    dvg = _dvg_preview(out / "dvg", seed=0)
    print(
        f"      PSNR on visible pixels {dvg['psnr_visible']:.2f} dB, hole IoU vs true occlusion "
        f"{dvg['hole_iou']:.3f}; preview {dvg['preview']}"
    )

    print("[3/4] converting a video to stereo (depth: weight-free 'parallax' fallback) ...")
    report = _demo_stereo(paths[0], out / "stereo")
    print(f"      {report.frames} frames at {report.fps:.1f} frames/s -> {report.output}")

    corpus = _demo_corpus(videos, out / "corpus")
    print(f"done in {time.perf_counter() - began:.0f} s. Results are in {out.resolve()}")
    return {"videos": [str(p) for p in paths], "dvg": dvg, "stereo": str(report.output), "corpus": corpus}


def _demo_stereo(video: Path, folder: Path):
    """Step 3: one video converted with the defaults; a rerun of the demo replaces its output,
    as step 4 rebuilds its corpus."""
    options = ConvertOptions(depth_model="parallax", format="full-sbs", overwrite=True)
    return convert_video(video, folder, options)


def _demo_corpus(videos: Path, root: Path) -> dict:
    """Step 4: the corpus job (the project's main job) on the embedded Ray, demo config."""
    from pipelines.build_dataset import build, format_summary, load_config
    from spatialdreamer.data import load_manifest, summarize_manifest

    print("[4/4] building a stereo training corpus with the Ray Data job (embedded Ray, 'demo' config) ...")
    summary = build(str(videos), str(root), load_config("demo"), overwrite=True, ray_address="local")
    print(format_summary(summary))
    print(summarize_manifest(load_manifest(str(root)), load_manifest(str(root), table="failures")))
    print(f"      corpus at {root.resolve()}; query it with spatialdreamer.data.load_manifest or")
    print(f"      `spatialdreamer manifest {root}` (see manifests/README.md)")
    return {"root": str(root), **summary}
