"""Process-level settings for CPU throughput, and memory readings for benchmarks.

**Thread policy.** torch's CPU build runs its parallel loops on OpenMP, whose threads by
default spin at every barrier. When another process (or the decoder's and encoder's threads,
or other Ray actors on the node) holds a core, each of the many short parallel ops waits for
the spinning thread's next time slice: measured 20x slower on 2 busy cores. The policy is
passive waiting (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``) and one intra-op thread per
core this process may use (CPU affinity and the cgroup quota, less ``reserve``). OpenMP reads
its wait policy once, when torch loads, so the policy must be set **before** ``import torch``::

    import spatialdreamer.runtime
    spatialdreamer.runtime.configure_cpu()   # first, before torch is imported
    import torch

or, without touching the code, in the environment: ``OMP_WAIT_POLICY=PASSIVE`` (and
``SPATIALDREAMER_THREADS=N`` for the thread count). Variables already set are respected;
``SPATIALDREAMER_THREAD_POLICY=default`` leaves OpenMP's defaults alone (to compare). The
``spatialdreamer`` command, the ``pipelines`` jobs (and their Ray workers, through
:func:`worker_env`) and the benchmarks apply it themselves; importing the library does not.

**Allocator.** The warp and the video stages allocate and free many frame-sized buffers per
frame. glibc returns every freed block above 128 KiB to the kernel, so each frame pays for
hundreds of thousands of page faults (measured: a 1080p warp took ~120 ms instead of ~65 ms
on 2 cores). Raising the mmap/trim thresholds keeps those pages in the heap
(:func:`tune_cpu_allocator`, also applied by :func:`configure_cpu`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "available_cpus",
    "configure_cpu",
    "peak_rss_mib",
    "run_overlapped",
    "tune_cpu_allocator",
    "worker_env",
]

log = logging.getLogger(__name__)

THREADS_ENV = "SPATIALDREAMER_THREADS"
POLICY_ENV = "SPATIALDREAMER_THREAD_POLICY"  # "default": leave OpenMP untouched (for comparisons)
# passive waiting for GNU OpenMP (torch's CPU wheels) and for Intel OpenMP (MKL builds)
_PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_configured: int | None = None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    cpus = _affinity_cpus()
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.5)))
    return max(1, cpus)


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cgroup_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            limit, period = f.read().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1 = "/sys/fs/cgroup/cpu/cpu.cfs_"
        with open(v1 + "quota_us") as quota, open(v1 + "period_us") as period_file:
            limit, period = int(quota.read()), int(period_file.read())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError):
        return None


def _threads_from_env() -> int | None:
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                log.warning("ignoring %s=%r: not a whole number", name, value)
                continue
            if n >= 1:
                return n
    return None


def configure_cpu(threads: int | None = None, *, reserve: int = 0) -> int:
    """Apply the thread policy (see the module docstring) to this process; returns the number
    of intra-op threads torch will use.

    Args:
        threads: intra-op threads; default ``SPATIALDREAMER_THREADS``, else ``OMP_NUM_THREADS``,
            else :func:`available_cpus` less ``reserve``.
        reserve: cores left to threads torch does not own (a decoder, an encoder), when
            ``threads`` is not given; at least one thread is kept.

    Call it before ``import torch``. Called later, it still sets the thread count but cannot
    change OpenMP's wait policy (a warning says so unless ``OMP_WAIT_POLICY`` was already set
    in the environment). Also applies :func:`tune_cpu_allocator`.

    Example:
        >>> import spatialdreamer.runtime as rt
        >>> rt.configure_cpu(threads=2)
        2
    """
    global _configured
    if os.environ.get(POLICY_ENV, "").lower() == "default":  # leave OpenMP as it is
        tune_cpu_allocator()
        _configured = _threads_from_env() or available_cpus()
        return _configured
    chosen = threads if threads is not None else _threads_from_env()
    if chosen is None:
        chosen = max(1, available_cpus() - max(0, int(reserve)))
    threads = max(1, int(chosen))
    torch_loaded = "torch" in sys.modules
    if torch_loaded and "OMP_WAIT_POLICY" not in os.environ and _configured is None:
        log.warning(
            "configure_cpu() was called after torch was imported: OpenMP keeps spinning at "
            "barriers, which is slow on a busy machine; call it before importing torch or set "
            "OMP_WAIT_POLICY=PASSIVE in the environment"
        )
    for name, value in _PASSIVE.items():
        os.environ.setdefault(name, value)
    # Exported only when it differs from OpenMP's own default (one per CPU of the affinity
    # mask): child processes inherit it, and Ray gives each worker its own count only when the
    # driver's environment has none.
    if threads != _affinity_cpus() or any(name in os.environ for name in _THREAD_VARS):
        for name in _THREAD_VARS:
            os.environ[name] = str(threads)
    if torch_loaded:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    _configured = threads
    tune_cpu_allocator()
    return threads


def worker_env() -> dict[str, str]:
    """Environment for Ray workers (``runtime_env={"env_vars": worker_env()}``): the passive
    wait policy, as set in this process. Ray itself sets each worker's ``OMP_NUM_THREADS`` to
    the CPUs its task or actor requested."""
    return {name: os.environ.get(name, value) for name, value in _PASSIVE.items()}


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed frame buffers in the heap (glibc only). Returns whether it took effect."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SPATIALDREAMER_NO_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    threshold = min(int(threshold_bytes), 2**31 - 1)
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    return _tuned


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; unlike ``ru_maxrss`` it is not
    inherited from the parent across ``exec``). Falls back to ``ru_maxrss`` off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


_END = object()


class _Stopped(Exception):
    pass


def run_overlapped(
    source: tuple[str, Iterable],
    stages: Sequence[tuple[str, Callable]],
    *,
    queue_size: int = 1,
    timings: dict[str, float] | None = None,
) -> None:
    """Run a chain of stages concurrently, one thread each, joined by bounded queues.

    ``source`` is ``(name, iterable)``; each stage ``(name, fn)`` maps the previous stage's
    items to its own, in order; the last stage's results are dropped. Item ``i + 1`` is
    produced while item ``i`` moves down the chain, so stages that release the GIL (decoding,
    encoding, OpenCV, torch, the compiled warp) use several cores; at most ``queue_size`` items
    wait between two stages, so memory stays bounded. ``timings[name]`` accumulates each
    stage's busy seconds (wall time inside it). The first exception raised anywhere stops every
    stage and is re-raised here once all threads have finished.

    Example:
        >>> out = []
        >>> run_overlapped(("numbers", range(3)), [("double", lambda x: 2 * x), ("keep", out.append)])
        >>> out
        [0, 2, 4]
    """
    source_name, iterable = source
    timings = {} if timings is None else timings
    for name in (source_name, *(name for name, _ in stages)):
        timings.setdefault(name, 0.0)
    links = [queue.Queue(maxsize=max(1, queue_size)) for _ in stages]
    failed = threading.Event()
    errors: list[BaseException] = []

    def put(link: queue.Queue, item) -> None:
        while not failed.is_set():
            try:
                link.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(link: queue.Queue):
        while not failed.is_set():
            try:
                return link.get(timeout=0.05)
            except queue.Empty:
                continue
        raise _Stopped

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    def produce() -> None:
        items = iter(iterable)
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    break
                finally:
                    timings[source_name] += time.perf_counter() - start
                put(links[0], item)
            put(links[0], _END)
        except _Stopped:
            pass
        except BaseException as exc:
            fail(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's files and decoders are released here, in its thread

    def work(index: int, name: str, fn: Callable) -> None:
        out = links[index + 1] if index + 1 < len(links) else None
        try:
            while (item := get(links[index])) is not _END:
                start = time.perf_counter()
                result = fn(item)
                timings[name] += time.perf_counter() - start
                if out is not None:
                    put(out, result)
            if out is not None:
                put(out, _END)
        except _Stopped:
            pass
        except BaseException as exc:
            fail(exc)

    threads = [threading.Thread(target=produce, name=f"spatialdreamer-{source_name}", daemon=True)]
    threads += [
        threading.Thread(target=work, args=(i, name, fn), name=f"spatialdreamer-{name}", daemon=True)
        for i, (name, fn) in enumerate(stages)
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
    except BaseException:  # e.g. KeyboardInterrupt in the caller: stop the stages, then re-raise
        failed.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]
