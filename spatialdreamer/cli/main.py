"""``spatialdreamer``: parse arguments, call a job or a stage, turn failures into one line.

spatialdreamer convert IN OUT [--format full-sbs] [--depth-model ID|parallax] ...
spatialdreamer synth OUT_DIR [--count 3] [--seconds 4]
spatialdreamer demo [--out demo_out]
spatialdreamer eval --pred DIR (--gt DIR | --benchmark DIR) [--masks DIR] [--left DIR]
spatialdreamer manifest CORPUS [--query EXPR] [--failures]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from spatialdreamer.cli.help import HelpFormatter, add_verbose
from spatialdreamer.runtime import configure_cpu

log = logging.getLogger("spatialdreamer")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 320x192, got {text!r}") from exc
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def _interactive() -> bool:
    """Whether a person watches standard error (status lines there; logs stay one line per error)."""
    return sys.stderr.isatty()


def _add_convert(sub) -> None:
    from spatialdreamer.choices import CODECS, DEFAULT_DEPTH_MODEL, EYES, FORMATS, PIX_FMTS

    p = sub.add_parser(
        "convert",
        help="convert monocular videos (or pictures) into stereo",
        description="Convert a video, a picture, a folder, a glob or a list file of them into stereo. "
        "An interrupted conversion resumes where it stopped when the same command is run again.",
    )
    p.add_argument(
        "input",
        help="a video or picture, a folder, a quoted glob ('clips/*.mp4'), or a .txt list of paths",
    )
    p.add_argument(
        "output",
        help="output file (.mp4/.mkv/.mov/.webm/.avi; .png/.jpg for a picture) or folder "
        "(files named <stem><layout tag>.mp4, which VR players recognise)",
    )
    p.add_argument(
        "-y", "--overwrite", action="store_true", help="replace outputs that exist (default: keep them)"
    )
    p.add_argument("-r", "--recursive", action="store_true", help="take a folder's subfolders too (mirrored)")
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="with several inputs: go on past a file that fails, and list the failures at the end",
    )
    p.add_argument(
        "--segment-seconds",
        type=float,
        default=60.0,
        help="encode in parts of this length; a rerun resumes after the last finished part (default 60)",
    )
    p.add_argument("--format", choices=FORMATS, default="full-sbs", help="stereo layout (default full-sbs)")
    p.add_argument(
        "--depth-model",
        default=DEFAULT_DEPTH_MODEL,
        help=f"Hugging Face id or local path of a depth model, or 'parallax' (no weights; a fallback). "
        f"Default {DEFAULT_DEPTH_MODEL}",
    )
    p.add_argument("--budget", type=float, default=3.0, help="depth budget, %% of the width (default 3)")

    # rendering: which eyes, edges, screen plane and comfort, temporal smoothing, per-shot report
    def convergence(text: str) -> float | str:
        try:
            return "auto" if text == "auto" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'auto' or a number in [0, 1], got {text!r}") from None

    p.add_argument(
        "--convergence",
        type=convergence,
        default=0.5,
        help="screen plane: 0 = all in front, 1 = all behind (default 0.5); 'auto' = per shot, the "
        "salient depth on the screen and the depth held inside --comfort",
    )
    p.add_argument(
        "--comfort",
        type=float,
        nargs=2,
        default=(2.0, 1.5),
        metavar=("FRONT", "BEHIND"),
        help="with --convergence auto: the most parallax in front of / behind the screen, %% of the "
        "width (default 2 1.5)",
    )
    p.add_argument(
        "--eye",
        choices=EYES,
        default=None,
        help="which eyes are synthesized: both (half the disparity each; the default) or one, the "
        "source being the other (the default with --refiner is right)",
    )
    p.add_argument(
        "--edge-dilation",
        type=int,
        nargs="+",
        default=[2, 1],
        metavar="X [Y]",
        help="grow near depth by X (and Y vertical, default X//2) pixels against halos; 0 = off "
        "(default 2 1)",
    )
    p.add_argument(
        "--smoothing",
        type=float,
        default=0.85,
        help="share of its previous depth a still pixel keeps per frame at least (more the longer it stays "
        "still), in [0, 1): higher = steadier, "
        "0 = off (default 0.85); moving pixels always follow at once",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        default=4,
        help="frames the screen plane and the depth stabiliser look ahead: a still pixel's depth "
        "follows the mean of the next N estimates while it stays still (noise averaged, centred "
        "rather than lagging); the output comes N frames later through the pipeline (default 4; "
        "0 = none)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="PX",
        help="output hold: a synthesized pixel whose source neighbourhood has not changed keeps its "
        "previous value until the disparity there has changed by more than PX pixels (a temporal "
        "denoiser with bounded error; default 0 = off)",
    )
    p.add_argument(
        "--report", default=None, metavar="FILE", help="write each shot's screen plane and depth (.csv/.json)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--start", type=float, default=None, help="start time in seconds")
    p.add_argument("--end", type=float, default=None, help="end time in seconds")
    p.add_argument(
        "--codec",
        choices=CODECS,
        default="auto",
        help="video codec (default auto: vp9 for .webm, mpeg4 for .avi, else h264)",
    )
    p.add_argument(
        "--pix-fmt",
        choices=PIX_FMTS,
        default="auto",
        help="pixel format (default auto: 10 bits for a 10-bit source, else yuv420p)",
    )
    p.add_argument(
        "--crf", type=int, default=17, help="quality, lower is better (default 17, visually lossless)"
    )
    p.add_argument(
        "--preset",
        default="veryfast",
        help="x264/x265 speed preset (default veryfast; slower presets make smaller files at the same CRF)",
    )
    p.add_argument(
        "--b-frames",
        type=int,
        default=0,
        help="H.264/H.265 B-frames in a row (default 0: they make still regions flicker; "
        "3 = the encoder's usual, smaller files on fast motion)",
    )
    p.add_argument("--no-inpaint", action="store_true", help="fill holes by propagation only (faster)")
    p.add_argument(
        "--refiner",
        default=None,
        metavar="PATH",
        help="fill holes with a trained SpatialDreamerPipeline (the pipeline/ folder pipelines.train "
        "writes, or a Hugging Face id) instead of the classical fill",
    )
    p.add_argument(
        "--refiner-steps", type=int, default=8, help="denoising steps with --refiner (default 8; 1 = fastest)"
    )
    p.add_argument("--chunk", type=int, default=16, help="frames decoded and processed at a time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from tqdm import tqdm

    from spatialdreamer.batch import convert_batch, list_inputs
    from spatialdreamer.convert import ConvertOptions, convert_video
    from spatialdreamer.resume import parts_folder_for

    options = ConvertOptions(
        format=args.format,
        depth_model=args.depth_model,
        budget=args.budget,
        convergence=args.convergence,
        comfort=tuple(args.comfort),
        eye=args.eye or ("right" if args.refiner else "both"),
        edge_dilation=tuple(args.edge_dilation)
        if len(args.edge_dilation) != 1
        else (args.edge_dilation[0], args.edge_dilation[0] // 2),
        smoothing=args.smoothing,
        lookahead=args.lookahead,
        hold=args.hold,
        report=args.report,
        device=args.device,
        start=args.start,
        end=args.end,
        chunk_size=args.chunk,
        codec=args.codec,
        crf=args.crf,
        inpaint=not args.no_inpaint,
        preset=args.preset,
        b_frames=args.b_frames,
        refiner=args.refiner,
        refiner_steps=args.refiner_steps,
        pix_fmt=args.pix_fmt,
        overwrite=args.overwrite,
        segment_seconds=args.segment_seconds,
    )
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if args.quiet:
            return
        if not bars:  # created at the first chunk, once the model has loaded
            bars.append(tqdm(total=total, unit="frame", dynamic_ncols=True, desc="converting"))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    def close_bars() -> None:
        for bar in bars:
            bar.close()
        bars.clear()

    inputs, root = list_inputs(args.input, recursive=args.recursive)
    single = len(inputs) == 1 and Path(args.input) == inputs[0]
    if not inputs:
        raise ValueError(f"no videos or pictures found in {args.input}")
    if not args.quiet and _interactive():  # the model loads (or downloads) before the first frame
        print(f"loading depth model {args.depth_model} ...", file=sys.stderr, flush=True)
    with _sigterm_as_interrupt():
        if single:
            try:
                report = convert_video(args.input, args.output, options, progress=progress)
            except KeyboardInterrupt:
                close_bars()
                _say_resumable(args.input, args.output, options, parts_folder_for)
                raise
            finally:
                close_bars()
            _print_converted(report)
            return 0

        def file_progress(source, index: int, count: int):
            close_bars()
            if not args.quiet:
                print(f"[{index + 1}/{count}] {source}", file=sys.stderr)
            return progress

        try:
            batch = convert_batch(
                inputs, args.output, options, root=root, skip_errors=args.skip_errors, progress=file_progress
            )
        finally:
            close_bars()
    for output in batch.converted:
        print(f"wrote {output}")
    for output in batch.skipped:
        print(f"skipped {output} (exists; -y replaces it)")
    for source, reason in batch.failed:
        print(f"spatialdreamer convert: failed: {source}: {reason}", file=sys.stderr)
    print(batch.summary())
    return 1 if batch.failed else 0


def _print_converted(report) -> None:
    dropped = f"; {report.dropped} undecodable source frames dropped" if report.dropped else ""
    resumed = f"; resumed after {report.resumed_frames} frames" if report.resumed_frames else ""
    print(f"wrote {report.output} ({report.frames} frames, {report.fps:.1f} frames/s{resumed}{dropped})")


def _say_resumable(source, destination, options, parts_folder_for) -> None:
    """After an interruption: where the finished parts are, and how to go on."""
    from spatialdreamer.convert import output_path_for

    try:
        parts = parts_folder_for(output_path_for(source, destination, options.format))
    except ValueError:
        return
    if parts.exists():
        print(
            f"finished parts kept in {parts}; run the same command again to resume (or delete it)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a closing terminal, a job scheduler) stops a conversion as Ctrl-C does:
    temporary files removed, finished parts kept for a rerun."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write procedural stereo videos (with exact ground truth)")
    p.add_argument("output", help="folder to write into")
    p.add_argument("--count", type=int, default=3, help="number of videos")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate")
    p.add_argument("--size", type=_size, default=(320, 192), help="WIDTHxHEIGHT (default 320x192)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first video")
    p.add_argument("--ground-truth", action="store_true", help="also write right views, disparity and masks")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    if args.count < 1 or args.seconds <= 0:
        raise ValueError("--count must be >= 1 and --seconds > 0")
    w, h = args.size
    frames = max(1, round(args.seconds * args.fps))
    for i in range(args.count):
        spec = random_spec(args.seed + i, height=h, width=w, frames=frames, fps=args.fps)
        files = write_scene(spec, args.output, f"synth_{args.seed + i:04d}", ground_truth=args.ground_truth)
        print(f"wrote {files.left}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on generated videos (no downloads)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from spatialdreamer.cli.demo import run_demo

    run_demo(args.out)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score predicted right views against ground truth (results table)")
    p.add_argument("--pred", required=True, help="folder of predicted right-view videos")
    p.add_argument(
        "--gt", default=None, help="folder of ground-truth videos (paired with --pred by file name)"
    )
    p.add_argument(
        "--benchmark",
        default=None,
        help="a benchmark folder (python -m pipelines.evaluate): sets --gt/--masks/--left",
    )
    p.add_argument(
        "--masks", default=None, help="folder of hole-mask videos (white = hole): adds hole columns"
    )
    p.add_argument("--left", default=None, help="folder of left views: adds the copy-the-left-view row")
    p.add_argument("--name", default=None, help="method name in the table (default: the --pred folder name)")
    p.add_argument("--out", default="eval_out", help="where results.csv/.md go (default eval_out)")
    p.add_argument("--lpips-backbone", default=None, help="torchvision AlexNet/VGG16 ImageNet checkpoint")
    p.add_argument("--lpips-weights", default=None, help="LPIPS v0.1 linear layers (alex.pth / vgg.pth)")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    p.add_argument("--i3d", default=None, help="I3D weights for FVD (InceptionI3d state dict or TorchScript)")
    p.add_argument("--raft-weights", default=None, help="RAFT checkpoint: E_warp flow by RAFT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from spatialdreamer.eval import LABELS, write_results
    from spatialdreamer.eval.folders import evaluate_folders

    gt, masks, left = args.gt, args.masks, args.left
    if args.benchmark:
        if gt:
            raise ValueError("pass --gt or --benchmark, not both")
        bench = Path(args.benchmark)
        gt, masks, left = bench / "right", masks or bench / "occlusion", left or bench / "left"
    if gt is None:
        raise ValueError("pass --gt DIR (ground-truth videos) or --benchmark DIR")
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if args.quiet:
            return
        if not bars:  # created once the inputs have been checked and the first video is scored
            bars.append(tqdm(total=total, unit="video", dynamic_ncols=True, desc="scoring"))
        bars[0].update(done - bars[0].n)

    try:
        per_video, summary, notes = evaluate_folders(
            args.pred,
            gt,
            masks=masks,
            left=left,
            name=args.name,
            lpips_backbone=args.lpips_backbone,
            lpips_weights=args.lpips_weights,
            lpips_net=args.lpips_net,
            i3d=args.i3d,
            raft_weights=args.raft_weights,
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    csv_path, md_path = write_results(per_video, summary, args.out, notes, LABELS)
    print(md_path.read_text(), end="")
    failed = per_video[per_video["error"] != ""]
    for _, row in failed.iterrows():
        print(f"spatialdreamer eval: failed: {row['method']} {row['video']}: {row['error']}", file=sys.stderr)
    print(f"wrote {csv_path} and {md_path}")
    return 1 if len(failed) else 0


def _add_manifest(sub) -> None:
    p = sub.add_parser("manifest", help="summarise a stereo corpus built by pipelines.build_dataset")
    p.add_argument("corpus", help="corpus root (local path or URI)")
    p.add_argument("--query", default=None, help="pandas query over the clips, e.g. 'hole_ratio < 0.05'")
    p.add_argument("--failures", action="store_true", help="list the failures (path, stage, error)")
    p.add_argument("--head", type=int, default=10, help="rows to show for --query / --failures")
    p.set_defaults(func=_run_manifest)


def _run_manifest(args) -> int:
    from spatialdreamer.data.manifest import describe_corpus

    print(describe_corpus(args.corpus, query=args.query, failures=args.failures, head=args.head))
    return 0


# The subcommands, in the order --help lists them, with their one-line help. Only the one
# named on the command line gets its arguments (convert's import torch): --help stays instant.
_COMMANDS = {
    "convert": ("convert a monocular video into a stereo video", _add_convert),
    "synth": ("write procedural stereo videos (with exact ground truth)", _add_synth),
    "demo": ("end-to-end demo on generated videos (no downloads)", _add_demo),
    "eval": ("score predicted right views against ground truth (results table)", _add_eval),
    "manifest": ("summarise a stereo corpus built by pipelines.build_dataset", _add_manifest),
}
_DESCRIPTION = "Monocular video to stereo video.\n\n" + __doc__.split("\n\n", 1)[1].strip()
_VERBOSE_HELP = "log details and show tracebacks (before or after the command)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _named_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in _COMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser. With ``argv``, only the subcommand it names is filled in (the
    others are listed by name and help); without, all of them are."""
    parser = _Parser(prog="spatialdreamer", description=_DESCRIPTION)
    add_verbose(parser, True, _VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    wanted = _named_command(argv) if argv is not None else None
    for name, (text, add) in _COMMANDS.items():
        if argv is None or name == wanted:
            add(sub)
        else:
            sub.add_parser(name, help=text)
    for child in sub.choices.values():
        add_verbose(child, False, _VERBOSE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_cpu()  # first: before building the parser loads torch (see spatialdreamer.runtime)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for the user; details with --verbose
        if args.verbose:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"spatialdreamer {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
