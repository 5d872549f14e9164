"""``fastdm reproduce dm-paper``: the DM paper's table cells (condense + evaluate, and random real
subsets under the same protocol), resumable cell by cell, written as a markdown table with the
paper's numbers beside the measured ones.

Published numbers (ConvNet, %, means): DM from Zhao & Bilen (WACV 2023), Table 1; random
subsets and whole-dataset accuracy as that table quotes them (from Zhao et al., ICLR 2021).
The paper has no FashionMNIST or SVHN row: those cells show the measured numbers only.
"""
from __future__ import annotations

import json
import logging
import os
import time

from .errors import FastDMError
from .io import atomic_json_dump, atomic_write_text

log = logging.getLogger("fastdm")

PAPER = {  # dataset -> ipc -> (DM, random subset)
    "mnist": {1: (89.7, 64.9), 10: (97.5, 95.1), 50: (98.6, 97.9)},
    "cifar10": {1: (26.0, 14.4), 10: (48.9, 26.0), 50: (63.0, 43.4)},
    "cifar100": {1: (11.4, 4.2), 10: (29.7, 14.6), 50: (43.6, 30.0)},
    "tinyimagenet": {1: (3.9, 1.4), 10: (12.9, 5.0), 50: (24.1, 15.0)},
}
WHOLE = {"mnist": 99.6, "cifar10": 84.8, "cifar100": 56.2, "tinyimagenet": 37.6}
TABLES = {"dm-paper": PAPER}
# paper: the paper's schedule (20000 iterations, batch_real 256, 5 models x 1000 epochs; the
# paper averages 5 synthetic sets, fastdm condenses one per cell); quick: a CPU-sized one
SCHEDULES = {
    "paper": {"iterations": 20000, "batch_real": 256, "models": 5, "epochs": 1000},
    "quick": {"iterations": 200, "batch_real": 64, "models": 3, "epochs": 300},
}


def _cell_dir(out: str, dataset: str, ipc: int) -> str:
    return os.path.join(out, f"{dataset}_ipc{ipc}")


def _read(path: str):
    with open(path) as fh:
        return json.load(fh)


def condense_cell(out, dataset, ipc, sched, common, progress) -> dict:
    """The cell's synset (condensed, continued from its checkpoint, or already there)."""
    from .checkpoint import has_checkpoint
    from .condense_job import condense_dataset
    from .config import CondenseConfig

    folder = _cell_dir(out, dataset, ipc)
    metrics = os.path.join(folder, "metrics.json")
    if os.path.isfile(os.path.join(folder, "synset.pt")) and os.path.isfile(metrics):
        m = _read(metrics)
        _same_schedule(folder, {k: m["config"].get(k) for k in ("iterations", "batch_real")},
                       {k: sched[k] for k in ("iterations", "batch_real")})
        return m
    cfg = CondenseConfig(dataset=dataset, ipc=ipc, iterations=sched["iterations"],
                         batch_real=sched["batch_real"], **common)
    resume = os.path.isdir(folder) and has_checkpoint(folder)
    if resume:
        log.info("%s ipc %d: continuing its condensation from the checkpoint", dataset, ipc)
    res = condense_dataset(cfg, folder, resume=resume, overwrite=not resume, progress=progress)
    return res["metrics"]


def _same_schedule(folder: str, was: dict, now: dict) -> None:
    if was != now:
        diff = ", ".join(f"{k} {was.get(k)} (now {v})" for k, v in now.items() if was.get(k) != v)
        raise FastDMError(f"{folder} was run with {diff}; use another --out for this schedule, or "
                          f"the schedule it was run with")


def reproduce(table: str, data_root: str | None, datasets: list[str], ipcs: list[int],
              schedule: str = "quick", out: str = "runs/reproduce", download: bool = False,
              device: str | None = None, seed: int = 0, progress: bool = True,
              overrides: dict | None = None) -> dict:
    """Run every (dataset, ipc) cell not yet done in ``out`` and write out/table.md (and
    table.png). ``overrides``: iterations, batch_real, models, epochs over the schedule's."""
    from .evaluate_job import evaluate_synset

    if table not in TABLES:
        raise FastDMError(f"unknown table '{table}'; choose {', '.join(TABLES)}")
    if schedule not in SCHEDULES:
        raise FastDMError(f"unknown --schedule '{schedule}'; choose {', '.join(SCHEDULES)}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    sched = {**SCHEDULES[schedule], **given}
    label = schedule + (" with " + ", ".join(f"{k} {v}" for k, v in given.items()) if given else "")
    for k, v in sched.items():
        if v < (0 if k == "epochs" else 1):
            raise FastDMError(f"--{k.replace('_', '-')} must be >= {0 if k == 'epochs' else 1}, got {v}")
    if not datasets or not ipcs:
        raise FastDMError("reproduce needs at least one dataset and one ipc")
    from .data import dataset_info
    for name in datasets:  # before hours of the first cells, not after
        dataset_info(name)
    for ipc in ipcs:
        if ipc < 1:
            raise FastDMError(f"--ipc must be >= 1, got {ipc}")
    os.makedirs(out, exist_ok=True)
    common = {k: v for k, v in {"data_root": data_root, "download": download or None, "seed": seed,
                                "device": device}.items() if v is not None}
    ev = {"models": sched["models"], "epochs": sched["epochs"], "data_root": data_root,
          "download": download, "seed": seed, "device": device, "progress": progress}
    rows = []
    for dataset in datasets:
        for ipc in ipcs:
            folder = _cell_dir(out, dataset, ipc)
            done = os.path.join(folder, "cell.json")
            if os.path.isfile(done):
                row = _read(done)
                _same_schedule(folder, {k: row.get(k) for k in sched}, sched)
                rows.append(row)
                continue
            t0 = time.perf_counter()
            metrics = condense_cell(out, dataset, ipc, sched, common, progress)
            condense_s = time.perf_counter() - t0
            syn = evaluate_synset(os.path.join(folder, "synset.pt"), compare_random=True,
                                  plot=os.path.join(folder, "eval_dm.png"), **ev)
            row = {"dataset": syn["dataset"], "ipc": ipc, "schedule": label, **sched,
                   "acc_mean": syn["acc_mean"], "acc_std": syn["acc_std"], "accs": syn["accs"],
                   "random_mean": syn["random"]["acc_mean"], "random_std": syn["random"]["acc_std"],
                   "per_iteration_s": metrics["timings"]["per_iteration_s"],
                   "condense_s": round(condense_s, 1), "evaluate_s": syn["seconds"],
                   "random_s": syn["random"]["seconds"]}
            atomic_json_dump(row, done)
            rows.append(row)
            write_table(out, table, rows)
            log.info("%s ipc %d: %.2f %% (paper %s), random %.2f %%", dataset, ipc,
                     100 * row["acc_mean"], _paper(table, dataset, ipc, 0), 100 * row["random_mean"])
    md = write_table(out, table, rows)
    return {"out": out, "table": os.path.join(out, "table.md"), "rows": rows, "markdown": md}


def _paper(table: str, dataset: str, ipc: int, which: int) -> str:
    cell = TABLES[table].get(dataset, {}).get(ipc)
    return f"{cell[which]:.1f}" if cell else "-"


def write_table(out: str, table: str, rows: list[dict]) -> str:
    s = rows[0] if rows else {}
    lines = [f"Schedule: {s.get('schedule')} ({s.get('iterations')} iterations, batch_real "
             f"{s.get('batch_real')}; evaluation {s.get('models')} ConvNets x {s.get('epochs')} "
             f"epochs, DM's protocol). Accuracy %, mean +- std over the models; '-': not in the paper.",
             "", "| dataset | ipc | DM, paper | DM, measured | random, paper | random, measured | "
                 "whole data, paper | s/iteration |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['ipc']} | {_paper(table, r['dataset'], r['ipc'], 0)} | "
                     f"{100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f} | "
                     f"{_paper(table, r['dataset'], r['ipc'], 1)} | "
                     f"{100 * r['random_mean']:.2f} +- {100 * r['random_std']:.2f} | "
                     f"{WHOLE.get(r['dataset'], '-')} | {r['per_iteration_s']:.3f} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(md, os.path.join(out, "table.md"))
    if rows:
        from .report import reproduction_figure, save_figure
        save_figure(reproduction_figure(rows, lambda d, i, w: TABLES[table].get(d, {}).get(i, (None, None))[w]),
                    os.path.join(out, "table.png"))
    return md
