"""RAFT port: the official checkpoint layout, loading and its errors, the correlation lookup and
convex upsampling, padding, and E_warp plumbing. All on random weights: nothing here checks
that the flow is accurate (no reference weights or flows are available offline)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from spatialdreamer.cli.main import main as cli_main
from spatialdreamer.eval import ScoreStage
from spatialdreamer.metrics import RAFT, RAFTFlow, RAFTWeightsError, e_warp, load_raft
from spatialdreamer.metrics.raft import CorrPyramid
from spatialdreamer.video import VideoWriter

# keys and shapes of princeton-vl/RAFT's full model (raft-things.pth, ``module.`` stripped)
OFFICIAL = {
    "fnet.conv1.weight": (64, 3, 7, 7),
    "fnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "fnet.layer2.0.downsample.0.weight": (96, 64, 1, 1),
    "fnet.layer3.1.conv2.bias": (128,),
    "fnet.conv2.weight": (256, 128, 1, 1),
    "cnet.norm1.running_var": (64,),
    "cnet.layer1.0.norm1.weight": (64,),
    "cnet.layer2.0.norm3.weight": (96,),
    "cnet.layer2.0.downsample.1.running_mean": (96,),
    "cnet.layer3.0.norm3.bias": (128,),
    "cnet.conv2.weight": (256, 128, 1, 1),
    "update_block.encoder.convc1.weight": (256, 324, 1, 1),
    "update_block.encoder.convc2.weight": (192, 256, 3, 3),
    "update_block.encoder.convf1.weight": (128, 2, 7, 7),
    "update_block.encoder.convf2.weight": (64, 128, 3, 3),
    "update_block.encoder.conv.weight": (126, 256, 3, 3),
    "update_block.gru.convz1.weight": (128, 384, 1, 5),
    "update_block.gru.convr2.weight": (128, 384, 5, 1),
    "update_block.gru.convq2.bias": (128,),
    "update_block.flow_head.conv1.weight": (256, 128, 3, 3),
    "update_block.flow_head.conv2.weight": (2, 256, 3, 3),
    "update_block.mask.0.weight": (256, 128, 3, 3),
    "update_block.mask.2.weight": (576, 256, 1, 1),
    "update_block.mask.2.bias": (576,),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RAFT()
    # non-trivial batch-norm statistics, so a load that skipped them would show
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def pth(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("raft") / "raft-random.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def test_layout_matches_the_official_checkpoint(model):
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 5_257_536  # the published full-model count
    for key, shape in OFFICIAL.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("fnet.") and ".norm" in k for k in state)  # instance norm: no params


def test_pth_and_safetensors_load_and_give_the_same_flow(model, pth, tmp_path):
    from safetensors.torch import save_file

    loaded = load_raft(pth)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a safetensors conversion that kept only one name of the shared shortcut norms
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items() if ".norm3." not in k}
    save_file(state, str(tmp_path / "raft.safetensors"))
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 67, 75), torch.rand(2, 3, 67, 75)  # odd sizes: padded to 72x80
    flows = [RAFTFlow(p, iters=2)(a, b) for p in (pth, tmp_path / "raft.safetensors")]
    assert flows[0].shape == (2, 2, 67, 75) and flows[0].isfinite().all()
    assert torch.equal(flows[0], flows[1])
    assert flows[0].abs().max() > 0


def test_flow_fn_scales_pads_and_crops(model):
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 64, 72), torch.rand(1, 3, 64, 72)
    with torch.no_grad():
        direct = model(a * 2 - 1, b * 2 - 1, iters=2)
    assert torch.allclose(RAFTFlow(model, iters=2)(a, b), direct)  # multiple of 8: no padding
    # grey input is repeated to RGB; a cropped (odd) input is replicate-padded back evenly
    gray = torch.rand(3, 1, 69, 59)
    out = RAFTFlow(model, iters=2, batch_size=2)(gray, gray.flip(-1))
    assert out.shape == (3, 2, 69, 59)
    with torch.no_grad():
        padded = [
            F.pad(x.expand(-1, 3, -1, -1) * 2 - 1, [2, 3, 1, 2], mode="replicate")
            for x in (gray, gray.flip(-1))
        ]
        ref = model(*padded, iters=2)[..., 1:70, 2:61]
    assert torch.allclose(out, ref, atol=1e-5)
    # under 64 px the 4-level pyramid would run out of pixels: padded up to 64, cropped back
    assert RAFTFlow(model, iters=1)(gray[:1, :, :30, :41], gray[1:2, :, :30, :41]).shape == (1, 2, 30, 41)
    with pytest.raises(ValueError, match="multiples of 8 and >= 64"):
        model(torch.zeros(1, 3, 56, 64), torch.zeros(1, 3, 56, 64))


def test_correlation_window_order_follows_the_reference():
    torch.manual_seed(3)
    f1, f2 = torch.randn(1, 8, 6, 7), torch.randn(1, 8, 6, 7)
    coords = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")[::-1])[None]
    corr = CorrPyramid(f1, f2, levels=2, radius=1)(coords)
    assert corr.shape == (1, 2 * 9, 6, 7)
    dot = (f1 * f2).sum(1)[0] / math.sqrt(8)
    assert torch.allclose(corr[0, 4], dot, atol=1e-5)  # window centre
    # channel i*3+j has x offset d[i], y offset d[j] (reference's meshgrid(dy, dx) as (x, y))
    right = (f1[0, :, :, :-1] * f2[0, :, :, 1:]).sum(0) / math.sqrt(8)  # x + 1
    down = (f1[0, :, :-1] * f2[0, :, 1:]).sum(0) / math.sqrt(8)  # y + 1
    assert torch.allclose(corr[0, 7, :, :-1], right, atol=1e-5)
    assert torch.allclose(corr[0, 5, :-1], down, atol=1e-5)
    assert torch.allclose(corr[0, 7, :, -1], torch.zeros(6))  # outside the frame: zero


def test_convex_upsampling():
    flow = torch.randn(2, 2, 3, 4)
    centre = torch.full((2, 9, 8, 8, 3, 4), -1e4)
    centre[:, 4] = 0  # all weight on the pixel itself: nearest-neighbour x8
    up = RAFT.upsample_flow(flow, centre.view(2, 576, 3, 4))
    assert torch.allclose(up, 8 * flow.repeat_interleave(8, 2).repeat_interleave(8, 3))
    const = torch.ones(1, 2, 3, 4) * torch.tensor([1.5, -2.0]).view(1, 2, 1, 1)
    up = RAFT.upsample_flow(const, torch.zeros(1, 576, 3, 4))  # uniform weights
    assert torch.allclose(up[..., 8:16, 8:24], 8 * const[..., :1, :1].expand(-1, -1, 8, 16))


def test_bad_files_give_one_line_errors(model, tmp_path):
    with pytest.raises(RAFTWeightsError, match="raft_weights=PATH") as err:
        load_raft(tmp_path / "missing.pth")
    assert "\n" not in str(err.value) and "not found" in str(err.value)
    state = model.state_dict()
    bad = {k: v for k, v in state.items() if not k.startswith("update_block.mask.")}
    bad["update_block.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RAFTWeightsError, match="keys do not match") as err:
        load_raft(tmp_path / "bad.pth")
    assert "\n" not in str(err.value) and "update_block.mask.0.bias" in str(err.value)
    wrong = dict(state, **{"update_block.flow_head.conv2.bias": torch.zeros(3)})
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(RAFTWeightsError, match=r"conv2.bias has shape \(3,\), expected \(2,\)"):
        load_raft(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RAFTWeightsError, match="not a readable RAFT state dict"):
        load_raft(tmp_path / "junk.pth")
    with pytest.raises(RAFTWeightsError, match="raft_weights=PATH"):
        e_warp(torch.rand(2, 3, 16, 16), raft_weights=tmp_path / "missing.pth")


def test_e_warp_with_raft_runs_end_to_end(model, tmp_path):
    # random weights give flows of tens of pixels that fail the consistency check everywhere
    # (E_warp NaN); a damped flow head keeps them small so the masked average is exercised
    tame = copy.deepcopy(model)
    tame.update_block.flow_head.conv2.weight.data.mul_(1e-3)
    tame.update_block.flow_head.conv2.bias.data.zero_()
    torch.save(tame.state_dict(), tmp_path / "tame.pth")
    torch.manual_seed(4)
    video = torch.rand(3, 3, 40, 48)
    by_fn = e_warp(video, flow_fn=RAFTFlow(tame, iters=2), reduction="none")
    assert by_fn.shape == (2,) and by_fn.isfinite().all() and (by_fn >= 0).all()
    by_path = e_warp(video, raft_weights=tmp_path / "tame.pth", reduction="none")  # 12 iterations
    assert by_path.isfinite().all() and not torch.equal(by_path, by_fn)
    assert torch.equal(by_path, e_warp(video, flow_fn=RAFTFlow(tmp_path / "tame.pth"), reduction="none"))
    assert by_path.tolist() != e_warp(video, reduction="none").tolist()  # not the DIS default
    with pytest.raises(ValueError, match="not both"):
        e_warp(video, raft_weights=tmp_path / "tame.pth", flow_fn=RAFTFlow(tame))


def test_cli_eval_takes_raft_weights(pth, tmp_path, capsys):
    torch.manual_seed(5)
    frames = (torch.rand(4, 3, 32, 40) * 255).to(torch.uint8)
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        with VideoWriter(tmp_path / folder / "clip.mkv", 24.0, codec="ffv1") as writer:
            writer.write(frames)
    args = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "o"), "--raft-weights", str(pth)]) == 0
    capsys.readouterr()
    assert cli_main([*args, "--out", str(tmp_path / "o2"), "--raft-weights", str(tmp_path / "none.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--raft-weights" in err and "\n" not in err
    # the Ray job's scoring stage (python -m pipelines.evaluate --raft-weights)
    stage = ScoreStage(raft_weights=pth, threads=None)
    assert isinstance(stage.flow_fn, RAFTFlow)
    row = stage({"pred": [str(tmp_path / "pred" / "clip.mkv")], "gt": [str(tmp_path / "gt" / "clip.mkv")]})
    assert row["error"] == [""] and row["frames"] == [4.0]
    with pytest.raises(RAFTWeightsError):
        ScoreStage(raft_weights=tmp_path / "none.pth", threads=None)
