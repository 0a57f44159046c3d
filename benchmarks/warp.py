"""Forward-warp speed with and without a competing CPU load, peak memory and quality.

Each configuration runs in a fresh child process that times every method on the same frames
(synth scene, disparity scaled to 5 % of the width: 96 px at 1920x1080), median of
``--repeats``:

- ``ours``: ``spatialdreamer.dvg.forward_warp`` as the library runs it on a CPU (the compiled
  row kernel);
- ``ours, torch ops``: the same algorithm as torch ops (``backend="torch"``), the code the CUDA
  path runs, and what ran on CPUs before the compiled kernel;
- ``iw3``: nunif iw3's ``apply_divergence_forward_warp`` (``forward_fill``, right view, same
  disparity), only with ``--iw3 PATH`` to a nunif checkout (not a dependency; the row is left
  out without it);
- ``sorted splat``: a numpy reference doing what sort-based warpers do.

Thread policies: ``configured`` is what the CLI and jobs apply (``spatialdreamer.runtime``:
passive OpenMP waiting, one thread per usable core); ``default`` leaves OpenMP as it is. Loads:
``0`` = as the machine is, ``1`` = plus one busy process spinning on a core beside the
measurement. The machine's load average is printed: on a shared machine "no load" is not idle.

Quality rows: the warp against ground truth on a synth scene and on a real stereo photograph;
then edges: alternating holes on steep disparity ramps, and the near-side edge dilation of the
disparity (``convert --edge-dilation``) on exact depth and on depth blurred the way a depth
model's soft edges are (PSNR of the filled view against the true right view).

    python benchmarks/warp.py [--repeats 10] [--sizes 1920x1080 960x540] [--iw3 ~/nunif]
    python benchmarks/warp.py --quality-only
"""

from spatialdreamer.runtime import configure_cpu

configure_cpu()  # first, before torch loads (children of the "default" policy opt out by env)

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from spatialdreamer.dvg import forward_warp
from spatialdreamer.dvg.disparity import dilate_foreground
from spatialdreamer.runtime import peak_rss_mib
from spatialdreamer.stereo import fill_holes
from spatialdreamer.synth import make_scene

POLICIES = {
    "configured": {},
    "default": {"SPATIALDREAMER_THREAD_POLICY": "default"},
}
BUSY_LOOP = "while True:\n    pass\n"


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


def load_iw3(root: str):
    """nunif's ``iw3/forward_warp.py`` from a checkout, without running its packages' heavy
    ``__init__`` files (it needs only ``nunif/modules/replication_pad2d.py`` besides torch)."""
    root_path = Path(root).expanduser()
    for name in ("nunif", "nunif.modules"):
        sys.modules.setdefault(name, types.ModuleType(name))
    module = None
    for name, rel in (
        ("nunif.modules.replication_pad2d", "nunif/modules/replication_pad2d.py"),
        ("iw3_forward_warp", "iw3/forward_warp.py"),
    ):
        path = root_path / rel
        if not path.is_file():
            raise SystemExit(f"--iw3 {root}: {rel} not found (pass the root of a nunif checkout)")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _inputs(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    scene = make_scene(0, height=height, width=width, frames=1)
    disparity = scene.disparity / scene.disparity.max() * (0.05 * width)
    return scene.left.contiguous(), disparity.contiguous()


def _time(fn, repeats: int, device: str = "cpu") -> float:
    fn()  # warm-up (and the kernel's compilation or cache load)
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


def _methods(image, disparity, iw3, device="cpu"):
    width = image.shape[-1]
    max_disparity = 0.05 * width
    yield "ours", lambda: forward_warp(image, disparity)
    if device == "cpu":
        yield "ours, torch ops", lambda: forward_warp(image, disparity, backend="torch")
        img, disp = image[0].numpy(), disparity[0, 0].numpy()
        yield "sorted splat", lambda: sorted_splat_warp(img, disp)
        if iw3 is not None:
            depth = disparity / max_disparity
            divergence = 100.0 * max_disparity / width  # right view only: shift = depth * divergence% * W
            yield (
                "iw3",
                lambda: iw3.apply_divergence_forward_warp(
                    image, depth, divergence, 0.0, method="forward_fill", synthetic_view="right"
                ),
            )


def _child(inputs: list[str], repeats: int, iw3_path: str | None, iw3_repeats: int) -> dict:
    iw3 = load_iw3(iw3_path) if iw3_path else None
    out = {"threads": torch.get_num_threads(), "rows": []}
    for path in inputs:
        saved = torch.load(path, weights_only=True)
        size = Path(path).stem
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            image, disparity = saved["image"].to(device), saved["disparity"].to(device)
            for name, fn in _methods(image, disparity, iw3, device):
                seconds = _time(fn, iw3_repeats if name == "iw3" else repeats, device)
                out["rows"].append({"size": size, "device": device, "method": name, "seconds": seconds})
    return out


def _child_memory(path: str, method: str) -> float:
    saved = torch.load(path, weights_only=True)
    image, disparity = saved["image"], saved["disparity"]
    fn = dict(_methods(image, disparity, None))[method]
    base = peak_rss_mib()
    fn()
    fn()
    return peak_rss_mib() - base


def _quality(width: int, height: int) -> dict:
    scene = make_scene(0, height=height, width=width, frames=1)
    truth_holes = scene.occlusion[0, 0]
    ours = forward_warp(scene.left, scene.disparity)
    ref_img, ref_holes = sorted_splat_warp(scene.left[0].numpy(), scene.disparity[0, 0].numpy())
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


def _ramp_hole_runs(fall: float) -> int:
    """Runs of holes where disparity falls ``fall`` px per px (near side left) for 12 px."""
    d = torch.cat(
        [torch.full((40,), 40.0), 40.0 - fall * torch.arange(1.0, 13.0), torch.full((60,), 40 - 13 * fall)]
    )
    holes = forward_warp(torch.rand(1, 3, 1, len(d)), d.view(1, 1, 1, -1)).holes[0, 0, 0].int()
    inner = holes[: len(d) - int(d[-1]) - 2]  # leave out the band the right frame edge exposes
    return int((inner[1:] - inner[:-1]).eq(1).sum()) + int(inner[0])


def _edge_quality(width: int, height: int) -> None:
    print("\nedges: runs of holes on a steep disparity ramp (1 = one contiguous disocclusion)")
    print("  " + ", ".join(f"{fall} px/px: {_ramp_hole_runs(fall)}" for fall in (1.5, 2.0, 3.0, 5.0)))
    scene = make_scene(0, height=height, width=width, frames=1)
    soft = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(scene.disparity, (3, 3, 0, 0), mode="replicate"), (1, 7), 1
    )
    print(f"edge dilation, synth {width}x{height}: PSNR of the filled right view, all pixels (dB)")
    for name, disparity in (("exact depth", scene.disparity), ("soft depth (7 px blur)", soft)):
        cells = []
        for radius in ((0, 0), (1, 0), (2, 1), (3, 1)):
            out = forward_warp(scene.left, dilate_foreground(disparity, radius))
            filled = fill_holes(out.image, out.holes, out.disparity)
            psnr = float(10 * torch.log10(1 / ((filled - scene.right) ** 2).mean()))
            cells.append(f"{radius}: {psnr:5.2f}")
        print(f"  {name:>22}  " + "  ".join(cells))


def _child_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    if policy == "default":
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    return env | POLICIES[policy]


def run_child(args: list[str], policy: str, busy: int) -> dict:
    """Run ``benchmarks/warp.py ARGS`` in a fresh process, with ``busy`` spinning processes beside it."""
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        cmd = [sys.executable, __file__, *args]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_child_env(policy))
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", nargs="+", default=["1920x1080", "960x540"])
    parser.add_argument("--iw3", metavar="PATH", help="a nunif checkout: time iw3 in the same process")
    parser.add_argument("--iw3-repeats", type=int, default=3)
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=["configured", "default"])
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1], help="busy processes beside the run")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--quality-only", action="store_true", help="skip the speed and memory runs")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.repeats, args.iw3, args.iw3_repeats)))
        return
    if args.child_memory:
        print(json.dumps(_child_memory(*args.child_memory)))
        return

    load_before = os.getloadavg()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, cuda: {torch.cuda.is_available()}; "
        f"load average before: {load_before[0]:.1f} (1 min), {load_before[1]:.1f} (5 min)"
    )
    if not args.iw3:
        print("iw3: not timed (pass --iw3 PATH to a nunif checkout to time it in the same process)")
    tmp = tempfile.TemporaryDirectory()
    inputs = []
    for size in args.sizes:
        w, h = map(int, size.split("x"))
        image, disparity = _inputs(w, h)
        inputs.append(str(Path(tmp.name) / f"{size}.pt"))
        torch.save({"image": image, "disparity": disparity}, inputs[-1])
    child_args = ["--repeats", str(args.repeats), "--iw3-repeats", str(args.iw3_repeats)]
    child_args += ["--iw3", args.iw3] if args.iw3 else []
    results = {}
    for policy in [] if args.quality_only else args.policies:
        for busy in args.loads:
            r = run_child([*child_args, "--child", *inputs], policy, busy)
            for row in r["rows"]:
                results[(row["size"], row["device"], row["method"], policy, busy)] = row["seconds"]
            print(f"  measured: policy {policy}, {busy} busy process(es), {r['threads']} intra-op threads")

    loads = args.loads
    head = " ".join(f"{f'ms, load {b}':>10}" for b in loads)
    print(f"\n{'size':>9} {'device':>6} {'method':>16} {'policy':>10} {head} {'worst/best':>10}", end="")
    print(" vs iw3 (x faster)" if args.iw3 else "")
    keys = sorted({k[:3] for k in results}, key=lambda k: (args.sizes.index(k[0]), k[1]))
    order = ["ours", "ours, torch ops", "iw3", "sorted splat"]
    keys.sort(key=lambda k: (args.sizes.index(k[0]), k[1], order.index(k[2])))
    for size, device, method in keys:
        for policy in args.policies:
            times = [results.get((size, device, method, policy, b)) for b in loads]
            if any(t is None for t in times):
                continue
            line = f"{size:>9} {device:>6} {method:>16} {policy:>10} "
            line += " ".join(f"{t * 1000:10.1f}" for t in times)
            line += f" {max(times) / min(times):10.2f}"
            if args.iw3 and device == "cpu":
                iw3 = [results.get((size, device, "iw3", policy, b)) for b in loads]
                if all(iw3):
                    line += " " + " ".join(f"{i / t:8.1f}" for i, t in zip(iw3, times, strict=True))
            print(line)

    if not (args.no_memory or args.quality_only):
        print("\npeak MiB (growth of a fresh process's peak RSS over two warps, configured policy, no load):")
        for size, path in zip(args.sizes, inputs, strict=True):
            for method in ("ours", "ours, torch ops", "sorted splat"):
                mib = run_child(["--child-memory", path, method], "configured", 0)
                print(f"  {size:>9} {method:>16} {mib:8.0f}")

    w, h = map(int, args.sizes[-1].split("x"))
    print(f"\nquality on a synth scene at {w}x{h} (exact ground truth):")
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
    _edge_quality(w, h)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.1f} (1 min), {load_after[1]:.1f} (5 min)")


if __name__ == "__main__":
    main()
