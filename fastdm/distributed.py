"""Condensation over several processes (torchrun): classes are sharded across ranks.

DM's classes are independent: rank r owns the contiguous class range shard(C, r, world), its
part of the synthetic set and of the momentum buffer, samples only its classes' real images
and derives every draw from (seed, iteration, class), as a single process does. The only
communication: the summed loss at log points (one all_reduce per log interval), barriers at
checkpoints, and gathering the synthetic set on rank 0 at the end. NCCL on GPUs (device
cuda:LOCAL_RANK), gloo on the CPU.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass

import torch

from .errors import FastDMError

log = logging.getLogger("fastdm")


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the env:// variables) with > 1 process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init(device_name: str | None) -> tuple[Dist, str]:
    """Join the process group; returns (Dist, the device name this rank uses)."""
    import torch.distributed as td

    world = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = (device_name or "auto").lower()
    cuda = want.startswith("cuda") or (want == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise FastDMError("--device cuda was asked for but torch sees no CUDA device")
        if local >= torch.cuda.device_count():
            raise FastDMError(f"rank {rank} has LOCAL_RANK {local} but this node has "
                              f"{torch.cuda.device_count()} GPU(s): use --nproc-per-node "
                              f"{torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    else:
        device_name = "cpu"
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo",
                              timeout=datetime.timedelta(seconds=timeout_s()))
    return Dist(rank, world, local), device_name


def timeout_s() -> float:
    """How long a collective waits for the other ranks before failing (FASTDM_DIST_TIMEOUT,
    seconds; default 600): ranks meet at every log point, so this bounds how long a job whose
    rank died on another node (where no connection breaks) hangs."""
    raw = os.environ.get("FASTDM_DIST_TIMEOUT", "600")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise FastDMError(f"FASTDM_DIST_TIMEOUT must be a positive number of seconds, got '{raw}'")
    return value


def shard(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s classes [lo, hi): contiguous, sizes differing by at most one."""
    if world > num_classes:
        raise FastDMError(f"{world} processes for {num_classes} classes: every rank needs at least "
                          f"one class; use --nproc-per-node (x nodes) <= {num_classes}")
    return rank * num_classes // world, (rank + 1) * num_classes // world


def all_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as td
    td.all_reduce(t)
    return t


def barrier() -> None:
    import torch.distributed as td
    td.barrier()


def gather_rows(local: torch.Tensor, dist: Dist) -> torch.Tensor | None:
    """Every rank's rows concatenated in rank order, on rank 0 (None elsewhere)."""
    parts = gather_objects(local.detach().cpu(), dist)
    return torch.cat(parts) if dist.main else None


def gather_objects(obj, dist: Dist) -> list | None:
    """Every rank's ``obj`` (picklable, small) in rank order, on rank 0 (None elsewhere)."""
    import torch.distributed as td
    parts = [None] * dist.world if dist.main else None
    td.gather_object(obj, parts, dst=0)
    return parts


def shutdown() -> None:
    """Leave the process group while the interpreter is fully alive: destroy_process_group drops
    torch's own references, and a collection frees any cyclic garbage still holding the group
    (a gloo group torn down at interpreter exit can abort the process)."""
    import gc

    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()
        gc.collect()


def leave(code: int) -> None:
    """Under torchrun, end this rank's process now with ``code``, its output flushed. The job's
    work is done (the ranks met after rank 0 wrote the outputs), and the interpreter's teardown
    is skipped: a rank was seen to abort in it ("terminate called without an active
    exception", SIGABRT, about 1 run in 35 on a loaded 2-core machine, also after an explicit
    destroy_process_group), which failed a finished job."""
    if not launched():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream: nothing to flush
            pass
    logging.shutdown()
    os._exit(code)


# what a collective raises when a peer is gone (gloo: connection closed/reset; NCCL: a
# watchdog timeout or remote error); the exception types differ between torch versions
_PEER_LOST = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout",
              "nccl", "gloo", "socket", "peer")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank failed or left."""
    names = {c.__name__ for c in type(err).__mro__}
    if names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(w in text for w in _PEER_LOST)
