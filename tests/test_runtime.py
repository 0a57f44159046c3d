"""The CPU thread policy (spatialdreamer.runtime): set before torch loads, by every entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spatialdreamer import runtime

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "MKL_", "SPATIALDREAMER_"))
    }
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_policy_set_before_torch_loads_gives_passive_openmp_and_the_thread_count():
    code = (
        "import os, spatialdreamer.runtime as rt\n"
        "n = rt.configure_cpu(threads=1)\n"
        "import torch\n"
        "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], os.environ['KMP_BLOCKTIME'])"
    )
    assert _run(code) == "1 1 PASSIVE 0"


def test_environment_settings_are_respected():
    code = "import spatialdreamer.runtime as rt\nn = rt.configure_cpu()\nimport os, torch\n"
    code += "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
    assert _run(code, SPATIALDREAMER_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == "1 1 ACTIVE"
    assert _run(code, OMP_NUM_THREADS="1") == "1 1 PASSIVE"


def test_default_thread_count_is_the_usable_cores_less_the_reserve():
    code = "import spatialdreamer.runtime as rt\nprint(rt.configure_cpu(reserve=1), rt.available_cpus())"
    n, cpus = map(int, _run(code).split())
    assert n == max(1, cpus - 1)


def test_called_after_torch_it_still_sets_threads_and_warns_about_the_wait_policy():
    code = (
        "import logging; logging.basicConfig()\n"
        "import torch, spatialdreamer.runtime as rt\n"
        "rt.configure_cpu(threads=1)\n"
        "print(torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "1"
    assert "before importing torch" in out.stderr


def test_default_policy_switch_leaves_openmp_alone():
    code = "import os, spatialdreamer.runtime as rt\nrt.configure_cpu()\n"
    code += "print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(code, SPATIALDREAMER_THREAD_POLICY="default") == "None"


@pytest.mark.parametrize(
    "entry",
    ["import pipelines", "import pipelines.build_dataset", "from spatialdreamer.cli.main import main"],
)
def test_entry_points_set_the_policy_before_torch_loads(entry):
    """The jobs apply it on import, before any of them loads torch; the CLI's module loads no
    torch at import, so the policy call that opens ``main()`` comes first."""
    code = f"import os, sys\n{entry}\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    policy, torch_loaded = _run(code).split()
    if entry.startswith("from spatialdreamer.cli"):
        assert torch_loaded == "False"
    else:
        assert policy == "PASSIVE"


def test_ray_workers_get_the_wait_policy():
    env = runtime.worker_env()
    assert set(env) == {"OMP_WAIT_POLICY", "KMP_BLOCKTIME"}


def test_available_cpus_is_within_the_machine():
    assert 1 <= runtime.available_cpus() <= (os.cpu_count() or 1)


def test_overlapped_stages_keep_order_and_time_each_stage():
    out, timings = [], {}
    runtime.run_overlapped(
        ("numbers", iter(range(20))),
        [("square", lambda x: x * x), ("keep", out.append)],
        timings=timings,
    )
    assert out == [x * x for x in range(20)]
    assert set(timings) == {"numbers", "square", "keep"}


def test_overlapped_stages_reraise_the_first_error_and_close_the_source():
    closed = []

    def source():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    def boom(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        runtime.run_overlapped(("source", source()), [("boom", boom), ("sink", lambda x: None)])
    assert closed == [True]


def test_overlapped_stages_reraise_an_error_of_the_source():
    def source():
        yield 1
        raise OSError("truncated input")

    seen = []
    with pytest.raises(OSError, match="truncated"):  # items in flight are dropped: the run failed
        runtime.run_overlapped(("source", source()), [("sink", seen.append)])
    assert seen in ([], [1])


def test_default_count_is_not_exported_so_ray_can_size_each_worker():
    code = "import os, spatialdreamer.runtime as rt\nn = rt.configure_cpu()\nimport torch\n"
    code += "print(n == torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'), rt.available_cpus())"
    same, exported, cpus = _run(code).split()
    assert same == "True"
    assert exported == ("None" if int(cpus) == len(os.sched_getaffinity(0)) else cpus)
