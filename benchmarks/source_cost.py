"""What the trained-embedder pipelines cost per iteration: whole iterations (matching, image
updates, calibration, the source's own work) of idm, dance and ncfm against DM at the same
factor, on random uint8 data of a setting's shape.

    python -m benchmarks.source_cost --setting mnist-ipc1 --iters 5 --json OUT.json

Every variant keeps the setting's real batch and ipc and runs its method's preset otherwise
(factor 2, its optimiser, --step class, its source); ``dm-f2`` is DM at factor 2. The bank
variants read a small bank made first on the same data (its training time is reported apart:
its weights' quality does not change the cost). Reported per variant: the median seconds per
iteration and the share of it in the source's begin/end (the queue's training steps, the bank's
weight copies), measured on the host (exact on the CPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from fastdm.devices import resolve_device, synchronize

from .measure import run_facts, save_json
from .settings import SETTINGS, fastdm_side

VARIANTS = {
    "dm-f2": {"factor": 2},
    "idm": {"method": "idm"},
    "idm-no-queue-training": {"method": "idm", "queue_train": 0},
    "dance": {"method": "dance", "bank_members": 0},
    "dance-no-calibration": {"method": "dance", "bank_members": 0, "calib_weight": 0.0},
    "ncfm": {"method": "ncfm"},
}


def make_bank(engine, out: str, members: int = 2) -> float:
    """A bank of ``members`` networks on the engine's data (one short epoch each); seconds."""
    from fastdm.pretrain import PretrainConfig, pretrain
    t0 = time.perf_counter()
    pretrain(PretrainConfig(dataset=engine.data.name, model=engine.cfg.model, models=members,
                            epochs=1, images_per_class=16, device=str(engine.device)),
             out, progress=False, data=engine.data)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.source_cost",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--setting", default="mnist-ipc1", choices=list(SETTINGS))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=300, help="real images per class held")
    ap.add_argument("--set", default="", help="key=value,... for every variant (e.g. queue_batch=64)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        ap.error(f"unknown variant(s) {', '.join(bad) or '(none)'}; choose from {', '.join(VARIANTS)}")
    from .family_table import _overrides
    extra = _overrides(args.set)
    device = resolve_device(args.device)
    s = SETTINGS[args.setting]
    rows, bank_s = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        bank = os.path.join(tmp, "bank")
        for name in names:
            settings = {**VARIANTS[name], **extra}
            if settings.get("method") in ("dance", "ncfm"):
                if bank_s is None:
                    bank_s = make_bank(fastdm_side(s, args.per_class, device), bank)
                settings["embedders"] = f"bank:{bank}"
            if settings.get("method") != "idm":
                settings = {k: v for k, v in settings.items() if not k.startswith("queue_")}
            e = fastdm_side(s, args.per_class, device, **settings)
            state = e.initial_state()
            for _ in range(args.warmup):
                e.step(state)
            times, source = [], []
            for _ in range(args.iters):
                synchronize(device)
                before, t0 = e.source_seconds, time.perf_counter()
                e.step(state)
                synchronize(device)
                times.append(time.perf_counter() - t0)
                source.append(e.source_seconds - before)
            e.close()
            rows[name] = {"median_s": statistics.median(times), "times_s": times,
                          "source_share": sum(source) / sum(times), "settings": settings}
    base = rows.get("dm-f2", {}).get("median_s")
    for row in rows.values():
        row["vs_dm_f2"] = row["median_s"] / base if base else None
    report = {"schema": "fastdm.source_cost/1", "setting": args.setting, **s.to_dict(),
              "facts": run_facts(device), "iters": args.iters, "bank_seconds": bank_s,
              "variants": rows}
    print(f"{args.setting} on {report['facts']['device_name']}: seconds per iteration "
          f"(median of {args.iters}); share in the embedder source")
    for name, row in rows.items():
        ratio = f"{row['vs_dm_f2']:.2f}x dm-f2" if row["vs_dm_f2"] else ""
        print(f"  {name:24s} {row['median_s']:8.3f} s  {ratio:14s} source {100 * row['source_share']:5.1f} %")
    if args.json:
        save_json(report, args.json)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
