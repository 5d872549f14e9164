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
import logging

log = logging.getLogger("fastdm")
_setter: list = []   # [omp_set_num_threads or None], looked up once


def _omp_set_num_threads():
    """The omp_set_num_threads of the OpenMP runtime torch's ATen runs on, or None."""
    if not _setter:
        import torch
        fn = None
        if "parallel backend: OpenMP" in torch.__config__.parallel_info():
            try:
                with open("/proc/self/maps") as f:
                    paths = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
            except OSError:
                paths = set()
            for path in sorted(paths):
                try:
                    fn = ctypes.CDLL(path).omp_set_num_threads
                    break
                except (OSError, AttributeError):
                    continue
            if fn is None:
                log.warning("fastdm: torch's OpenMP runtime was not found in this process; worker "
                            "threads keep their own OpenMP teams (slower small ops on the main "
                            "thread)")
        _setter.append(fn)
    return _setter[0]


def one_thread() -> None:
    """This thread's torch ops run inline (OpenMP thread count 1 for this thread only)."""
    import torch
    torch.get_num_threads()  # ATen's per-thread initialisation first: it would set the count back
    fn = _omp_set_num_threads()
    if fn is not None:
        fn(1)
