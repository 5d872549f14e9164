"""What each evaluation protocol costs: seconds per model for a few epochs of each protocol on
the same set, and the protocol's whole schedule extrapolated from them (every epoch of a
protocol does the same work, so its cost is linear in the epochs).

    python -m benchmarks.protocol_cost SYNSET.pt [--dataset D --data-root R] [--epochs 20] --json OUT

The set is trained by one model per protocol, one at a time (as the non-dm protocols always
are), in turns over ``--repeats`` rounds after one warm-up round; the median is reported. The soft protocol's teacher is
made (or loaded from ``--teacher``) before the timing and its time is reported apart.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fastdm.data import load_dataset
from fastdm.devices import resolve_device
from fastdm.evaluation import EvalConfig, accuracy, check_synset_shape, train_model
from fastdm.io import load_synset
from fastdm.protocols import PROTOCOLS, passes

from .measure import run_facts, save_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.protocol_cost", description=__doc__.split("\n")[0])
    ap.add_argument("synset")
    ap.add_argument("--dataset")
    ap.add_argument("--data-root")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--epochs", type=int, default=20, help="epochs timed per protocol")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher", help="a bank folder for the soft protocol (default: the cached one)")
    ap.add_argument("--teacher-epochs", type=int, default=None)
    ap.add_argument("--teacher-images-per-class", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    syn = load_synset(args.synset)
    saved = syn["config"]
    data = load_dataset(args.dataset or saved["dataset"], args.data_root or saved.get("data_root"),
                        True, saved.get("image_size"), progress=False)
    check_synset_shape(syn["images"], syn["labels"], data, args.synset)
    device = resolve_device(args.device)
    model = saved.get("model") or data.default_model
    names = args.protocols.split(",")
    teacher, teacher_s = None, None
    if "soft" in names:
        from fastdm.teacher import TEACHER_EPOCHS, get_teacher
        t0 = time.perf_counter()
        teacher, info = get_teacher(data, args.data_root, model, device, args.teacher,
                                    args.teacher_epochs or TEACHER_EPOCHS,
                                    args.teacher_images_per_class, progress=False)
        teacher_s = {"seconds_here": round(time.perf_counter() - t0, 3),
                     "train_seconds": info.get("train_seconds"), "path": info["path"],
                     "accuracy": info["accuracies"][0]}
    times = {n: [] for n in names}
    test_s = []
    for r in range(-1, args.repeats):  # round -1: a warm-up, not timed
        for n in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            cfg = EvalConfig.for_protocol(n, model=model, models=1, epochs=args.epochs,
                                          strategy=None if PROTOCOLS[n].strategy else
                                          saved.get("strategy", data.default_strategy),
                                          validate_every=0)
            cfg.check()
            t0 = time.perf_counter()
            net = train_model(syn["images"], syn["labels"], data, cfg, 0, device,
                              teacher=teacher if cfg.labels == "soft" else None)
            if r >= 0:
                times[n].append((time.perf_counter() - t0) / passes(cfg.schedule, cfg.epochs))
        t0 = time.perf_counter()
        accuracy(net, data, device)
        test_s.append(time.perf_counter() - t0)
    rows = {}
    for n in names:
        p = PROTOCOLS[n]
        per_epoch = statistics.median(times[n])
        rows[n] = {"seconds_per_epoch": round(per_epoch, 5), "epochs": p.epochs,
                   "batch": p.batch,
                   "seconds_per_model": round(per_epoch * passes(p.schedule, p.epochs), 2),
                   "tests_during_training": (p.epochs // p.validate_every) if p.validate_every else 0}
    report = {"facts": run_facts(device), "synset": args.synset, "dataset": data.name,
              "images": int(syn["images"].shape[0]), "model": model, "epochs_timed": args.epochs,
              "repeats": args.repeats, "test_pass_s": round(statistics.median(test_s), 3),
              "teacher": teacher_s, "protocols": rows}
    print(f"{data.name}, {report['images']} images, {model}; {args.epochs} epochs timed x "
          f"{args.repeats}, median; one test pass {report['test_pass_s']:.2f} s")
    print(f"{'protocol':10} {'s/epoch':>9} {'epochs':>7} {'batch':>6} {'s/model':>9} {'tests':>6}")
    for n, r in rows.items():
        print(f"{n:10} {r['seconds_per_epoch']:9.4f} {r['epochs']:7d} {r['batch']:6d} "
              f"{r['seconds_per_model']:9.1f} {r['tests_during_training']:6d}")
    if teacher_s:
        print(f"teacher: {teacher_s}")
    save_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
