"""The runner: the loop around the engine. Log points (one device sync and one loss reading
every ``log_every`` iterations), checkpoints, Ctrl-C/SIGTERM, and under torchrun the ranks'
agreement on the loss and on stopping, all live here; one iteration is the engine's."""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import torch

from . import distributed
from .checkpoint import RunState, has_checkpoint, save_checkpoint
from .devices import synchronize
from .engine import DMEngine

log = logging.getLogger("fastdm")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run: stopped after ``iteration`` completed iterations; the
    checkpoint in ``out`` is at iteration ``saved`` (None: no checkpoint was written)."""

    def __init__(self, out: str | None, iteration: int, saved: int | None):
        super().__init__(out, iteration, saved)
        self.out, self.iteration, self.saved = out, iteration, saved


def run(engine: DMEngine, state: RunState, out: str | None = None, progress: bool = True,
        on_iteration=None, dist=None) -> RunState:
    """Iterate up to cfg.iterations, checkpointing every cfg.checkpoint_every iterations and at
    the end. Ctrl-C (or SIGTERM) finishes the current iteration, saves a checkpoint and raises
    Interrupted; a second Ctrl-C stops at once, keeping the last checkpoint (if any).
    With ``dist`` (this rank of several): losses are summed over ranks at log points, and the
    ranks agree on stopping there too (they are in step only at log points): Ctrl-C/SIGTERM
    runs on to the next log point, where every rank saves; a second one stops at once,
    keeping the last complete checkpoint."""
    from tqdm.auto import tqdm

    cfg = engine.cfg
    total = cfg.iterations
    partial = engine.objective.partial
    bar = tqdm(total=total, initial=state.iteration, desc=f"DM {cfg.dataset} ipc{cfg.ipc}",
               unit="it", disable=not progress or None, dynamic_ncols=True)
    # no progress bar (not a terminal, or --no-progress): a plain log line at each log point
    plain = bool(bar.disable) and (dist is None or dist.main)
    session = {"start_it": state.iteration, "start_s": state.elapsed}
    pending = []  # loss tensors not yet copied to the host (one sync per log interval)
    stop = []
    agreed = False  # dist: every rank has agreed to stop at this log point
    in_step = False
    # the iteration of the checkpoint on disk (a resumed run starts from it)
    saved = [state.iteration if out and has_checkpoint(out) else None]

    def save():
        flush()
        state.source = engine.source.state_dict()
        save_checkpoint(out, engine.plan, state, dist)
        saved[0] = state.iteration

    def flush():  # None: an iteration whose loss value was not computed (a partial objective)
        if pending:
            done = [v for v in pending if v is not None]
            total = torch.stack(done) if done else None
            if dist is not None and total is not None:  # every rank flushes at the same points
                distributed.all_sum(total)
            values = iter((total / engine.plan.num_classes).tolist() if done else [])
            state.losses.extend(None if v is None else next(values) for v in pending)
            pending.clear()

    def on_signal(signum, frame):
        # under torchrun one Ctrl-C arrives twice (from the terminal and forwarded by the
        # launcher): a signal within 2 s of the first is the same request
        if dist is not None and stop and time.monotonic() - stop[0] < 2:
            return
        if stop or (not in_step and dist is None):
            raise KeyboardInterrupt
        stop.append(time.monotonic())
        if dist is None:
            log.warning("interrupted: finishing iteration %d, then saving a checkpoint "
                        "(Ctrl-C again to stop at once)", state.iteration + 1)
        else:
            log.warning("rank %d interrupted: running on to the next log point (every %d "
                        "iterations), where all ranks save a checkpoint (again to stop at once)",
                        dist.rank, cfg.log_every)

    handlers = {}
    if _main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        while state.iteration < total:
            t0 = time.perf_counter()
            in_step = True
            nxt = state.iteration + 1
            want = nxt % cfg.log_every == 0 or nxt == total
            loss = engine.step(state, value=want)
            pending.append(loss if want or not partial else None)
            in_step = False
            if want:
                flush()
                bar.set_postfix(loss=f"{state.losses[-1]:.4f}")
                if dist is not None:  # any rank asked to stop: all stop here, in step
                    flag = torch.tensor([float(bool(stop))], device=engine.device)
                    agreed = bool(distributed.all_sum(flag).item() > 0)
            if want:  # the device's queue drains at log points only (no per-iteration sync);
                synchronize(engine.device)  # elapsed is exact there and at the end
            state.elapsed += time.perf_counter() - t0
            bar.update(1)
            if plain and want:
                _log_line(state, total, session)
            if out and cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
                save()
            if on_iteration is not None:
                on_iteration(state)
            if (stop and dist is None) or agreed:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if dist is not None and not agreed:
            log.warning("rank %d stopped at iteration %d; the last complete checkpoint stays",
                        dist.rank, state.iteration)
        elif in_step:  # stopped inside an update: the state may be half-written, keep the last save
            log.warning("stopped inside iteration %d without saving", state.iteration + 1)
        else:
            flush()
            if out:
                save()
        raise Interrupted(out, state.iteration, saved[0]) from None
    finally:
        bar.close()
        failing = sys.exc_info()[0] is not None
        for sig, h in handlers.items():
            # a torchrun rank leaving by an error (another rank's death, mostly) ignores the
            # launcher's SIGTERM from here: it says why it stops, then exits (torchrun kills
            # what outlives its grace period anyway)
            signal.signal(sig, signal.SIG_IGN if dist is not None and failing and
                          sig == signal.SIGTERM else h)
    flush()
    if out:
        save()
    return state


def _log_line(state: RunState, total: int, session: dict) -> None:
    done = state.iteration - session["start_it"]
    rate = done / max(1e-9, state.elapsed - session["start_s"])
    eta = (total - state.iteration) / rate if rate > 0 else float("inf")
    loss = state.losses[-1] if state.losses else None
    log.info("iteration %d/%d: loss %s, %.2f it/s, ETA %s", state.iteration, total,
             "-" if loss is None else f"{loss:.4f}", rate, _duration(eta))


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
