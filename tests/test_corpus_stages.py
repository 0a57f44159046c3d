"""Corpus stages without Ray: config and input checks, clip splitting, bad input, shards, resume."""

from __future__ import annotations

import json
import random
import shutil

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.build_dataset import build, load_config, main
from spatialdreamer.corpus import (
    CorpusConfig,
    DepthDVGStage,
    build_in_process,
    list_sources,
    prepare_clips,
    rows_to_batch,
    split_video,
    write_clip_stage,
)
from spatialdreamer.corpus.batches import unpack_mask
from spatialdreamer.data import load_manifest, storage
from spatialdreamer.data.codecs import disparity_from_u16
from spatialdreamer.data.ids import video_id
from spatialdreamer.data.shards import SHARD_FILES, read_clip
from spatialdreamer.synth import iter_frames, random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video import VideoWriter
from spatialdreamer.video.clips import ClipSplitter, clip_ranges


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two good synth videos (160x96, 40 frames), a streamable MKV and one file per bad kind."""
    root = tmp_path_factory.mktemp("corpus_media")
    good = root / "good"
    paths = {
        f"good{s}": write_scene(random_spec(s, height=96, width=160, frames=40), good, f"g{s}").left
        for s in (0, 1)
    }
    bad = root / "bad"
    bad.mkdir()
    spec = random_spec(3, height=96, width=160, frames=40)
    mkv = bad / "stream.mkv"
    with VideoWriter(mkv, spec.fps) as writer:
        for frame in iter_frames(spec):
            writer.write(frame["left"][None])
    data = mkv.read_bytes()
    (bad / "truncated_stream.mkv").write_bytes(data[: len(data) // 2])
    mp4 = paths["good0"].read_bytes()
    (bad / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    with av.open(str(bad / "zero_frames.mkv"), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        container.start_encoding()
    mkv.unlink()
    return {"root": root, "good": good, "bad": bad, **paths}


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


# --- configuration ---------------------------------------------------------------------------


def test_shipped_configs_load_and_resources_do_not_change_the_hash():
    configs = {name: load_config(name) for name in ("default", "demo", "tiny")}
    assert configs["demo"].depth_model == "parallax"
    more = CorpusConfig.from_dict({**configs["tiny"].__dict__, "dvg_actors": [2, 4], "write_tasks": 8})
    assert more.content_hash() == configs["tiny"].content_hash()
    other = CorpusConfig.from_dict({**configs["tiny"].__dict__, "clip_length": 10})
    assert other.content_hash() != configs["tiny"].content_hash()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"clip_lenght": 8}, "unknown config keys: clip_lenght"),
        ({"clip_length": 4, "min_length": 6}, "min_length <= clip_length"),
        ({"width": 101}, "even and at least 16x16"),
        ({"budget_range": [5, 2]}, "budget_range"),
        ({"budget_range": "wide"}, "bad config value"),
        ({"convergence": 2.0}, "convergence"),
        ({"dvg_actors": [3, 1]}, "dvg_actors"),
        ({"stride": 0}, "stride >= 1"),
        ({"clip_length": 8.5}, "clip_length must be an integer"),
        ({"depth_model": " "}, "depth_model is empty"),
    ],
)
def test_bad_config_values_are_one_clear_error(values, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig.from_dict(values)


def test_config_by_name_path_and_errors(tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("clip_length: 6\nmin_length: 3\nstride: 6\nwidth: 64\nheight: 48\n")
    assert load_config(str(custom)).clip_length == 6
    assert load_config("tiny", {"depth_model": "some/model"}).depth_model == "some/model"
    with pytest.raises(FileNotFoundError, match="one of: default, demo"):
        load_config("nope")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(str(listed))
    broken = tmp_path / "broken.yaml"
    broken.write_text("clip_length: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(broken))


# --- listing sources -------------------------------------------------------------------------


def test_list_sources_from_folder_glob_and_single_file(media):
    folder = list_sources(str(media["good"]))
    assert [r["path"] for r in folder] == sorted(str(media[k]) for k in ("good0", "good1"))
    assert all(r["source"] == "good" and r["video_id"] == video_id(r["path"]) for r in folder)
    assert [r["path"] for r in list_sources(str(media["good"] / "g1*.mp4"))] == [str(media["good1"])]
    assert len(list_sources(str(media["good0"]))) == 1


def test_list_sources_from_csv_and_parquet_manifests(media, tmp_path):
    csv = tmp_path / "videos.csv"
    # relative paths resolve against the manifest's folder
    shutil.copytree(media["good"], tmp_path.parent / f"{tmp_path.name}_videos")
    relative = f"../{tmp_path.name}_videos/g0.mp4"
    csv.write_text(
        f"path,source,license,tags\n{relative},films,CC-BY,fast;night\n{media['good1']},,,\n{media['good1']},,,\n"
    )
    rows = list_sources(str(csv))
    assert len(rows) == 2  # duplicates dropped
    assert rows[0]["path"] == str(tmp_path.parent / f"{tmp_path.name}_videos" / "g0.mp4")
    assert (rows[0]["source"], rows[0]["license"], rows[0]["tags"]) == ("films", "CC-BY", ["fast", "night"])
    assert (rows[1]["source"], rows[1]["tags"]) == ("good", [])
    parquet = tmp_path / "videos.parquet"
    pq.write_table(pa.table({"path": [str(media["good0"])], "tags": [["a", "b"]]}), parquet)
    assert list_sources(str(parquet))[0]["tags"] == ["a", "b"]


def test_list_sources_errors(media, tmp_path):
    no_path = tmp_path / "bad.csv"
    no_path.write_text("file,source\na.mp4,x\n")
    with pytest.raises(ValueError, match="needs a 'path' column"):
        list_sources(str(no_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_sources(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="input manifest"):
        list_sources(str(tmp_path / "missing.csv"))
    with pytest.raises(FileNotFoundError, match="no videos"):
        list_sources(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_sources(str(tmp_path / "*.mp4"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read it as an input manifest"):
        list_sources(str(garbage))


# --- clip splitting ----------------------------------------------------------------------------


def test_streaming_splitter_makes_exactly_the_planned_clips():
    rng = random.Random(0)
    for _ in range(500):
        length = rng.randint(1, 9)
        stride, minimum, total = rng.randint(1, 12), rng.randint(1, length), rng.randint(0, 50)
        cuts = sorted(rng.sample(range(1, total), k=min(rng.randint(0, 4), total - 1))) if total > 1 else []
        splitter = ClipSplitter(length, stride, minimum)
        got = []
        for i in range(total):
            for clip in splitter.push(torch.tensor([i]), i / 24, i in cuts):
                assert clip.frames.flatten().tolist() == list(range(clip.start, clip.stop))
                assert len(splitter.buffer) <= length
                got.append((clip.shot, clip.start, clip.stop))
        got += [(c.shot, c.start, c.stop) for c in splitter.finish()]
        assert got == clip_ranges(cuts, total, length, stride, minimum), (
            length,
            stride,
            minimum,
            total,
            cuts,
        )


def test_split_video_resizes_to_training_size_and_ids_are_deterministic(media, tiny, tmp_path):
    row = list_sources(str(media["good0"]))[0]
    clips = list(split_video(row, str(tmp_path), tiny))
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(s, s + 8) for s in range(0, 40, 8)]
    assert clips[0]["frames"].shape == (8, 80, 128, 3) and clips[0]["frames"].dtype == np.uint8
    assert clips[0]["clip_id"] == f"{row['video_id']}-000000-000008"
    assert (clips[0]["source_width"], clips[0]["source_height"]) == (160, 96)
    record = json.loads((tmp_path / "_segments" / row["video_id"] / "0000.json").read_text())
    assert record["status"] == "complete" and record["frames"] == 40 and len(record["clips"]) == 5


# --- bad input -------------------------------------------------------------------------------

BAD = {
    "empty.mp4": ("probe", "file is empty"),
    "notes.mp4": ("probe", "not a readable video"),
    "zero_frames.mkv": ("probe", "zero frames"),
    "truncated.mp4": ("probe", "not a readable video"),
    "truncated_stream.mkv": ("decode", "truncated"),
    "missing.mp4": ("probe", "file not found"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_recorded_with_stage_and_reason(media, tiny, tmp_path, name):
    path = str(media["bad"] / name)
    row = {"path": path, "video_id": video_id(path), "source": "bad", "license": "", "tags": []}
    clips = list(split_video(row, str(tmp_path), tiny))
    failures = list((tmp_path / "_failures" / row["video_id"]).glob("*.json"))
    assert len(failures) == 1
    record = json.loads(failures[0].read_text())
    stage, reason = BAD[name]
    assert record["stage"] == stage and reason in record["error"] and record["path"] == path
    assert "\n" not in record["error"]
    # clips decoded before a mid-stream failure are kept; a rerun does not retry the failure
    # and hands on only the clips not yet written (here: none was written)
    assert len(clips) == (1 if name == "truncated_stream.mkv" else 0)
    again = [c["clip_id"] for c in split_video(row, str(tmp_path), tiny)]
    assert again == [c["clip_id"] for c in clips]
    assert len(list((tmp_path / "_failures" / row["video_id"]).glob("*.json"))) == 1


def _dvg(config, root, rows):
    """Prepare (scores, flow, rgb bytes) then depth + DVG, as the job chains them."""
    return DepthDVGStage(config, str(root), device="cpu")(
        prepare_clips(rows_to_batch(rows), str(root), config)
    )


def test_failing_clip_is_recorded_and_the_rest_of_the_batch_goes_on(media, tiny, tmp_path):
    row = list_sources(str(media["good0"]))[0]
    prepared = prepare_clips(
        rows_to_batch(list(split_video(row, str(tmp_path), tiny))[:2]), str(tmp_path), tiny
    )
    rows = [{key: values[i] for key, values in prepared.items()} for i in range(2)]
    rows[1]["frames"] = rows[1]["frames"][:, :, :0]  # zero-width frames: depth cannot run
    out = DepthDVGStage(tiny, str(tmp_path), device="cpu")(rows_to_batch(rows))
    assert list(out["clip_id"]) == [rows[0]["clip_id"]]
    failure = json.loads(
        (tmp_path / "_failures" / row["video_id"] / f"{rows[1]['clip_id']}.depth_dvg.json").read_text()
    )
    assert failure["clip_id"] == rows[1]["clip_id"] and failure["error"].startswith("ValueError")
    # the failed clip counts as accounted for: a rerun does not redo it
    again = [r["clip_id"] for r in split_video(row, str(tmp_path), tiny)]
    assert rows[0]["clip_id"] in again and rows[1]["clip_id"] not in again


# --- shards and the in-process build ----------------------------------------------------------


@pytest.fixture(scope="module")
def built(media, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    sources = list_sources(str(media["good"]))
    clips, frames = build_in_process(sources, str(root), tiny)
    return root, clips, frames


def test_shards_hold_lossless_masks_and_disparity(built, media, tiny, tmp_path):
    root, clips, frames = built
    assert (clips, frames) == (10, 80)
    # every clip packed: one tar per segment, the loose files and row records are gone
    assert not list((root / "_rows").rglob("*.json"))
    assert {p.suffix for p in (root / "shards").rglob("*") if p.is_file()} == {".tar"}
    record = load_manifest(str(root)).iloc[0].to_dict()
    assert {k for k in SHARD_FILES} <= set(record) and record["shard"].endswith(".tar")
    stored = read_clip(str(root), record)
    # recompute the clip's DVG output and compare what came back from the files
    source = list_sources(record["source_path"])[0]
    clip = next(c for c in split_video(source, str(tmp_path), tiny) if c["clip_id"] == record["clip_id"])
    fresh = _dvg(tiny, tmp_path, [clip])
    width = clip["frames"].shape[2]
    assert torch.equal(
        stored.back_holes[:, 0], torch.from_numpy(unpack_mask(fresh["back_holes_bits"][0], width))
    )
    assert torch.equal(
        stored.right_holes[:, 0], torch.from_numpy(unpack_mask(fresh["right_holes_bits"][0], width))
    )
    assert torch.equal(
        stored.disparity[:, 0], torch.from_numpy(disparity_from_u16(fresh["disparity_u16"][0]))
    )
    assert "frames" not in fresh and "flow_forward" not in fresh  # not handed on past the GPU stage
    rgb = torch.from_numpy(clip["frames"]).permute(0, 3, 1, 2).float() / 255
    psnr = -10 * torch.log10(((stored.rgb - rgb) ** 2).mean())
    assert stored.rgb.shape == rgb.shape and psnr > 38  # visually lossless
    assert 0 <= record["hole_ratio"] < 0.5 and record["disparity_p05"] <= record["disparity_p95"]


def test_write_stage_commits_the_row_only_after_all_shard_files(media, tiny, tmp_path, monkeypatch):
    row = list_sources(str(media["good1"]))[0]
    clip = next(iter(split_video(row, str(tmp_path), tiny)))
    batch = _dvg(tiny, tmp_path, [clip])
    import spatialdreamer.corpus.write as write

    def broken_lossless(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(write, "write_lossless", broken_lossless)
    out = write_clip_stage(batch, str(tmp_path), tiny)
    assert len(out["clip_id"]) == 0
    assert not (tmp_path / "_rows").exists()
    failure = json.loads(next((tmp_path / "_failures").rglob("*.write.json")).read_text())
    assert failure["error"] == "OSError: disk full"


def test_build_in_process_reruns_do_nothing_and_overwrite_redoes(media, tiny, tmp_path):
    root = str(tmp_path / "corpus")
    first = build(str(media["good"]), root, tiny, in_process=True)
    assert (first["clips_written"], first["clips_in_corpus"], first["failures"]) == (10, 10, 0)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "corpus").rglob("*") if p.is_file()}
    second = build(str(media["good"]), root, tiny, in_process=True)
    assert (second["videos_processed"], second["clips_written"], second["clips_in_corpus"]) == (0, 0, 10)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "corpus").rglob("*") if p.is_file()}
    changed = {p.name for p in before if after[p] != before[p]}
    assert changed == set()  # no shard, record, manifest part or job file rewritten
    third = build(str(media["good"]), root, tiny, in_process=True, overwrite=True)
    assert third["clips_written"] == 10
    again = load_manifest(root)
    assert len(again) == 10 and again["clip_id"].is_unique


def test_other_settings_on_an_existing_corpus_need_overwrite(media, tiny, tmp_path):
    root = str(tmp_path / "corpus")
    build(str(media["good1"]), root, tiny, in_process=True)
    changed = CorpusConfig.from_dict({**tiny.__dict__, "crf": 20})
    with pytest.raises(ValueError, match="built with other settings"):
        build(str(media["good1"]), root, changed, in_process=True)


def test_job_command_line_errors_are_one_line(media, tmp_path, capsys):
    cases = [
        (["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")], "does not exist"),
        (["--input", str(media["good"]), "--output", str(tmp_path / "o"), "--config", "nope"], "not found"),
    ]
    bad_csv = tmp_path / "list.csv"
    bad_csv.write_text("video\nx.mp4\n")
    cases.append((["--input", str(bad_csv), "--output", str(tmp_path / "o")], "'path' column"))
    bad_yaml = tmp_path / "cfg.yaml"
    bad_yaml.write_text("clip_length: 8\nspeed: fast\n")
    cases.append(
        (
            ["--input", str(media["good"]), "--output", str(tmp_path / "o"), "--config", str(bad_yaml)],
            "unknown config keys: speed",
        )
    )
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("build_dataset: error:") and message in err and "\n" not in err


def test_job_main_in_process_prints_the_summary(media, tmp_path, capsys):
    bad = tmp_path / "inputs.csv"
    bad.write_text(f"path\n{media['good1']}\n{media['bad'] / 'notes.mp4'}\n")
    code = main(["--input", str(bad), "--output", str(tmp_path / "c"), "--config", "tiny", "--in-process"])
    out = capsys.readouterr().out
    assert code == 0
    assert "videos_failed: 1" in out and "clips_in_corpus: 5" in out and "probe: 1" in out
    failures = load_manifest(str(tmp_path / "c"), table="failures")
    assert failures.loc[0, "path"] == str(media["bad"] / "notes.mp4") and pd.isna(failures.loc[0, "clip_id"])
    assert storage.exists(str(tmp_path / "c" / "_SUCCESS.json"))


def test_uri_input_and_output(media, tiny, tmp_path):
    """Inputs and outputs given as URIs go through pyarrow filesystems (file:// here)."""
    root = f"file://{tmp_path}/corpus"
    summary = build(f"file://{media['good']}", root, tiny, in_process=True)
    assert summary["clips_in_corpus"] == 10 and summary["failures"] == 0
    clips = load_manifest(root)
    assert clips.source_path.str.startswith("file://").all() and set(clips.source) == {"good"}
    assert (tmp_path / "corpus" / clips.shard.iloc[0]).is_file()
    assert build(f"file://{media['good']}", root, tiny, in_process=True)["videos_processed"] == 0
