"""Process-level settings for CPU throughput, and memory readings for benchmarks.

The warp and the video stages allocate and free many frame-sized buffers per frame. glibc
returns every freed block above 128 KiB to the kernel, so each frame pays for hundreds of
thousands of page faults (measured: a 1080p warp takes ~120 ms instead of ~65 ms on 2 cores).
Raising the mmap/trim thresholds keeps those pages in the heap. The CLI, the Ray jobs and
the benchmarks call :func:`tune_cpu_allocator` once at start; importing the library does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["peak_rss_mib", "tune_cpu_allocator"]

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
