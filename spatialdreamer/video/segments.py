"""Join separately encoded parts of one video into one file, without re-encoding.

Each part starts with a keyframe (its own encoder), carries timestamps on the output's clock,
and shares the codec settings of the others, so the packets are copied one after another.
"""

from __future__ import annotations

import os
from pathlib import Path

import av

from spatialdreamer.video.errors import VideoError

__all__ = ["join_parts"]


def join_parts(parts: list[Path], starts: list[float], out_path: str | os.PathLike) -> Path:
    """Copy the video packets of ``parts`` (in order) into ``out_path`` (container from its
    suffix), part ``i`` starting at ``starts[i]`` seconds.

    A muxer may shift a file's timestamps (to keep decode times non-negative), so each part is
    placed by its first frame's known time, not by the times stored in it. Decode times stay
    strictly increasing across a join. H.265 in MP4/MOV is tagged ``hvc1``.
    """
    if not parts or len(parts) != len(starts):
        raise ValueError(f"need one start time per part, got {len(parts)} parts and {len(starts)} starts")
    out_path = Path(out_path)
    with av.open(str(out_path), mode="w") as out:
        stream = None
        last_dts = None
        for part, start in zip(parts, starts, strict=True):
            try:
                source = av.open(str(part))
            except av.error.FFmpegError as exc:
                raise VideoError(str(part), f"a finished part cannot be read ({exc})") from exc
            with source:
                video = source.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video)
                    if video.codec_context.name == "hevc" and out_path.suffix.lower() in (".mp4", ".mov"):
                        stream.codec_tag = "hvc1"
                    rate = video.average_rate or video.guessed_rate
                    if out_path.suffix.lower() == ".avi" and rate:
                        stream.time_base = 1 / rate  # AVI counts frames at one fixed rate
                packets = [p for p in source.demux(video) if p.pts is not None]
                if not packets:
                    raise VideoError(str(part), "a finished part has no frames")
                shift = round(start / video.time_base) - min(p.pts for p in packets)
                for packet in packets:
                    packet.pts += shift
                    packet.dts = packet.pts if packet.dts is None else packet.dts + shift
                    if last_dts is not None and packet.dts <= last_dts:
                        packet.dts = last_dts + 1  # the next part's first packets, decoded ahead
                    last_dts = packet.dts
                    packet.stream = stream
                    out.mux(packet)
    return out_path
