"""The command line as a user meets it: -v anywhere, --help instant and complete, Ray's noise kept
out of the jobs' output, the configs inside the wheel."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from pipelines import build_dataset, evaluate, train
from spatialdreamer.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser a user can reach: the jobs', the command's and each subcommand's."""
    found = {}

    def job_parser(module) -> argparse.ArgumentParser:
        if hasattr(module, "build_parser"):
            return module.build_parser()
        captured = {}

        def stop(self, *args, **kwargs):
            captured["parser"] = self
            raise SystemExit(0)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", stop)
            with pytest.raises(SystemExit):
                module.main([])
        return captured["parser"]

    for module in (build_dataset, evaluate, train):
        found[module.__name__] = job_parser(module)
    top = cli.build_parser()
    found["spatialdreamer"] = top
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    found.update({f"spatialdreamer {name}": parser for name, parser in sub.choices.items()})
    return found


def test_every_option_has_help_and_its_default_is_shown():
    for name, parser in _parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
                continue
            what = f"{name}: {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help"
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action).lower(), f"{what}: default not shown"
    text = " ".join(build_dataset.build_parser().format_help().split())
    assert "or a YAML path (default: default)" in text


@pytest.mark.parametrize(
    "argv",
    [["-v", "manifest", "c"], ["manifest", "-v", "c"], ["manifest", "c", "--verbose"]],
)
def test_verbose_is_taken_before_or_after_the_subcommand(argv):
    assert cli.build_parser(argv).parse_args(argv).verbose is True
    plain = [a for a in argv if a not in ("-v", "--verbose")]
    assert cli.build_parser(plain).parse_args(plain).verbose is False


def test_help_loads_neither_torch_nor_ray():
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from pipelines import build_dataset, evaluate, train
        from spatialdreamer.cli import main as cli
        for run in (build_dataset.main, evaluate.main, train.main, cli.main):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                run(["--help"])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli.main(["manifest", "--help"])
        heavy = sorted(m for m in ("torch", "ray", "pandas", "diffusers") if m in sys.modules)
        print("loaded:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("loaded: []"), out.stdout + out.stderr


def test_the_corpus_job_offers_only_corpus_configs():
    assert build_dataset.corpus_configs() == ["default", "demo", "tiny"]
    with pytest.raises(FileNotFoundError, match="one of: default, demo, tiny"):
        build_dataset.load_config("eval")
    with pytest.raises(FileNotFoundError, match="one of: default, demo, tiny"):
        build_dataset.load_config("train_tiny")


_NOISY = textwrap.dedent(
    """
    import os, sys
    from pipelines.ray_session import RayNoiseFilter
    with RayNoiseFilter(verbose="-v" in sys.argv):
        os.write(2, b"[2026-11-29 20:29:10,363 E 1 1] core_worker.cc:2465: Actor with class name: "
                    b"'MapWorker' has constructor arguments in the object store and max_restarts > 0.\\n")
        os.write(2, b"\\x1b[36m(TrainController pid=5)\\x1b[0m PlacementGroupCleaner: Failed to query\\n")
        os.write(2, b"\\x1b[36m(PlacementGroupCleaner pid=5)\\x1b[0m *** SIGABRT received ***\\n")
        os.write(2, b"(RayTrainWorker pid=6) Reporting training result 1: TrainingReport(metrics={})\\n")
        os.write(2, b"(RayTrainWorker pid=6) [mutex.cc : 452] RAW: Lock blocking 0x55fa\\n")
        os.write(2, b"(RayTrainWorker pid=6) step 5/10 loss 1.04\\n")
        os.write(2, b"\\x1b[36m(pid=7)\\x1b[0m a warning the user needs\\n")
        os.write(2, b"\\r 50%|#   | 1/2")
        os.write(2, b"\\r100%|####| 2/2\\n")
        print("python line", file=sys.stderr)
    print("after", file=sys.stderr)
    """
)


def test_ray_noise_is_filtered_from_the_jobs_output_and_kept_with_verbose():
    quiet = subprocess.run([sys.executable, "-c", _NOISY], cwd=ROOT, capture_output=True, check=True).stderr
    expected = (
        "(RayTrainWorker pid=6) step 5/10 loss 1.04\n(pid=7) a warning the user needs\n"
        "\r 50%|#   | 1/2\r100%|####| 2/2\npython line\nafter\n"
    )
    assert quiet.decode() == expected
    loud = subprocess.run([sys.executable, "-c", _NOISY, "-v"], cwd=ROOT, capture_output=True, check=True)
    text = loud.stderr.decode()
    assert "max_restarts" in text and "PlacementGroupCleaner" in text
    assert "\x1b[36m(pid=7)" in text  # as Ray wrote it


def test_the_wheel_carries_the_job_configs(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("spatialdreamer", "pipelines"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"pipelines/configs/{p.name}" for p in (ROOT / "pipelines" / "configs").glob("*.yaml")}
    assert configs and configs <= names


def test_convert_says_it_is_loading_the_model_before_the_first_frame(tmp_path, capsys, monkeypatch):
    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    video = write_scene(random_spec(0, height=48, width=64, frames=6), tmp_path, "clip").left
    monkeypatch.setattr(cli, "_interactive", lambda: True)  # a terminal
    code = cli.main(["convert", str(video), str(tmp_path / "out.mp4"), "--depth-model", "parallax"])
    err = capsys.readouterr().err
    assert code == 0 and err.startswith("loading depth model parallax ...\n")
    assert "frame/s" in err  # the bar shows the speed (and the time left)
    monkeypatch.setattr(cli, "_interactive", lambda: False)  # a log file: errors stay one line
    assert (
        cli.main(
            ["convert", str(tmp_path / "none.mp4"), str(tmp_path / "o.mp4"), "--depth-model", "parallax"]
        )
        == 1
    )
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_demo_conversion_can_be_run_again(tmp_path):
    """``make demo`` run twice: the second run replaces the demo's own stereo output instead of
    stopping at it (user outputs are kept unless -y; the demo's are its own)."""
    from spatialdreamer.cli.demo import _demo_stereo
    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    video = write_scene(random_spec(0, height=48, width=64, frames=6, fps=12.0), tmp_path, "clip").left
    first = _demo_stereo(video, tmp_path / "stereo")
    second = _demo_stereo(video, tmp_path / "stereo")
    assert second.output == first.output and second.frames == first.frames == 6
