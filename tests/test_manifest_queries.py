"""The corpus manifest as users see it: load_manifest, pandas queries, compaction, the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines.build_dataset import build, load_config
from spatialdreamer.cli.main import main as cli
from spatialdreamer.corpus import list_sources
from spatialdreamer.data import CLIP_SCHEMA, FAILURE_SCHEMA, load_manifest, summarize_manifest
from spatialdreamer.data.manifest import compact_table
from spatialdreamer.synth import random_spec
from spatialdreamer.synth.videos import write_scene


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three synth videos from two sources plus one broken file, built in-process."""
    root = tmp_path_factory.mktemp("manifest")
    videos = root / "videos"
    for seed in range(3):
        write_scene(random_spec(seed, height=80, width=128, frames=24), videos, f"s{seed}")
    (videos / "broken.mp4").write_bytes(b"\x00" * 1000)
    listing = root / "inputs.csv"
    listing.write_text(
        "path,source,license,tags\n"
        "videos/s0.mp4,films,CC-BY,night;fast\n"
        "videos/s1.mp4,films,CC-BY,day\n"
        "videos/s2.mp4,shorts,CC0,\n"
        "videos/broken.mp4,shorts,CC0,\n"
    )
    out = root / "corpus"
    build(str(listing), str(out), load_config("tiny"), in_process=True)
    return out


def test_manifest_has_the_documented_schema_one_row_per_clip(corpus):
    clips = load_manifest(str(corpus))
    assert list(clips.columns) == [*CLIP_SCHEMA.names, "duplicate_of"]
    assert len(clips) == 9 and clips["clip_id"].is_unique
    assert list(clips["clip_id"]) == sorted(clips["clip_id"])
    assert set(clips["source"]) == {"films", "shorts"} and set(clips["license"]) == {"CC-BY", "CC0"}
    first = clips.iloc[0]
    assert first.end_frame - first.start_frame == first.num_frames == 8
    assert first.duration == pytest.approx(8 / first.fps)
    assert str(clips["created_time"].dtype).startswith("datetime64") and first.depth_model == "parallax"
    assert (clips.disparity_p05 <= clips.disparity_p50).all() and (
        clips.disparity_p50 <= clips.disparity_p95
    ).all()
    assert clips.config_hash.nunique() == 1


def test_load_manifest_from_root_folder_part_and_uri(corpus):
    whole = load_manifest(str(corpus))
    pd.testing.assert_frame_equal(load_manifest(str(corpus / "manifest")), whole)
    pd.testing.assert_frame_equal(load_manifest(f"file://{corpus}"), whole)
    part = next((corpus / "manifest").glob("*/part-*.parquet"))  # manifest/<video_id>/part-<segment>
    one = load_manifest(str(part))
    assert set(one["video_id"]) == {part.parent.name} and len(one) == 3


def test_documented_pandas_queries(corpus):
    df = load_manifest(str(corpus))
    calm = df[(df.hole_ratio < df.hole_ratio.median()) & (df.motion_score < df.motion_score.max())]
    assert 0 < len(calm) < len(df)
    assert len(df[df.source == "films"]) == 6
    assert len(df[df.tags.map(lambda tags: "night" in tags)]) == 3
    per_source = df.groupby("source")["duration"].sum()
    assert per_source["films"] == pytest.approx(2 * per_source["shorts"])
    assert df.sort_values("hole_ratio").iloc[0].hole_ratio == df.hole_ratio.min()
    paths = (str(corpus) + "/" + df["rgb_path"]).tolist()
    assert all(pd.Series(paths).map(lambda p: p.endswith("rgb.mp4")))


def test_columns_and_filters_are_pushed_down(corpus):
    full = load_manifest(str(corpus))
    cut = float(full.hole_ratio.median())
    some = load_manifest(str(corpus), columns=["clip_id", "hole_ratio"], filters=[("hole_ratio", "<", cut)])
    assert list(some.columns) == ["clip_id", "hole_ratio"]
    assert list(some.clip_id) == list(full[full.hole_ratio < cut].clip_id)
    with pytest.raises(ValueError, match="unknown clips columns: holes"):
        load_manifest(str(corpus), columns=["holes"])


def test_failures_table(corpus, tmp_path):
    failures = load_manifest(str(corpus), table="failures")
    assert list(failures.columns) == FAILURE_SCHEMA.names
    assert len(failures) == 1 and failures.iloc[0].stage == "probe"
    assert failures.iloc[0].path.endswith("broken.mp4") and "not a readable video" in failures.iloc[0].error
    with pytest.raises(ValueError, match="table must be one of"):
        load_manifest(str(corpus), table="shards")
    with pytest.raises(FileNotFoundError, match="no clips table"):
        load_manifest(str(tmp_path))


def test_a_corpus_without_failures_has_an_empty_failures_table(corpus, tmp_path):
    clean = tmp_path / "clean"
    build(str(corpus.parent / "videos" / "s2.mp4"), str(clean), load_config("tiny"), in_process=True)
    failures = load_manifest(str(clean), table="failures")
    assert len(failures) == 0 and list(failures.columns) == FAILURE_SCHEMA.names
    assert "failures: 0" in summarize_manifest(load_manifest(str(clean)), failures)


def test_failures_compaction_rewrites_only_stale_parts_and_drops_empty_ones(corpus, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    parts = sorted((copy / "failures").glob("part-*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    assert compact_table(str(copy), "failures") == 1
    assert all(p.stat().st_mtime_ns == stamps[p] for p in parts)  # up to date: untouched
    with pytest.raises(ValueError, match="only the failures table"):
        compact_table(str(copy), "clips")  # clips are packed by the job, never compacted
    shutil.rmtree(copy / "_failures")
    assert compact_table(str(copy), "failures") == 0
    assert not list((copy / "failures").glob("*.parquet"))


def test_each_failures_part_is_written_by_its_videos_pack_task_and_a_lost_one_is_redone(
    corpus, tmp_path, monkeypatch
):
    import spatialdreamer.data.manifest as manifest_module

    def whole_table(*args, **kwargs):
        raise AssertionError("the driver compacted the whole failures table")

    monkeypatch.setattr(manifest_module, "compact_table", whole_table)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("s2.mp4", "broken.mp4"):
        shutil.copy(corpus.parent / "videos" / name, videos / name)
    (videos / "._s2.mp4").write_bytes(b"\x00" * 10)  # not a video: found by the listing
    out = tmp_path / "corpus"
    first = build(str(videos), str(out), load_config("tiny"), in_process=True)
    parts = sorted(p.name for p in (out / "failures").glob("part-*.parquet"))
    failures = load_manifest(str(out), table="failures")
    assert parts == sorted(f"part-{vid}.parquet" for vid in failures.video_id)
    assert sorted(failures.stage) == ["list", "probe"] and first["failures"] == 2
    # a job killed after packing a video but before writing its failures part: the rerun redoes
    # that step alone (the video is not done until its part holds all its records)
    broken = failures.loc[failures.stage == "probe", "video_id"].iloc[0]
    (out / "failures" / f"part-{broken}.parquet").unlink()
    again = build(str(videos), str(out), load_config("tiny"), in_process=True)
    assert (again["videos_processed"], again["clips_written"], again["failures"]) == (1, 0, 2)
    pd.testing.assert_frame_equal(load_manifest(str(out), table="failures"), failures)


def test_retry_failed_forgets_failures_and_tries_again(corpus, tmp_path):
    videos = corpus.parent / "videos"
    inputs = tmp_path / "inputs.csv"
    inputs.write_text(f"path\n{videos / 's2.mp4'}\n{videos / 'broken.mp4'}\n")
    out = str(tmp_path / "corpus")
    first = build(str(inputs), out, load_config("tiny"), in_process=True)
    assert (first["videos_processed"], first["failures"]) == (2, 1)
    plain = build(str(inputs), out, load_config("tiny"), in_process=True)
    assert plain["videos_processed"] == 0  # a recorded failure is not retried by default
    again = build(str(inputs), out, load_config("tiny"), in_process=True, retry_failed=True)
    assert (again["videos_processed"], again["clips_written"], again["failures"]) == (1, 0, 1)


def test_manifest_command_prints_summary_query_and_failures(corpus, capsys):
    assert cli(["manifest", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "clips: 9 from 3 videos, 72 frames" in out and "failures: 1 (1 whole videos, 0 clips)" in out
    assert "sources: films (6), shorts (3)" in out and "last build: 4 videos (1 failed)" in out
    assert cli(["manifest", str(corpus), "--query", "source == 'shorts'", "--failures"]) == 0
    out = capsys.readouterr().out
    assert "query \"source == 'shorts'\": 3 of 9 clips" in out and "broken.mp4" in out


def test_manifest_command_errors_are_one_line(corpus, tmp_path, capsys):
    assert cli(["manifest", str(tmp_path / "none")]) == 1
    assert cli(["manifest", str(corpus), "--query", "hole_ratio <"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("spatialdreamer manifest: error: no clips table")
    assert errors[1].startswith("spatialdreamer manifest: error: bad --query")
    assert "the columns are: clip_id, video_id," in errors[1] and "hole_ratio" in errors[1]


def test_failure_reasons_are_never_cut_mid_word(corpus, tmp_path, capsys):
    from spatialdreamer.corpus import record_failure

    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    reason = "a very long reason " + " ".join(f"word{i:03d}" for i in range(40))
    record_failure(str(root), str(root / "elsewhere.mp4"), "decode", reason)
    compact_table(str(root), "failures")
    failures = load_manifest(str(root), table="failures")
    summary = summarize_manifest(load_manifest(str(root)), failures)
    (example,) = [line for line in summary.splitlines() if line.startswith("  decode:")]
    shown = example.split("e.g. ", 1)[1]
    assert shown.endswith(" ...") and all(word in reason.split() for word in shown[:-4].split())
    assert cli(["manifest", str(root), "--failures", "--head", "20"]) == 0
    assert reason in capsys.readouterr().out  # the listing shows reasons in full


README = Path(__file__).resolve().parents[1] / "manifests" / "README.md"


def test_schema_doc_lists_every_column():
    text = README.read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    assert set(CLIP_SCHEMA.names) <= documented
    assert set(FAILURE_SCHEMA.names) <= documented


def test_schema_doc_queries_run_on_a_real_corpus(corpus):
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(block.replace('"corpus/"', repr(f"{corpus}/")), namespace)  # noqa: S102 - our own doc
    df = namespace["df"]
    assert len(df) == 9 and len(namespace["films"]) == 6 and len(namespace["night"]) == 3
    assert len(namespace["open_licensed"]) == 9
    assert set(namespace["per_source"].index) == {"films", "shorts"}
    assert list(namespace["slim"].columns) == ["clip_id", "shard", "hole_ratio"]
    assert namespace["clip"].rgb.shape[0] == df.num_frames.iloc[0] and len(namespace["unique"]) == 9
    assert namespace["by_stage"].to_dict() == {"probe": 1}


def test_example_input_manifest_lists_its_videos():
    rows = list_sources(str(README.parent / "example_inputs.csv"))
    assert len(rows) == 4 and all(r["path"].startswith("s3://my-bucket/videos/") for r in rows)
    assert rows[3]["tags"] == ["fast-motion", "occlusion", "handheld"] and rows[0]["source"] == "films"
