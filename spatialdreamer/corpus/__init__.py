"""The stereo-corpus engine: each stage of the job in a room of its own.

``pipelines.build_dataset`` composes them with Ray Data, each with its resources; nothing
here imports Ray, so every stage also runs in-process (:func:`build_in_process`).

    sources   list the source videos (driver)
    split     probe, decode, shot cuts, clips                    CPU task per video
    prepare   cheap scores + filters, rgb encode, DIS flow       CPU task per clip
    dvg       depth, disparity, warp, warp-back, masks           GPU actor (CPU without GPUs)
    write     encode views, lossless masks/disparity, row        CPU task per clip
    records   the per-clip/per-video records that make resume exact; the failure policy
"""

from spatialdreamer.corpus.batches import rows_to_batch
from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.dvg import DepthDVGStage, clip_budget
from spatialdreamer.corpus.local import build_in_process
from spatialdreamer.corpus.prepare import FILTER_STAGE, prepare_clips
from spatialdreamer.corpus.records import (
    TransientError,
    accounted_clips,
    is_transient,
    record_failure,
    video_is_done,
)
from spatialdreamer.corpus.sources import (
    LIST_STAGE,
    VIDEO_SUFFIXES,
    SourceListing,
    find_sources,
    list_sources,
)
from spatialdreamer.corpus.split import split_video
from spatialdreamer.corpus.write import write_clip_stage

__all__ = [
    "FILTER_STAGE",
    "LIST_STAGE",
    "VIDEO_SUFFIXES",
    "CorpusConfig",
    "DepthDVGStage",
    "SourceListing",
    "TransientError",
    "accounted_clips",
    "build_in_process",
    "clip_budget",
    "find_sources",
    "is_transient",
    "list_sources",
    "prepare_clips",
    "record_failure",
    "rows_to_batch",
    "split_video",
    "video_is_done",
    "write_clip_stage",
]
