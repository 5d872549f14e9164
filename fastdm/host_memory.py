"""Keep freed host memory in the process for reuse (glibc's malloc), for CPU jobs.

Why: glibc serves every allocation above its mmap threshold (128 KB, rising to at most 32 MB)
with a fresh mmap and unmaps it when freed, so a CPU iteration's large activations are
zero-filled and page-faulted by the kernel anew each time. On the 2-core machine that was
0.7-0.8 s of system time in a 1.4 s MNIST ipc-50 iteration (about 300k page faults); with
mmap turned off (``mallopt(M_MMAP_MAX, 0)``: large blocks come from the heap, freed ones are
reused) the iteration took 1.04 s with 8k faults (benchmarks/RESULTS.md, issue 23). The cost:
the process keeps its peak heap instead of returning it to the system.

``FASTDM_HOST_MEMORY=system`` leaves malloc as it is. Process-wide and applied once, by the jobs
that run on the CPU (condensation's engine, evaluation); other allocators (jemalloc, tcmalloc
preloaded) and non-glibc systems are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

log = logging.getLogger("fastdm")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_lock = threading.Lock()
_state: dict = {}


def _why_not() -> str | None:
    if os.environ.get("FASTDM_HOST_MEMORY", "keep").strip().lower() == "system":
        return "FASTDM_HOST_MEMORY=system"
    if not sys.platform.startswith("linux"):
        return "not Linux"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(a in preload for a in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"another allocator is preloaded ({preload})"
    return None


def planned(device) -> str:
    """What a job on ``device`` does: 'kept' on the CPU where it can, else 'system: why'."""
    if getattr(device, "type", str(device)) != "cpu":
        return "system: not a CPU job"
    if "state" in _state:  # applied already: what it came to
        return _state["state"]
    why = _why_not()
    return "kept" if why is None else f"system: {why}"


def apply(device) -> str:
    """Make ``planned(device)`` so; returns what it came to."""
    plan = planned(device)
    return keep_freed_memory() if plan == "kept" else plan


def _libc_function(name: str):
    """glibc's ``name``; OSError or AttributeError where there is none."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)


def keep_freed_memory() -> str:
    """Turn glibc's mmap for large blocks off (once per process); returns 'kept' or
    'system: why'."""
    with _lock:
        if "state" in _state:
            return _state["state"]
        why = _why_not()
        if why is None:
            try:
                mallopt = _libc_function("mallopt")
            except (OSError, AttributeError):
                why = "no glibc mallopt"
            else:
                # 1 on success; a trim threshold of 1 GB keeps a freed peak for the next iteration
                if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, 1 << 30) != 1:
                    why = "mallopt refused"
        _state["state"] = "kept" if why is None else f"system: {why}"
        log.debug("host memory: %s", _state["state"])
        return _state["state"]


def release_freed() -> bool:
    """Hand the heap's free pages back to the system now (glibc ``malloc_trim(0)``), e.g. before
    measuring a resident set; False where there is no glibc."""
    try:
        trim = _libc_function("malloc_trim")
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
