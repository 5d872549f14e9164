"""The real images' way to the embedder: where the uint8 training set lives and how each
chunk's class-balanced batch reaches the device.

Tiers (``auto`` picks by the set's size against the budgets below; ``--real-tier`` overrides):

* ``gpu``: the whole uint8 set on the GPU; a chunk's images are gathered on the device.
* ``pinned`` (CUDA): the set in host RAM; worker threads gather each chunk into a pinned buffer
  from a small ring and copy it to the GPU on a side stream; the compute stream waits on the
  copy's event, and a buffer is reused only after its copy has finished.
* ``memory`` (CPU runs): the set in RAM, gathered by worker threads.
* ``disk``: the memory-mapped store, read through the page cache by worker threads.

Host tiers gather ahead: which images a chunk needs is a function of (seed, iteration, class)
(fastdm.rng), so the next chunks' batches (into the next iteration) are gathered while the
current one computes. A batch is the same whichever tier or thread produced it.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import FastDMError

log = logging.getLogger("fastdm")

TIERS = ("auto", "gpu", "pinned", "memory", "disk")
GPU_BUDGET = 0.25    # the set may take this fraction of free GPU memory (the rest: activations)
HOST_BUDGET = 0.5    # ... and this fraction of the available host memory for a RAM copy
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


def choose_tier(nbytes: int, device: torch.device, requested: str = "auto", mapped: bool = False) -> str:
    """The tier for a uint8 set of ``nbytes`` (``mapped``: memory-mapped from a store)."""
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
        if nbytes <= GPU_BUDGET * free:
            return "gpu"
    if not mapped:
        return "pinned" if cuda else "memory"
    host = host_available_bytes()
    if host is not None and nbytes <= HOST_BUDGET * host:
        return "pinned" if cuda else "memory"
    return "disk"


class RealStream:
    """Batches of real uint8 images by key. ``indices(key) -> (rows [n] int64, counts [k])``
    says which rows a key needs (on the host for host tiers, on the device for 'gpu')."""

    def __init__(self, images: torch.Tensor, device: torch.device, tier: str, indices,
                 mapped: bool = False, depth: int = DEPTH, threads: int = THREADS):
        self.device, self.tier, self.indices, self.depth = device, tier, indices, depth
        if tier == "gpu":
            self.images = images.to(device)
        elif tier == "pinned":
            self.images = images.pin_memory() if not images.is_pinned() else images
        elif tier == "memory":  # a mapped store is read into RAM once; an in-memory set stays
            self.images = images.clone() if mapped else images
        else:
            self.images = images
        self.index_device = device if tier == "gpu" else torch.device("cpu")
        self.pool = None if tier == "gpu" else ThreadPoolExecutor(threads, thread_name_prefix="fastdm-real")
        self.pending: dict = {}
        self.queue: deque = deque()
        self.stats = {"prefetched": 0, "direct": 0}
        self.free: deque = deque()      # reusable host buffers (see _buffer)
        self.taken = None               # the buffer of the batch last handed out
        self.lock = threading.Lock()
        if tier == "pinned":
            self.copy_stream = torch.cuda.Stream(device)

    # -- planning -------------------------------------------------------------------------------
    def plan(self, keys) -> None:
        """The keys about to be taken, in order: gathered ahead, ``depth`` at a time. Batches
        planned before and not in ``keys`` are dropped."""
        keys = list(keys)
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
        if fut is not None:
            self.stats["prefetched"] += 1
            batch = fut.result()
        else:
            if key in self.queue:
                self.queue.remove(key)
            self.stats["direct"] += 1
            batch = self._load(key)
        self.taken = batch[3]
        self._fill()
        return self._ready(batch)

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    # -- gathering ------------------------------------------------------------------------------
    def _load(self, key):
        """(images, counts, copy event or None, host buffer or None) for ``key``."""
        rows, counts = self.indices(key)
        if self.tier == "gpu":
            return torch.index_select(self.images, 0, rows), counts, None, None
        buf = self._buffer(rows.numel())
        torch.index_select(self.images, 0, rows, out=buf)
        if self.tier != "pinned":
            return buf, counts, None, buf
        with torch.cuda.stream(self.copy_stream):
            images = buf.to(self.device, non_blocking=True)
            counts = counts.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return images, counts, done, (buf, done)

    def _buffer(self, n: int) -> torch.Tensor:
        """A host buffer for n images, reused: a fresh allocation per chunk costs page faults
        on every touch (measured: gathers 1.4-5x slower), and pinned memory is expensive to
        allocate. Buffers come back when their batch is done with (``_release``)."""
        per = self.images[0].numel()
        with self.lock:
            old = self.free.popleft() if self.free else None
        if old is not None and old.numel() < n * per:
            old = None
        if old is None:
            old = torch.empty(n * per, dtype=self.images.dtype)
            if self.tier == "pinned":
                old = old.pin_memory()
        return old.view(-1)[:n * per].view(n, *self.images.shape[1:])

    def _release(self, held) -> None:
        """Back to the free list: a taken batch's buffer (pinned: once its copy has finished)."""
        if held is None:
            return
        if isinstance(held, tuple):
            held, done = held
            done.synchronize()
        with self.lock:
            self.free.append(held)

    def _drop(self, fut) -> None:
        if fut.cancel():
            return
        try:
            self._release(fut.result()[3])
        except Exception:  # a failed gather of a batch nobody wants any more
            pass

    def _ready(self, batch):
        images, counts, done, _ = batch
        if done is not None:  # the compute stream waits for the copy; the caching allocator
            stream = torch.cuda.current_stream(self.device)  # must know who uses the memory
            stream.wait_event(done)
            images.record_stream(stream)
            counts.record_stream(stream)
        return images, counts.to(self.device)
