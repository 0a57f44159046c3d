"""The stereo-corpus engine: each stage of the job in a room of its own.

``pipelines.build_dataset`` composes them with Ray Data, each with its resources; nothing
here imports Ray, so every stage also runs in-process (:func:`build_in_process`).

    sources   list the source videos (driver)
    segments  keyframe-aligned time segments of long videos      driver threads (index reads)
    split     probe, decode (range read), shot cuts, clips       CPU task per segment
    prepare   cheap scores + filters, rgb encode, DIS flow       CPU task per clip
    dvg       depth, disparity, warp, warp-back, masks           GPU actor (CPU without GPUs)
    write     encode views, lossless masks/disparity, row        CPU task per clip
    pack      a segment's clips → one tar + one manifest part    CPU task per video
    dedupe    near-duplicate clips across videos (phash bands)   driver, 3 manifest columns
    records   the per-clip/per-video records that make resume exact; the failure policy

The exports load on first use (:mod:`spatialdreamer._lazy`): a CPU stage's worker imports its own
modules, not torch and the depth models with them.
"""

from typing import TYPE_CHECKING

from spatialdreamer._lazy import lazy_exports

if TYPE_CHECKING:
    from spatialdreamer.corpus.batches import rows_to_batch
    from spatialdreamer.corpus.config import CorpusConfig
    from spatialdreamer.corpus.dedupe import mark_duplicates, near_duplicates
    from spatialdreamer.corpus.dvg import DepthDVGStage, clip_budget
    from spatialdreamer.corpus.local import build_in_process
    from spatialdreamer.corpus.pack import pack_video
    from spatialdreamer.corpus.prepare import FILTER_STAGE, prepare_clips
    from spatialdreamer.corpus.records import (
        TransientError,
        accounted_clips,
        is_transient,
        record_failure,
    )
    from spatialdreamer.corpus.segments import keyframe_boundaries, plan_video, video_is_done
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
    "keyframe_boundaries",
    "list_sources",
    "mark_duplicates",
    "near_duplicates",
    "pack_video",
    "plan_video",
    "prepare_clips",
    "record_failure",
    "rows_to_batch",
    "split_video",
    "video_is_done",
    "write_clip_stage",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CorpusConfig": "config",
        "DepthDVGStage": "dvg",
        "FILTER_STAGE": "prepare",
        "LIST_STAGE": "sources",
        "SourceListing": "sources",
        "TransientError": "records",
        "VIDEO_SUFFIXES": "sources",
        "accounted_clips": "records",
        "build_in_process": "local",
        "clip_budget": "dvg",
        "find_sources": "sources",
        "is_transient": "records",
        "keyframe_boundaries": "segments",
        "list_sources": "sources",
        "mark_duplicates": "dedupe",
        "near_duplicates": "dedupe",
        "pack_video": "pack",
        "plan_video": "segments",
        "prepare_clips": "prepare",
        "record_failure": "records",
        "rows_to_batch": "batches",
        "split_video": "split",
        "video_is_done": "segments",
        "write_clip_stage": "write",
    },
)
