"""Worker threads whose torch ops run inline, without an OpenMP team of their own.

With torch's OpenMP backend, a parallel op run from a thread other than the main one makes
libgomp start a second team for that thread. Once OpenMP threads outnumber the cores, libgomp
stops spinning between parallel regions (its throttled spin count), so every later parallel
region of the main thread pays for waking a sleeping worker. On the 2-core development machine
one index_select in a worker thread made a 10 x 10 Cholesky in the main thread take 187 instead
of 22 us, and NCFM's objective 1.5x longer inside the engine (benchmarks/RESULTS.md).

fastdm's worker threads that call torch (the real-image stream's gatherers) start with
``one_thread()``: their OpenMP thread count is set to 1, so ATen runs their ops inline and
no team is made. It applies to the calling thread only (OpenMP's per-thread setting).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger("fastdm")


@functools.cache
def _setters() -> tuple:
    """omp_set_num_threads of every OpenMP runtime loaded in this process (a process may hold
    two: torch's and a system one), torch's own first."""
    import torch
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return ()
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        paths = set()
    own = os.path.dirname(torch.__file__)
    fns = []
    for path in sorted(paths, key=lambda p: (not p.startswith(own), p)):
        try:
            fns.append(ctypes.CDLL(path).omp_set_num_threads)
        except (OSError, AttributeError):
            continue
    return tuple(fns)


def one_thread() -> None:
    """This thread's torch ops run inline (OpenMP thread count 1 for this thread only)."""
    import torch
    if torch.get_num_threads() == 1:  # (also ATen's per-thread initialisation, which would
        return                        # set the count back if it came after)
    for fn in _setters():
        fn(1)
        if torch.get_num_threads() == 1:  # the runtime torch runs on (another one's setting
            return                        # is harmless: this thread runs none of its teams)
    _warn_once()


@functools.cache
def _warn_once() -> None:
    log.warning("fastdm: could not give worker threads one OpenMP thread (torch's OpenMP "
                "runtime not found); their torch ops keep teams of their own, which slows the "
                "main thread's small ops")
