"""How the jobs start or join Ray (pipelines.ray_session), and token authentication in infra/.

Fast checks of the rules; tests/test_cluster.py runs them against a real two-node cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipelines.ray_session import ClusterConnectionError, auth_mode, resolve_address, token_source

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


@pytest.fixture
def clean_auth(monkeypatch, tmp_path):
    """No Ray address or auth settings of the caller's, and a HOME without a token."""
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("argument", "env", "expected"),
    [
        (None, None, None),
        (None, "", None),
        (None, "local", None),
        (None, "head:6379", "head:6379"),
        ("local", "head:6379", None),  # the caller's "local" wins over RAY_ADDRESS
        ("10.0.0.5:6379", "head:6379", "10.0.0.5:6379"),
    ],
)
def test_address_comes_from_the_argument_then_ray_address(clean_auth, monkeypatch, argument, env, expected):
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert resolve_address(argument) == expected


def test_a_dashboard_address_says_to_use_job_submit(clean_auth, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    with pytest.raises(
        ClusterConnectionError, match=r"dashboard .*ray job submit --address http://head:8265"
    ):
        resolve_address()


def test_token_sources_in_rays_order(clean_auth, monkeypatch):
    assert token_source() is None
    default = clean_auth / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("\n")  # empty: no token
    assert token_source() is None
    default.write_text("abc\n")
    assert token_source() == str(default)
    named = clean_auth / "cluster_token"
    named.write_text("def")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert token_source() == f"RAY_AUTH_TOKEN_PATH ({named})"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ghi")
    assert token_source() == "RAY_AUTH_TOKEN"


def test_an_unreadable_token_path_is_a_one_line_error(clean_auth, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_auth / "missing"))
    with pytest.raises(ClusterConnectionError, match=r"^RAY_AUTH_TOKEN_PATH=.*missing is not a readable"):
        token_source()


def test_auth_mode(clean_auth, monkeypatch):
    assert auth_mode(cluster=False) == "token"  # embedded: Ray's default, made explicit (no warning)
    assert auth_mode(cluster=True) == "disabled"  # joining without a token: nothing to send
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert auth_mode(cluster=True) == "token"  # joining with a token at hand: send it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_mode(cluster=False) == auth_mode(cluster=True) == "disabled"  # explicit wins


def test_a_local_run_starts_ray_with_token_auth_and_no_warning(tmp_path):
    """Plain ray.init() on Ray >= 2.59 warns that it turned token authentication on; the jobs don't."""
    code = (
        "from pipelines.ray_session import connect\n"
        "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
        "ray = connect(num_cpus=1, include_dashboard=False)\n"
        "assert ray.get(ray.remote(lambda: 7).remote()) == 7\n"
        "print('token mode:', get_authentication_mode() == AuthenticationMode.TOKEN)\n"
        "ray.shutdown()\n"
    )
    result = _run_fresh_ray(code, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "token mode: True" in result.stdout
    assert "Token authentication" not in output, output[-3000:]
    assert (tmp_path / ".ray" / "auth_token").read_text().strip()  # Ray made the local token


def test_connect_applies_local_settings_only_to_an_embedded_ray(clean_auth, monkeypatch):
    import ray

    from pipelines import ray_session

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray_session, "_apply_auth_mode", lambda mode: None)
    monkeypatch.setattr(ray_session, "_probe", lambda target, mode: None)
    local = {"_system_config": {"idle_worker_killing_time_threshold_ms": 5}}
    ray_session.connect("local", local=local, num_cpus=2)
    ray_session.connect("head:6379", local=local)
    assert calls[0]["_system_config"] == local["_system_config"] and calls[0]["num_cpus"] == 2
    assert calls[1]["address"] == "head:6379" and "_system_config" not in calls[1]


def test_the_corpus_jobs_embedded_ray_keeps_idle_workers(tmp_path):
    """Ray kills a worker idle for 1 s once there are more workers than CPUs; the corpus job's
    embedded Ray keeps them, so its task workers import torch once, not at every burst of tasks."""
    code = (
        "import os, time\n"
        "from pipelines.build_dataset import _init_ray\n"
        "ray = _init_ray('local', num_cpus=1, log_to_driver=False)\n"
        "task = ray.remote(num_cpus=0.25)(lambda: time.sleep(2) or os.getpid())\n"
        "pids = set(ray.get([task.remote() for _ in range(4)]))\n"
        "time.sleep(5)\n"
        "def alive(pid):\n"
        "    try:\n"
        "        return os.kill(pid, 0) is None\n"
        "    except OSError:\n"
        "        return False\n"
        "print('workers', len(pids), 'alive', sum(map(alive, pids)))\n"
        "ray.shutdown()\n"
    )
    result = _run_fresh_ray(code, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("workers"))
    workers, alive = (int(word) for word in line.split()[1::2])
    assert workers >= 2 and alive == workers, result.stdout


def test_an_embedded_rays_workers_inherit_the_thread_policy_and_the_prestarted_one_serves(tmp_path):
    """The thread policy reaches an embedded Ray's workers through the environment, not a job
    runtime env: the worker Ray starts with the node then serves the job's first task (with a
    runtime env it idled while a new process booted and imported the stages again)."""
    code = (
        "import os, time\n"
        "from pathlib import Path\n"
        "from pipelines.ray_session import connect\n"
        "ray = connect('local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "def idle_workers():\n"
        "    found = set()\n"
        "    for entry in Path('/proc').iterdir():\n"
        "        try:\n"
        "            if entry.name.isdigit() and (entry / 'cmdline').read_bytes().startswith(b'ray::IDLE'):\n"
        "                found.add(int(entry.name))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return found\n"
        "deadline = time.monotonic() + 60\n"
        "while not idle_workers() and time.monotonic() < deadline:\n"
        "    time.sleep(0.2)\n"
        "before = idle_workers()\n"
        "env = os.environ.get\n"
        "task = ray.remote(lambda: (os.getpid(), env('OMP_WAIT_POLICY'), env('KMP_BLOCKTIME')))\n"
        "pid, policy, blocktime = ray.get(task.remote())\n"
        "print('policy', policy, blocktime, 'prestarted', pid in before)\n"
        "ray.shutdown()\n"
    )
    result = _run_fresh_ray(code, tmp_path, drop=("OMP_WAIT_POLICY", "KMP_BLOCKTIME"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("policy"))
    assert line == "policy PASSIVE 0 prestarted True", line


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize(("name", "key"), [("raycluster.yaml", None), ("rayjob.yaml", "rayClusterSpec")])
def test_kuberay_clusters_use_token_auth(name, key):
    document = yaml.safe_load((INFRA / "kuberay" / name).read_text())
    spec = document["spec"][key] if key else document["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    # the operator sets the mode and token itself: a hand-set value would fight it
    for container in _containers(spec):
        assert not {e["name"] for e in container.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


def test_launcher_gives_every_node_the_token_and_token_mode():
    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key


def _run_fresh_ray(code: str, home, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with no RAY_ variables (nor those in ``drop``), ``home`` as
    HOME and its own short Ray temp folder (Ray's socket paths are limited), removed afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in drop}
    scratch = tempfile.mkdtemp(prefix="sdl-", dir="/tmp")
    env.update(HOME=str(home), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=scratch)
    try:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=home, capture_output=True, text=True, timeout=300
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
