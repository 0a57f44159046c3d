"""Evaluation: the synth benchmark set, the baselines and the scoring harness (results tables)."""

from spatialdreamer.eval.baselines import DepthDVG, DVGFill, Identity, NaiveDIBR, RefinerDVG, align_to
from spatialdreamer.eval.benchmark import (
    BenchmarkConfig,
    BenchmarkScene,
    ensure_benchmark,
    load_scene,
    read_video,
)
from spatialdreamer.eval.harness import (
    COLUMNS,
    VideoScorer,
    format_markdown,
    score_video,
    summarise,
    write_results,
)

__all__ = [
    "COLUMNS",
    "BenchmarkConfig",
    "BenchmarkScene",
    "DVGFill",
    "DepthDVG",
    "Identity",
    "NaiveDIBR",
    "RefinerDVG",
    "VideoScorer",
    "align_to",
    "ensure_benchmark",
    "format_markdown",
    "load_scene",
    "read_video",
    "score_video",
    "summarise",
    "write_results",
]
