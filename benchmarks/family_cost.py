"""What the DM-family objectives and partitioning cost per iteration, against DM's on the same
engine, data and embedder (only the objective or the factor differs).

    python -m benchmarks.family_cost --setting cifar10-ipc10 --iters 7 --json OUT.json

Each variant is an engine on random uint8 data of the setting's shape (benchmarks.settings),
warmed up (the first iterations compile and fill caches), then the variants' iterations
(``loss_and_grad``: forward, objective, backward; no update) are timed in turns, each turn in a
rotated order, and the median per variant is reported with its ratio to ``dm``, and the median
of the ratios within each round (steadier where the machine's speed drifts), by wall clock and
by the process's CPU time. The target of
the family issue: ``datadam`` and ``ncfm`` at most 1.10x ``dm`` at factor 1.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fastdm.devices import resolve_device, synchronize

from .measure import run_facts, save_json
from .settings import SETTINGS, fastdm_side

VARIANTS = {
    "dm": {},
    "datadam": {"objective": "datadam"},
    "ncfm": {"objective": "ncfm"},
    "ncfm-full": {"objective": "ncfm", "frequency_draw": "full"},
    "ncfm-span": {"objective": "ncfm", "frequency_draw": "span"},
    "ncfm-m1024": {"objective": "ncfm", "frequencies": 1024},
    "m3d": {"objective": "m3d"},
    "dm-factor2": {"factor": 2},
    "ncfm-factor2": {"objective": "ncfm", "factor": 2},
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.family_cost",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--setting", default="cifar10-ipc10", choices=list(SETTINGS))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=7, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=300, help="real images per class held")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        ap.error(f"unknown variant(s) {', '.join(bad) or '(none)'}; choose from {', '.join(VARIANTS)}")
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    device = resolve_device(args.device)
    s = SETTINGS[args.setting]
    engines, images = {}, {}
    for name in names:
        e = fastdm_side(s, args.per_class, device, **VARIANTS[name])
        engines[name], images[name] = e, e.initial_state().images
        for it in range(args.warmup):
            e.loss_and_grad(images[name], it)
    times, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(args.iters):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            engines[name].loss_and_grad(images[name], args.warmup + r)
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    for e in engines.values():
        e.close()
    base = statistics.median(times["dm"]) if "dm" in times else None
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        # the machine's speed drifts between rounds (a shared host): the ratio within each
        # round, where the variants ran back to back, is the steadier estimate
        paired = statistics.median(t / b for t, b in zip(times[name], times["dm"])) \
            if base else None
        # the process's CPU seconds (all threads): what a shared host's other tenants take
        # from the wall clock they do not add here
        cpu_paired = statistics.median(t / b for t, b in zip(cpu[name], cpu["dm"])) \
            if base else None
        rows[name] = {"median_s": med, "times_s": times[name], "cpu_s": cpu[name],
                      "vs_dm": med / base if base else None, "vs_dm_paired": paired,
                      "vs_dm_cpu_paired": cpu_paired, "settings": VARIANTS[name]}
    report = {"schema": "fastdm.family_cost/1", "setting": args.setting, **s.to_dict(),
              "facts": run_facts(device), "iters": args.iters, "variants": rows}
    print(f"{args.setting} on {report['facts']['device_name']}: seconds per iteration "
          f"(median of {args.iters})")
    for name, row in rows.items():
        ratio = (f"{row['vs_dm']:.3f}x dm (per round: {row['vs_dm_paired']:.3f}x; CPU time "
                 f"per round: {row['vs_dm_cpu_paired']:.3f}x)") if row["vs_dm"] else ""
        print(f"  {name:14s} {row['median_s']:8.3f} s  {ratio}")
    if args.json:
        save_json(report, args.json)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
