"""The same stages without Ray: the reference the Ray job is measured against and checked equal to."""

from __future__ import annotations

from collections.abc import Iterable

from spatialdreamer.corpus.batches import rows_to_batch
from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.dvg import DepthDVGStage
from spatialdreamer.corpus.pack import pack_video
from spatialdreamer.corpus.prepare import prepare_clips
from spatialdreamer.corpus.segments import plan_video
from spatialdreamer.corpus.split import split_video
from spatialdreamer.corpus.write import write_clip_stage

__all__ = ["build_in_process"]


def build_in_process(
    sources: Iterable[dict], root: str, config: CorpusConfig, device: str = "cpu"
) -> tuple[int, int]:
    """Run plan → split → prepare → depth + DVG → write in one process, clip by clip, segment
    by segment; each video's segments are packed once its clips are written.

    Returns ``(clips, frames)`` written.
    """
    stage = DepthDVGStage(config, root, device=device)
    clips = frames = 0
    for row in sources:
        for segment in plan_video(row, root, config):
            for clip in split_video(segment, root, config):
                batch = prepare_clips(rows_to_batch([clip]), root, config)
                if len(batch["clip_id"]):
                    batch = stage(batch)
                if len(batch["clip_id"]):
                    written = write_clip_stage(batch, root, config)
                    clips += len(written["clip_id"])
                    frames += int(written["num_frames"].sum())
        pack_video(row, root, config)
    return clips, frames
