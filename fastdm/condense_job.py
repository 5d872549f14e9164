"""A whole condensation job: the data, the run plan, the engine, resume, the run, the outputs.

The algorithm is in fastdm.engine, the loop around it (log points, signals, checkpoints,
ranks) in fastdm.runner, the files in fastdm.outputs; this module puts them in order.
"""
from __future__ import annotations

import logging
import os
import time

from . import distributed
from .checkpoint import RunState, has_checkpoint, load_checkpoint, remove_checkpoints
from .config import CondenseConfig
from .data import Dataset, load_dataset
from .engine import DMEngine
from .board import open_board
from .errors import FastDMError
from .outputs import metrics_dict, prepare_folder, synset_dict, write_outputs
from .plan import make_plan
from .runner import Interrupted, run  # noqa: F401  (Interrupted: what callers catch)

log = logging.getLogger("fastdm")


def condense_dataset(config: CondenseConfig, out: str | None = None, resume: bool = False,
                     overwrite: bool = False, progress: bool = True, dry_run: bool = False,
                     tensorboard: str | None = None, data: Dataset | None = None,
                     files: bool = True) -> dict:
    """Run DM for ``config`` and write OUT/synset.pt, grid.png, loss.png, metrics.json.

    Returns ``{"out", "synset", "metrics", "plan"}``. ``dry_run``: resolve the plan only
    (nothing is built, run or written; ``synset`` and ``metrics`` are None). Raises
    FastDMError for bad input and Interrupted (fastdm.runner) on Ctrl-C. Started by torchrun
    with several processes, each condenses its shard of the classes (fastdm.distributed) and
    rank 0 writes the outputs; the other ranks return synset and metrics None.
    ``tensorboard``: a folder for TensorBoard's live loss, speed and image grids (rank 0).
    ``data``: an already loaded Dataset (default: load ``config.dataset``). ``files=False``:
    write nothing (no checkpoints, no outputs; ``out`` must be None); the set and the metrics
    come back in memory only (fastdm.api).
    """
    if not files and (out is not None or resume):
        raise FastDMError("a run without files has no folder to write or resume: pass out")
    if resume and overwrite:
        raise FastDMError("--resume and --overwrite contradict each other; pass one")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise FastDMError(f"--out {out} is a file, not a folder; choose another --out")
    if dry_run:
        plan = make_plan(config, data or _load(config, progress, None), dry_run=True)
        return {"out": out, "synset": None, "metrics": None, "plan": plan}
    dist, dev_name = None, None
    if distributed.launched():  # torchrun: this process condenses its shard of the classes
        # the rank's own device (cuda:LOCAL_RANK) is not a setting: the config keeps the user's
        dist, dev_name = distributed.init(config.device)
        if not dist.main:
            log.setLevel(logging.WARNING)
            progress = False
    try:
        res = _condense(config, out, resume, overwrite, progress, dist, dev_name, tensorboard,
                        data, files)
        if dist is not None:
            # every rank leaves together, once rank 0 has written the outputs: a rank that tore
            # its process group down while rank 0 still used it was seen to abort in gloo
            distributed.barrier()
        return res
    finally:
        if dist is not None:
            distributed.shutdown()


def _load(config: CondenseConfig, progress: bool, dist) -> Dataset:
    """The dataset; under torchrun a --download happens once per node (local rank 0 first)."""
    def load():
        return load_dataset(config.dataset, config.data_root, bool(config.download),
                            config.image_size, progress=progress)
    if dist is None or not config.download:
        return load()
    data = load() if dist.local_rank == 0 else None
    distributed.barrier()
    return data if data is not None else load()


def _session_setting(saved: str | None, now: str, iteration: int, ran: str, runs: str,
                     flag: str) -> str:
    """The run's record of a speed setting after this session: ``now``, or ``saved+now`` with
    a warning when the checkpoint's iterations ran with another one."""
    if iteration == 0 or saved is None:
        return now
    if now in saved.split("+"):
        return saved
    log.warning("the checkpoint's %d iterations ran %s; this session runs %s (%s %s to keep it)",
                iteration, ran.format(saved), runs.format(now), flag, saved.split("+")[-1])
    return f"{saved}+{now}"


def _condense(config: CondenseConfig, out, resume: bool, overwrite: bool, progress: bool, dist,
              dev_name: str | None = None, tensorboard: str | None = None,
              data: Dataset | None = None, files: bool = True) -> dict:
    t_start = time.perf_counter()
    data = data if data is not None else _load(config, progress, dist)
    t_data = time.perf_counter() - t_start
    classes = distributed.shard(data.num_classes, dist.rank, dist.world) if dist else None
    plan = make_plan(config, data, dev_name, classes)
    cfg = plan.config
    if files:
        out = out or os.path.join("runs", f"{cfg.dataset}_ipc{cfg.ipc}")
    if files and has_checkpoint(out) and not (resume or overwrite):
        raise FastDMError(f"{out} already holds a run (a checkpoint); pass --resume to continue it, "
                          f"--overwrite to start afresh, or another --out")
    if files and not (resume or overwrite) and os.path.isfile(os.path.join(out, "synset.pt")):
        raise FastDMError(f"{out} already holds a finished run (synset.pt); pass --overwrite to "
                          f"replace it, or another --out")
    engine = DMEngine(plan, data)
    state = load_checkpoint(out, plan) if resume else engine.initial_state()
    if resume:
        engine.source.load_state_dict(state.source)
    if state.iteration > cfg.iterations:
        raise FastDMError(f"the checkpoint in {out} is at iteration {state.iteration}, past "
                          f"--iterations {cfg.iterations}; pass --iterations {state.iteration} or more")
    started = state.iteration
    # precision and the real branch's convolutions are speed settings (auto picks them by device,
    # and falls back to direct convolutions without the native build), so a run may resume in
    # others: allowed, but said, and recorded (rounding differs: no longer bit-identical)
    state.precision = _session_setting(state.precision, plan.precision, state.iteration,
                                       "in {}", "in {}", "--precision")
    state.conv = _session_setting(state.conv, plan.conv, state.iteration,
                                  "with {} real-branch convolutions", "{}", "--conv")
    # TensorBoard's folder is checked before the run's folder is cleared for it
    board = None
    try:
        if dist is None or dist.main:
            board = open_board(tensorboard)
            if files:
                prepare_folder(out, resume, overwrite)
    except BaseException:
        engine.close()
        if board is not None:
            board.close()
        raise
    if dist is not None:
        distributed.barrier()  # the folder is ready for every rank's checkpoints
    log.info("condensing %s: %d classes x ipc %d, %s%s%s%s, objective %s, on %s, iterations "
             "%d..%d, class chunk %d, out %s",
             cfg.dataset, data.num_classes, cfg.ipc, cfg.model, " (compiled)" if plan.compiled else "",
             # precision shown only when it is not the reference's fp32
             "" if plan.precision == "fp32" else f" in {plan.precision}",
             " with native CPU convolutions" if plan.winograd_layers or plan.first_block_layers else "",
             plan.objective, plan.device, state.iteration, cfg.iterations, plan.class_chunk,
             out if files else "none (in memory)")
    if dist is not None:
        log.info("%d processes; rank 0 condenses classes %d..%d", dist.world, *plan.classes)
    t_run = time.perf_counter()
    try:
        run(engine, state, out, progress=progress, dist=dist,
            on_iteration=None if board is None else _live(board, cfg, data))
    finally:
        engine.close()
        if board is not None:
            board.close()
    mine = {"rank": 0 if dist is None else dist.rank, "classes": list(plan.classes),
            "class_chunk": plan.class_chunk, "real_tier": plan.real_tier,
            "real_batches": dict(engine.stream.stats), "iterations_s": round(state.elapsed, 3)}
    ranks = [mine]
    if dist is not None:  # rank 0 assembles the whole set (rank order = class order)
        images = distributed.gather_rows(state.images, dist)
        ranks = distributed.gather_objects(mine, dist)
        if not dist.main:
            return {"out": out, "synset": None, "metrics": None, "plan": plan}
        state = RunState(images=images, momentum=None, iteration=state.iteration,
                         losses=state.losses, elapsed=state.elapsed, precision=state.precision,
                         conv=state.conv)
    done = state.iteration
    facts = {
        "processes": 1 if dist is None else dist.world, "ranks": ranks,
        "real_batches": dict(engine.stream.stats), "resumed_from": started, "iterations": done,
        "timings": {"load_data_s": round(t_data, 3), "this_session_s": round(time.perf_counter() - t_run, 3),
                    "iterations_s": round(state.elapsed, 3),
                    "embedder_source_s": round(engine.source_seconds, 3),
                    "per_iteration_s": round(state.elapsed / done, 5) if done else None,
                    "total_s": round(time.perf_counter() - t_start, 3)}}
    if not files:
        return {"out": None, "synset": synset_dict(cfg, data, state),
                "metrics": metrics_dict(plan, state, facts), "plan": plan, "data": data}
    synset, metrics = write_outputs(out, plan, data, state, facts)
    if not cfg.keep_checkpoint:  # the outputs stand for the run now
        remove_checkpoints(out)
    return {"out": out, "synset": synset, "metrics": metrics, "plan": plan, "data": data}


def _live(board, cfg, data):
    """TensorBoard during a run: the loss and the seconds per iteration at every log point,
    the stored images' grid ten times a run (and at the end)."""
    from .report import grid_image
    seen = {"losses": 0, "elapsed": None, "it": None}
    every = max(1, cfg.iterations // 10)

    def on_iteration(state):
        it = state.iteration
        if len(state.losses) > seen["losses"]:
            seen["losses"] = len(state.losses)
            if state.losses[-1] is not None:
                board.scalar("condense/loss", state.losses[-1], it)
            if seen["elapsed"] is not None and it > seen["it"]:
                board.scalar("condense/seconds_per_iteration",
                             (state.elapsed - seen["elapsed"]) / (it - seen["it"]), it)
            seen["elapsed"], seen["it"] = state.elapsed, it
        if it % every == 0 or it == cfg.iterations:
            images = data.denormalize(state.images.detach().float().cpu())
            classes = images.shape[0] // cfg.ipc
            board.image("condense/synset", grid_image(images, classes, cfg.ipc)[0], it)
    return on_iteration
