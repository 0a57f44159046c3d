"""Forward-warp speed, peak memory and quality, against a sort-based z-ordered splat.

Prints frames/s and peak memory of ``spatialdreamer.dvg.forward_warp`` at 1920x1080 and
960x540 on the CPU (and CUDA when present), next to a reference that does what sort-based
warpers do (sort every pixel by depth, copy far-to-near to the floor/ceil target columns so
the nearest wins). Quality (PSNR on visible pixels, hole IoU) is measured on a synth scene
with exact ground truth. Each memory figure comes from a fresh child process.

    python benchmarks/warp.py [--repeats 10] [--sizes 1920x1080 960x540]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spatialdreamer.dvg import forward_warp
from spatialdreamer.runtime import peak_rss_mib, tune_cpu_allocator
from spatialdreamer.synth import make_scene


def sorted_splat_warp(image: np.ndarray, disparity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: depth-sorted copy to floor/ceil columns (``image`` [C,H,W], ``disparity`` [H,W])."""
    c, h, w = image.shape
    order = np.argsort(disparity, axis=None, kind="stable")  # far first, nearest written last
    y, x = np.divmod(order, w)
    target = x - disparity.reshape(-1)[order]
    out = np.zeros((h * w, c), dtype=image.dtype)
    written = np.zeros(h * w, dtype=bool)
    colors = image.reshape(c, -1).T[order]
    for column in (np.floor(target), np.ceil(target)):
        ok = (column >= 0) & (column < w)
        flat = y[ok] * w + column[ok].astype(np.int64)
        out[flat] = colors[ok]
        written[flat] = True
    return out.T.reshape(c, h, w), ~written.reshape(h, w)


def _inputs(width: int, height: int, device: str):
    scene = make_scene(0, height=height, width=width, frames=1)
    return scene, scene.left.to(device), scene.disparity.to(device)


def _time(fn, repeats: int, device: str) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _child(method: str, inputs: str, device: str, repeats: int) -> dict:
    if method != "ours-default-malloc":
        tune_cpu_allocator()
    saved = torch.load(inputs, weights_only=True)
    image, disparity = saved["image"].to(device), saved["disparity"].to(device)
    base_rss = peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if method.startswith("ours"):
        seconds = _time(lambda: forward_warp(image, disparity), repeats, device)
    else:
        img, disp = image[0].numpy(), disparity[0, 0].numpy()
        seconds = _time(lambda: sorted_splat_warp(img, disp), repeats, device)
    result = {"seconds": seconds, "peak_cpu_mib": peak_rss_mib() - base_rss}
    if device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _quality(width: int, height: int) -> dict:
    scene, image, disparity = _inputs(width, height, "cpu")
    truth_holes = scene.occlusion[0, 0]
    ours = forward_warp(image, disparity)
    ref_img, ref_holes = sorted_splat_warp(image[0].numpy(), disparity[0, 0].numpy())
    result = {}
    for name, img, holes in (
        ("ours", ours.image[0], ours.holes[0, 0]),
        ("sorted_splat", torch.from_numpy(ref_img), torch.from_numpy(ref_holes)),
    ):
        visible = ~truth_holes & ~holes
        mse = ((img - scene.right[0]) ** 2).mean(0)[visible].mean()
        iou = (holes & truth_holes).sum() / (holes | truth_holes).sum()
        result[name] = {"psnr_visible": float(10 * torch.log10(1 / mse)), "hole_iou": float(iou)}
    return result


def _real_quality() -> dict | None:
    """Both warps on Middlebury 2014 "Motorcycle" (ground-truth disparity; scikit-image's copy)."""
    try:
        from skimage.data import stereo_motorcycle
    except ImportError:
        return None
    left, right, disp = stereo_motorcycle()
    valid = np.isfinite(disp)
    disp = np.where(valid, disp, 0.0).astype(np.float32)
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255.0  # noqa: E731
    left_t, right_t = as_tensor(left), as_tensor(right)
    ours = forward_warp(
        left_t[None], torch.from_numpy(disp)[None, None], valid=torch.from_numpy(valid)[None, None]
    )
    ref_img, ref_holes = sorted_splat_warp(np.where(valid, left_t.numpy(), 0.0), np.where(valid, disp, -1e4))
    visible = ~ours.holes[0, 0] & ~torch.from_numpy(ref_holes)
    result = {}
    for name, img in (
        ("ours", ours.image[0]),
        ("sorted_splat", torch.from_numpy(ref_img)),
        ("copy_left", left_t),
    ):
        mse = ((img - right_t) ** 2).mean(0)[visible].mean()
        result[name] = float(10 * torch.log10(1 / mse))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", nargs="+", default=["1920x1080", "960x540"])
    parser.add_argument(
        "--child", nargs=4, metavar=("METHOD", "INPUTS", "DEVICE", "REPEATS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        method, inputs, device, repeats = args.child
        print(json.dumps(_child(method, inputs, device, int(repeats))))
        return

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}")
    print("peak MiB: growth of the process's peak RSS (CPU) or peak allocated CUDA memory while warping")
    print(
        "ours = with the allocator tuning that the CLI and jobs apply (spatialdreamer.runtime); "
        "default-malloc = without"
    )
    print(f"{'size':>10} {'device':>6} {'method':>19} {'ms/frame':>9} {'frames/s':>9} {'peak MiB':>9}")
    tmp = tempfile.TemporaryDirectory()
    for size in args.sizes:
        w, h = map(int, size.split("x"))
        # inputs are rendered here so that the children's peak memory is the warp's alone
        _, image, disparity = _inputs(w, h, "cpu")
        inputs = str(Path(tmp.name) / f"{size}.pt")
        torch.save({"image": image, "disparity": disparity}, inputs)
        for device in devices:
            for method in ("ours", "ours-default-malloc", "sorted_splat") if device == "cpu" else ("ours",):
                cmd = [sys.executable, __file__, "--child", method, inputs, device, str(args.repeats)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                peak = r.get("peak_gpu_mib", r["peak_cpu_mib"])
                print(
                    f"{size:>10} {device:>6} {method:>19} {r['seconds'] * 1000:9.1f} "
                    f"{1 / r['seconds']:9.2f} {peak:9.1f}"
                )
    w, h = map(int, args.sizes[-1].split("x"))
    print(f"quality on a synth scene at {w}x{h} (exact ground truth):")
    for name, q in _quality(w, h).items():
        print(
            f"  {name:>13}: PSNR on visible pixels {q['psnr_visible']:.2f} dB, hole IoU {q['hole_iou']:.3f}"
        )
    real = _real_quality()
    if real is None:
        print("real stereo check skipped: scikit-image (dev extra) is not installed")
    else:
        print("quality on a real stereo photo (Middlebury 2014 Motorcycle, 741x500, true disparity):")
        for name, value in real.items():
            print(f"  {name:>13}: PSNR on pixels both warps cover {value:.2f} dB")


if __name__ == "__main__":
    main()
