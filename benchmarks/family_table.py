"""Accuracy of the DM-family methods on one reduced schedule: each method with and without
partitioning, against random real images, evaluated by one protocol.

    python -m benchmarks.family_table --data-root ROOT --datasets mnist,fashionmnist \\
        --ipc 1,10 --methods dm,m3d,datadam,ncfm-random --factors 1,2 --iterations 200 \\
        --batch-real 64 --models 3 --epochs 300 --out runs/family
    python -m benchmarks.family_table ... --methods dm,idm,dance,ncfm --factors 2 --banks BANKS

A column NAME is the method's preset; NAME-random the method with random embedders (part 1's
ncfm); bank-based presets read the bank BANKS/DATASET (fastdm pretrain).

Every cell condenses with the method's preset (``--method``), except what the schedule fixes
for all (iterations, real batch, factor), then evaluates with DM's protocol (the dataset's DSA
strategy in mode S for every method, so that only the set differs). Cells are resumable: a
cell whose result.json exists is read, not rerun; an interrupted condensation resumes from its
checkpoint, and a finished one whose evaluation was cut off is evaluated, not condensed again.
The markdown table goes to OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from fastdm.checkpoint import has_checkpoint
from fastdm.condense_job import condense_dataset
from fastdm.config import CondenseConfig
from fastdm.data import load_dataset
from fastdm.evaluation import evaluate_synset
from fastdm.io import atomic_json_dump
from fastdm.methods import METHODS


def _csv(text, kind=str):
    return [kind(v) for v in text.split(",") if v.strip()]


def _overrides(text: str) -> dict:
    """``key=value,...`` settings for every cell (numbers parsed)."""
    out = {}
    for item in _csv(text):
        key, _, value = item.partition("=")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def method_settings(args, dataset: str, spec: str) -> dict:
    """A table column's settings: ``NAME`` is the method's preset (a bank-based one reads
    BANKS/DATASET), ``NAME-random`` the method with random embedders (part 1's ncfm)."""
    name, _, variant = spec.partition("-")
    settings = {"method": name}
    if variant == "random":
        settings["embedders"] = "random"
    elif METHODS[name]["embedders"] == "bank":
        if not args.banks:
            raise SystemExit(f"--methods {spec} needs --banks DIR (a bank per dataset, made by "
                             f"fastdm pretrain --out DIR/{dataset})")
        settings["embedders"] = f"bank:{os.path.join(args.banks, dataset)}"
    return settings


def _finished_run(out: str, cfg: CondenseConfig) -> dict | None:
    """The metrics of a condensation that finished in ``out`` with ``cfg``'s schedule, or None."""
    path = os.path.join(out, "metrics.json")
    if has_checkpoint(out) or not os.path.isfile(os.path.join(out, "synset.pt")) \
            or not os.path.isfile(path):
        return None
    with open(path) as fh:
        m = json.load(fh)
    keys = ("dataset", "ipc", "factor", "iterations", "batch_real", "seed", "method")
    same = all(m["config"].get(k) == getattr(cfg, k) for k in keys)
    return m if same else None


def cell(args, dataset, ipc, method, factor, strategy) -> dict:
    out = os.path.join(args.out, f"{dataset}_ipc{ipc}_{method}_f{factor}")
    path = os.path.join(out, "result.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    cfg = CondenseConfig(**{**dict(
        dataset=dataset, data_root=args.data_root, download=True, ipc=ipc, factor=factor,
        iterations=args.iterations, batch_real=args.batch_real, seed=args.seed,
        device=args.device), **method_settings(args, dataset, method), **_overrides(args.set)})
    m, condense_s = _finished_run(out, cfg), None
    if m is None:  # a checkpoint resumes; a finished run whose evaluation was cut off is kept
        resume = has_checkpoint(out)
        t0 = time.perf_counter()
        m = condense_dataset(cfg, out, resume=resume, overwrite=not resume,
                             progress=False)["metrics"]
        condense_s = time.perf_counter() - t0
    ev = evaluate_synset(os.path.join(out, "synset.pt"), models=args.models, epochs=args.epochs,
                         strategy=strategy, aug_mode="S", seed=args.seed, device=args.device,
                         progress=False, data_root=args.data_root, download=True)
    row = {"dataset": dataset, "ipc": ipc, "method": method, "factor": factor,
           "acc_mean": ev["acc_mean"], "acc_std": ev["acc_std"], "accs": ev["accs"],
           "per_iteration_s": m["timings"]["per_iteration_s"], "condense_s": condense_s,
           "embedder_source_s": m["timings"].get("embedder_source_s"),
           "eval_s": ev["seconds"], "config": m["config"]}
    atomic_json_dump(row, path)
    return row


def random_cell(args, dataset, ipc, strategy) -> dict:
    path = os.path.join(args.out, f"{dataset}_ipc{ipc}_random.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    ev = evaluate_synset(baseline="random", dataset=dataset, data_root=args.data_root,
                         download=True, ipc=ipc, models=args.models, epochs=args.epochs,
                         strategy=strategy, aug_mode="S", seed=args.seed, device=args.device,
                         progress=False)
    row = {"dataset": dataset, "ipc": ipc, "acc_mean": ev["acc_mean"], "acc_std": ev["acc_std"],
           "accs": ev["accs"]}
    atomic_json_dump(row, path)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.family_table",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--datasets", default="mnist,fashionmnist")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--methods", default="dm,m3d,datadam,ncfm")
    ap.add_argument("--factors", default="1,2")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/family")
    ap.add_argument("--banks", help="a folder holding one bank per dataset (DIR/mnist, ...) for "
                                    "the bank-based methods (dance, ncfm)")
    ap.add_argument("--set", default="", help="key=value,... settings for every cell (e.g. "
                                              "queue_batch=64)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = [f"Schedule: {args.iterations} iterations, batch_real {args.batch_real}, seed "
             f"{args.seed}; evaluation: {args.models} x ConvNet, {args.epochs} epochs, DM's "
             f"protocol with the dataset's DSA strategy (mode S) for every method. Accuracy "
             f"mean +- std (%); s/it: seconds per iteration.", "",
             "| dataset | ipc | random | " + " | ".join(
                 f"{m} f{f}" for m in _csv(args.methods) for f in _csv(args.factors, int)) + " |",
             "|---" * (3 + len(_csv(args.methods)) * len(_csv(args.factors, int))) + "|"]
    for dataset in _csv(args.datasets):
        strategy = load_dataset(dataset, args.data_root, True, progress=False).default_strategy
        for ipc in _csv(args.ipc, int):
            rnd = random_cell(args, dataset, ipc, strategy)
            cells = [f"{100 * rnd['acc_mean']:.2f} +- {100 * rnd['acc_std']:.2f}"]
            for method in _csv(args.methods):
                for factor in _csv(args.factors, int):
                    r = cell(args, dataset, ipc, method, factor, strategy)
                    cells.append(f"{100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f} "
                                 f"({r['per_iteration_s']:.2f} s/it)")
                    print(f"{dataset} ipc {ipc} {method} f{factor}: {cells[-1]}", flush=True)
            lines.append(f"| {dataset} | {ipc} | " + " | ".join(cells) + " |")
            with open(os.path.join(args.out, "table.md"), "w") as fh:
                fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
