"""Start or join Ray for the jobs: one place that reads the address and sets token authentication.

The corpus, training and evaluation jobs call :func:`connect` instead of ``ray.init``:

- no address (and ``RAY_ADDRESS`` unset or ``local``): a new embedded Ray on this machine, with
  token authentication on (Ray's own default for local clusters since 2.59, made explicit so
  Ray does not warn about it); Ray writes a token to ``~/.ray/auth_token`` if there is none;
- an address (``HEAD:6379``, or ``RAY_ADDRESS`` as set by ``ray job submit``): join that
  cluster. A cluster started with ``RAY_AUTH_MODE=token`` accepts only callers that send its
  token, and Ray sends one only when ``RAY_AUTH_MODE=token`` is set in the caller too. So when
  ``RAY_AUTH_MODE`` is unset and a token is at hand (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), the job turns token mode on; a cluster
  without authentication ignores the token.

An explicit ``RAY_AUTH_MODE`` (``token`` or ``disabled``) is always respected.

The workers get the CPU thread policy of :mod:`spatialdreamer.runtime`: an embedded Ray inherits
it from the environment it starts in, a cluster gets it as the job's ``runtime_env``.

:class:`RayNoiseFilter` keeps Ray's internal noise out of a job's terminal output (lines that
need no action from the user, and colour codes when the output goes to a file); ``-v`` shows
everything as Ray wrote it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ClusterConnectionError",
    "RayNoiseFilter",
    "auth_mode",
    "connect",
    "resolve_address",
    "token_source",
]

log = logging.getLogger(__name__)

LOCAL = "local"
_HOST_PORT = re.compile(r"[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+")
_TOKEN_HELP = (
    "put the cluster's token (`ray get-auth-token` on the head) in RAY_AUTH_TOKEN, "
    "in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token"
)


class ClusterConnectionError(RuntimeError):
    """The job could not start or join Ray; the message is one line for the user."""


def resolve_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``; ``None`` means a new embedded Ray.

    ``"local"`` (or an empty value) asks for an embedded Ray even when ``RAY_ADDRESS`` is set.
    """
    value = (address if address is not None else os.environ.get("RAY_ADDRESS", "")).strip()
    if value in ("", LOCAL):
        return None
    if value.startswith(("http://", "https://")):
        raise ClusterConnectionError(
            f"{value} is a dashboard (job submission) address: submit the job with "
            f"`ray job submit --address {value} --working-dir . -- python -m ...`, or set "
            "RAY_ADDRESS to the head's GCS address (HEAD:6379) to run the driver here"
        )
    return value


def token_source() -> str | None:
    """Where Ray would read the authentication token from, or ``None`` when there is none.

    Ray's order: ``RAY_AUTH_TOKEN``, then the file named by ``RAY_AUTH_TOKEN_PATH``, then
    ``~/.ray/auth_token``.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if named:  # Ray aborts on an unreadable or empty RAY_AUTH_TOKEN_PATH: say so first
        try:
            readable = bool(Path(named).expanduser().read_text().strip())
        except OSError:
            readable = False
        if not readable:
            raise ClusterConnectionError(f"RAY_AUTH_TOKEN_PATH={named} is not a readable, non-empty file")
        return f"RAY_AUTH_TOKEN_PATH ({named})"
    default = Path.home() / ".ray" / "auth_token"
    try:
        return str(default) if default.read_text().strip() else None
    except OSError:
        return None


def auth_mode(cluster: bool) -> str:
    """The ``RAY_AUTH_MODE`` a job runs with: the explicit setting, else ``token`` for an
    embedded Ray, else ``token`` when joining a cluster with a token at hand."""
    explicit = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if explicit:
        return explicit
    if not cluster or token_source():
        return "token"
    return "disabled"


def _apply_auth_mode(mode: str) -> None:
    """Set ``RAY_AUTH_MODE`` for this process and the processes it starts.

    Ray reads the mode once into its process-wide config, so a change after ``import ray`` only
    takes effect once that config is reloaded (as Ray's own ``ray start`` does).
    """
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, Config, get_authentication_mode

    wanted = AuthenticationMode.TOKEN if mode == "token" else AuthenticationMode.DISABLED
    os.environ["RAY_AUTH_MODE"] = mode
    if get_authentication_mode() != wanted:
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _auth_message(where: str, mode: str) -> str:
    if mode != "token":
        return f"{where} requires token authentication: set RAY_AUTH_MODE=token and {_TOKEN_HELP}"
    return f"{where} rejected the authentication token: {_TOKEN_HELP}"


def _probe(target: str, mode: str) -> None:
    """Ask the cluster's GCS once before ``ray.init``: a missing or wrong token fails here at once,
    and a head that does not answer within Ray's GCS timeout (40 s) too, whereas ``ray.init``
    retries (about 20 s on a wrong token, minutes on a silent head) and then reports only that it
    could not connect."""
    if not _HOST_PORT.fullmatch(target):  # ray://, auto: leave them to ray.init
        return
    import ray
    from ray._raylet import GcsClient

    try:
        GcsClient(address=target)
    except ray.exceptions.AuthenticationError as exc:
        raise ClusterConnectionError(_auth_message(f"the Ray cluster at {target}", mode)) from exc
    except ray.exceptions.RpcError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterConnectionError(f"could not reach the Ray cluster at {target}: {first}") from exc


def _with_thread_policy(runtime_env: dict | None) -> dict:
    """``runtime_env`` plus the workers' CPU thread policy (``spatialdreamer.runtime``), leaving
    out variables a submitted job already sets (Ray refuses to merge the same key twice)."""
    import json

    from spatialdreamer.runtime import worker_env

    runtime_env = dict(runtime_env or {})
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    mine = dict(runtime_env.get("env_vars") or {})
    runtime_env["env_vars"] = {k: v for k, v in worker_env().items() if k not in taken} | mine
    return runtime_env


@contextlib.contextmanager
def _inherited_env():
    """The workers' CPU thread policy in this process's environment while an embedded Ray starts:
    its raylet, and every worker the raylet starts, inherit it.

    Given as a job ``runtime_env`` instead, it left unused the workers Ray starts with the node
    (they have no runtime env, so they cannot serve the job's tasks): Ray Data booted new ones,
    each importing the stages again. Measured on 2 cores, 24 clips: 28-30 vs 33-34 CPU-s and
    16 vs 18-19 s. Variables already set are kept; the driver's environment is restored after.
    """
    from spatialdreamer.runtime import worker_env

    added = {k: v for k, v in worker_env().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def connect(address: str | None = None, *, local: dict | None = None, **init_kwargs: Any) -> ModuleType:
    """Start or join Ray once per process; returns the ``ray`` module.

    ``address`` overrides ``RAY_ADDRESS`` (``"local"`` = embedded); ``init_kwargs`` go to
    ``ray.init``; ``local`` too, but only when this starts an embedded Ray (settings such as
    ``_system_config`` that only a new cluster takes). Raises :class:`ClusterConnectionError`
    with a one-line message when the cluster rejects the token or cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return ray
    target = resolve_address(address)
    if target is None and local:
        init_kwargs = {**local, **init_kwargs}
    mode = auth_mode(cluster=target is not None)
    _apply_auth_mode(mode)
    if target is not None:
        source = token_source() if mode == "token" else None
        log.info("joining Ray at %s (auth %s%s)", target, mode, f", token from {source}" if source else "")
        _probe(target, mode)
    if target is None and "runtime_env" not in init_kwargs:
        inherited = _inherited_env()  # an embedded Ray's processes inherit this environment
    else:
        init_kwargs["runtime_env"] = _with_thread_policy(init_kwargs.get("runtime_env"))
        inherited = contextlib.nullcontext()
    try:
        with inherited:
            ray.init(address=target, **init_kwargs)
    except ray.exceptions.AuthenticationError as exc:
        where = f"the Ray cluster at {target}" if target else "the local Ray"
        raise ClusterConnectionError(_auth_message(where, mode)) from exc
    except ConnectionError as exc:
        if target is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterConnectionError(f"could not join the Ray cluster at {target}: {first}") from exc
    return ray


# Lines Ray prints on every healthy run that ask nothing of the user: Ray Data's actor pool
# warning about restartable actors (core_worker.cc); anything from Ray Train's placement-group
# cleaner (it polls a controller that has exited, and may dump a stack when Ray shuts it down);
# Ray Train's echo of every reported metric dict; and abseil's mutex debugging. (Ray Data's
# deprecation of ``**ray_remote_args`` is not filtered here: the corpus job silences it where it
# passes the retry settings Ray has no named parameter for, see pipelines/build_dataset.py.)
RAY_NOISE = re.compile(
    rb"core_worker\.cc:\d+\]?:.*max_restarts"
    rb"|^\(PlacementGroupCleaner pid=\d+"
    rb"|PlacementGroupCleaner.*Failed to query"
    rb"|Reporting training result \d+: TrainingReport\("
    rb"|\[mutex\.cc : \d+\] RAW: "
)
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LINE_END = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


class RayNoiseFilter:
    """While active, the process's standard error (file descriptor 2, so the C++ lines of Ray's
    core worker too) passes through a filter: :data:`RAY_NOISE` lines are dropped, and colour
    codes are removed when standard error is not a terminal (log files). Progress bars, which
    redraw a line with carriage returns, pass through as they come.

    ``verbose`` turns the filter off: everything is shown as Ray wrote it. Use it as a context
    manager around a job's work; ``dropped`` counts the lines left out. A Ray the job started
    inside the filter is shut down before it ends, so its shutdown messages are filtered too
    (a Ray that was already running is left alone).
    """

    def __init__(self, verbose: bool = False, fd: int = 2):
        self.verbose, self.fd = verbose, fd
        self.dropped = 0
        self._dropping = False
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RayNoiseFilter:
        self._ray_before = _ray_running()
        if self.verbose:
            return self
        sys.stderr.flush()
        self._saved = os.dup(self.fd)
        self._strip = not os.isatty(self._saved)
        read_end, write_end = os.pipe()
        os.dup2(write_end, self.fd)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="ray-noise")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        if _ray_running() and not self._ray_before:
            import ray

            ray.shutdown()
        sys.stderr.flush()
        os.dup2(self._saved, self.fd)  # closes the pipe's last write end: the pump sees the end
        self._thread.join(timeout=5)
        os.close(self._saved)
        self._saved = None

    def _emit(self, piece: bytes) -> None:
        text = _ANSI.sub(b"", piece).rstrip(b"\r\n")
        # a Python warning's source line follows it, indented: it goes with the warning
        follows = self._dropping and text[:1] in (b" ", b"\t")
        self._dropping = bool(RAY_NOISE.search(text))
        if self._dropping or follows:
            self.dropped += 1
            return
        os.write(self._saved, _ANSI.sub(b"", piece) if self._strip else piece)

    def _pump(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                ready, _, _ = select.select([pipe], [], [], 0.2)
                if not ready:  # a progress bar drawn without a line end: show it now
                    if pending:
                        self._emit(pending)
                        pending = b""
                    continue
                data = pipe.read(65536)
                if not data:
                    break
                pending += data
                end = 0
                for match in _LINE_END.finditer(pending):
                    self._emit(match.group())
                    end = match.end()
                pending = pending[end:]
        if pending:
            self._emit(pending)
