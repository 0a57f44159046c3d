"""The converter's temporal stabilisation: the depth stabiliser's look-ahead runs across chunks
(the depth stage hands frames on late, with the disparity that belongs to them), and the output
hold restarts where a part begins, so a resumed run still gives the same frames."""

from __future__ import annotations

import torch

from spatialdreamer.convert import ConvertOptions, convert_video
from spatialdreamer.stereo.render import StereoRenderer
from spatialdreamer.stereo.stabilize import DepthStabilizer, OutputHold


def test_the_lookahead_crosses_chunks_and_every_frame_gets_its_own_disparity(
    video_with_audio, tmp_path, monkeypatch
):
    pushed, rendered, holds = [], [], []
    push, render_u8, hold = DepthStabilizer.push, StereoRenderer.render_u8, OutputHold.__call__

    def spy_push(self, frames, depth):
        pushed.append((frames.clone(), depth.clone()))
        return push(self, frames, depth)

    def spy_render(self, frames, disparity, out):
        rendered.append((frames.clone(), disparity.clone()))
        return render_u8(self, frames, disparity, out)

    def spy_hold(self, *args, **kwargs):
        holds.append(len(args[0]))
        return hold(self, *args, **kwargs)

    monkeypatch.setattr(DepthStabilizer, "push", spy_push)
    monkeypatch.setattr(StereoRenderer, "render_u8", spy_render)
    monkeypatch.setattr(OutputHold, "__call__", spy_hold)
    options = ConvertOptions(depth_model="parallax", chunk_size=4, lookahead=4, hold=0.5)
    report = convert_video(video_with_audio, tmp_path / "out.mp4", options)
    assert report.frames == 48 and sum(holds) == 48
    # the first chunk waited for the second; the last came out at the end of the video
    assert [len(f) for f, _ in rendered] == [4] * 12 and [len(f) for f, _ in pushed] == [4] * 12
    frames = torch.cat([f for f, _ in pushed])
    assert torch.equal(torch.cat([f for f, _ in rendered]), frames)  # in order, none lost
    # the whole shot stabilised in one call: the same disparity as chunk by chunk, 4 frames late
    reference = DepthStabilizer(options.smoothing, lookahead=4)(frames, torch.cat([d for _, d in pushed]))
    assert torch.equal(torch.cat([d for _, d in rendered]), reference)
