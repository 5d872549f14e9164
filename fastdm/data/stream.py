"""The real images' way to the embedder: where the uint8 training set lives and how each
chunk's class-balanced batch reaches the device.

Tiers (``auto`` picks by the set's size against the budgets below; ``--real-tier`` overrides):

* ``gpu``: the whole uint8 set on the GPU; a chunk's images are gathered on the device.
* ``pinned`` (CUDA): the set in host RAM (pageable: only the chunk buffers are pinned); worker
  threads gather each chunk into a reused pinned buffer and copy it to the GPU on a side
  stream; the compute stream waits on the copy's event, and a buffer is reused only after its
  copy has finished.
* ``memory`` (CPU runs): the set in RAM, gathered by worker threads.
* ``disk``: the memory-mapped store, read through the page cache by worker threads (on CUDA,
  then copied like ``pinned``).

Host tiers gather ahead: which images a chunk needs is a function of (seed, iteration, class)
(fastdm.rng), so the next chunks' batches (into the next iteration) are gathered while the
current one computes. A batch is the same whichever tier or thread produced it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import FastDMError
from ..settings import TIERS
from ..worker_threads import one_thread
from .sampler import RealSampler

log = logging.getLogger("fastdm")

# the set may take this fraction of free GPU memory (the rest: activations), and this fraction
# of the available host memory for a RAM copy; FASTDM_GPU_BUDGET / FASTDM_HOST_BUDGET override
GPU_BUDGET = 0.25
HOST_BUDGET = 0.5
DEPTH = 2            # chunks gathered ahead
THREADS = 2


def host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def budget(name: str, default: float) -> float:
    """A memory budget fraction: the environment variable ``name`` or ``default``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise FastDMError(f"{name} must be a fraction in (0, 1], got '{raw}'")
    return value


def choose_tier(nbytes: int, device: torch.device, requested: str = "auto", mapped: bool = False,
                host_sharers: int = 1) -> str:
    """The tier for a uint8 set of ``nbytes`` (``mapped``: memory-mapped from a store).
    ``host_sharers``: processes on this node that each copy a set of about this size into RAM
    at the same time (torchrun ranks), so each may take that share of the host budget."""
    if requested not in TIERS:
        raise FastDMError(f"--real-tier must be one of {', '.join(TIERS)}, got '{requested}'")
    cuda = device.type == "cuda"
    if requested in ("gpu", "pinned") and not cuda:
        raise FastDMError(f"--real-tier {requested} needs a CUDA device; on the CPU use memory or disk")
    if requested == "memory" and cuda:
        raise FastDMError("--real-tier memory is the CPU's host tier; on CUDA use pinned")
    if requested == "disk" and not mapped:
        raise FastDMError("--real-tier disk reads a memory-mapped store (--dataset store); this "
                          "dataset is already in memory")
    if requested != "auto":
        return requested
    if cuda:
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= budget("FASTDM_GPU_BUDGET", GPU_BUDGET) * free:
            return "gpu"
    if not mapped:
        return "pinned" if cuda else "memory"
    host = host_available_bytes()
    if host is not None and nbytes * max(1, host_sharers) <= budget("FASTDM_HOST_BUDGET", HOST_BUDGET) * host:
        return "pinned" if cuda else "memory"
    return "disk"


class RealStream:
    """Batches of real uint8 images by key (iteration, first class, end class): the rows its
    ``sampler`` picks, gathered on the device ('gpu') or by worker threads on the host."""

    def __init__(self, images: torch.Tensor, device: torch.device, tier: str, sampler: RealSampler,
                 mapped: bool = False, depth: int = DEPTH, threads: int = THREADS):
        self.device, self.tier, self.sampler, self.depth = device, tier, sampler, depth
        if tier == "gpu":
            self.images = images.to(device)
        elif tier in ("memory", "pinned"):  # a mapped store is read into RAM once
            self.images = images.clone() if mapped else images
        else:
            self.images = images
        # host tiers feeding a GPU: pinned chunk buffers, copies on a side stream
        self.copies = device.type == "cuda" and tier != "gpu"
        self.index_device = device if tier == "gpu" else torch.device("cpu")
        # (their torch ops inline: a thread's own OpenMP team slows the main thread's, see
        # fastdm.worker_threads)
        self.pool = None if tier == "gpu" else ThreadPoolExecutor(
            threads, thread_name_prefix="fastdm-real", initializer=one_thread)
        self.pending: dict = {}
        self.queue: deque = deque()
        self.stats = {"prefetched": 0, "direct": 0, "buffers": 0}
        self.free: deque = deque()      # reusable flat host buffers (see _buffer)
        self.taken = None               # the buffer of the batch last handed out
        self.lock = threading.Lock()
        if self.copies:
            self.copy_stream = torch.cuda.Stream(device)

    # -- planning -------------------------------------------------------------------------------
    def plan(self, keys) -> None:
        """The keys about to be taken, in order: gathered ahead, ``depth`` at a time. Batches
        planned before and not in ``keys`` are dropped."""
        keys = list(dict.fromkeys(keys))  # each key once
        for k in [k for k in self.pending if k not in keys]:
            self._drop(self.pending.pop(k))
        self.queue = deque(k for k in keys if k not in self.pending)
        self._fill()

    def _fill(self) -> None:
        while self.pool is not None and len(self.pending) < self.depth and self.queue:
            k = self.queue.popleft()
            self.pending[k] = self.pool.submit(self._load, k)

    def take(self, key):
        """(uint8 images on the device, counts on the device) for ``key``. On host tiers the
        images live in a reused buffer: valid until the next take."""
        if self.taken is not None:  # the caller is done with the previous batch
            self._release(self.taken)
            self.taken = None
        fut = self.pending.pop(key, None)
        try:
            if fut is not None:
                self.stats["prefetched"] += 1
                batch = fut.result()
            else:
                if key in self.queue:
                    self.queue.remove(key)
                self.stats["direct"] += 1
                batch = self._load(key)
        except FastDMError:
            raise
        except Exception as e:  # name the batch: a bare IndexError from a thread says nothing
            raise FastDMError(f"gathering the real images of {key} failed: {type(e).__name__}: {e}") from e
        self.taken = batch[3]
        self._fill()
        return self._ready(batch)

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        self.queue.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    # -- gathering ------------------------------------------------------------------------------
    def _load(self, key):
        """(images, counts, copy event or None, held host buffer or None) for ``key``."""
        rows, counts = self.sampler.indices(*key, device=self.index_device)
        if self.tier == "gpu":
            return torch.index_select(self.images, 0, rows), counts, None, None
        flat = self._buffer(rows.numel())
        buf = flat[:rows.numel() * self.images[0].numel()].view(rows.numel(), *self.images.shape[1:])
        torch.index_select(self.images, 0, rows, out=buf)
        if not self.copies:
            return buf, counts, None, flat
        with torch.cuda.stream(self.copy_stream):
            images = buf.to(self.device, non_blocking=True)
            counts = counts.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return images, counts, done, (flat, done)

    def _buffer(self, n: int) -> torch.Tensor:
        """A flat host buffer for at least n images, reused: a fresh allocation per chunk costs
        page faults on every touch (measured: gathers 1.4-5x slower), and pinned memory is
        expensive to allocate. Buffers come back when their batch is done with (``_release``);
        one too small for this chunk is given up for a larger one."""
        need = n * self.images[0].numel()
        with self.lock:
            at = next((i for i, b in enumerate(self.free) if b.numel() >= need), None)
            fit = None
            if at is not None:  # by position: deque.remove would compare tensors elementwise
                fit = self.free[at]
                del self.free[at]
            elif self.free:
                self.free.popleft()  # too small: let it go
        if fit is None:
            fit = torch.empty(need, dtype=self.images.dtype, pin_memory=self.copies)
            self.stats["buffers"] += 1
        return fit

    def _release(self, held) -> None:
        """Back to the free list: a taken batch's buffer (CUDA: once its copy has finished)."""
        if held is None:
            return
        if isinstance(held, tuple):
            held, done = held
            done.synchronize()
        with self.lock:
            self.free.append(held)

    def _drop(self, fut) -> None:
        """A gathered-ahead batch nobody will take: its buffer comes back when it is done
        (without waiting for a running gather)."""
        if fut.cancel():
            return

        def back(f):
            if not f.cancelled() and f.exception() is None:
                self._release(f.result()[3])
        fut.add_done_callback(back)

    def _ready(self, batch):
        images, counts, done, _ = batch
        if done is not None:  # the compute stream waits for the copy; the caching allocator
            stream = torch.cuda.current_stream(self.device)  # must know who uses the memory
            stream.wait_event(done)
            images.record_stream(stream)
            counts.record_stream(stream)
        return images, counts.to(self.device)
