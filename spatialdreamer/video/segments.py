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


def join_parts(parts: list[Path], out_path: str | os.PathLike) -> Path:
    """Copy the video packets of ``parts`` (in order) into ``out_path`` (container from its
    suffix). H.265 in MP4/MOV is tagged ``hvc1`` as the encoder would have tagged it."""
    if not parts:
        raise ValueError("no parts to join")
    out_path = Path(out_path)
    with av.open(str(out_path), mode="w") as out:
        stream = None
        last_dts = None
        for part in parts:
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
                for packet in source.demux(video):
                    if packet.dts is None and packet.pts is None:
                        continue  # the demuxer's end-of-stream marker
                    if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                        packet.dts = last_dts + 1  # decode order across a join stays strictly increasing
                    last_dts = packet.dts
                    packet.stream = stream
                    out.mux(packet)
    return out_path
