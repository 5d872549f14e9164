"""Evaluation: the protocol's models trained together (vmap, fastdm.train_batched) vs one at a
time (fastdm.evaluation.train_model), same device, same work (initialisations, orders, DSA draws).

    python -m benchmarks.eval_bench --device cpu --models 10 --epochs 20 [--compile-backend inductor]

Default set: cifar10-ipc10-sized (100 random images 3x32x32, 10 classes), ConvNet, batch 256,
DSA (the DM strategy). Both ways train ``--epochs`` (+1, as the protocol) epochs; the report
gives seconds, seconds per epoch for all models and the ratio. The protocol's 1000 epochs cost
1000/epochs times as much either way (every epoch does the same work). Both ways are timed
eager and under torch.compile (as ``fastdm evaluate`` runs them: one shared compiled model for
the models one at a time, the vmapped stack compiled for the models together), the compiled
ones after a warm-up that compiles; ``--compile-backend none`` leaves the compiled rows out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace

import torch

from fastdm.devices import resolve_device, synchronize
from fastdm.errors import FastDMError
from fastdm.evaluation import EvalConfig, train_model
from fastdm.models import build_model
from fastdm.models.compiled import SharedCompiled
from fastdm.train_batched import train_models_batched

from .measure import run_facts, save_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--model", default="ConvNet")
    ap.add_argument("--strategy", default="color_crop_cutout_flip_scale_rotate")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compiled rows, or none (default inductor)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except FastDMError as e:
        ap.error(str(e))
    for name in ("models", "epochs", "ipc", "classes", "size"):
        if getattr(args, name) < (0 if name == "epochs" else 1):
            ap.error(f"--{name} must be positive")
    g = torch.Generator().manual_seed(0)
    n = args.classes * args.ipc
    images = torch.randn(n, 3, args.size, args.size, generator=g)
    labels = torch.arange(args.classes).repeat_interleave(args.ipc)
    cfg = EvalConfig(model=args.model, models=args.models, epochs=args.epochs, strategy=args.strategy)
    cfg.check()
    data = SimpleNamespace(num_classes=args.classes)
    ks = list(range(args.models))

    backend = None if args.compile_backend == "none" else args.compile_backend
    shared = None if backend is None else SharedCompiled(
        build_model(args.model, 3, args.classes, (args.size, args.size), device=device), backend)

    def one_at_a_time(c=cfg, compiled=None):
        for k in ks:
            train_model(images, labels, data, c, k, device, compiled=compiled)

    def together(c=cfg, compiled=None):
        # compiled: a fresh torch.compile per call, as evaluate_images does per evaluation
        train_models_batched(images[None].expand(len(ks), *images.shape),
                             labels[None].expand(len(ks), -1), args.classes, c, ks, device,
                             compile_backend=compiled)

    ways = {"together": together, "one_at_a_time": one_at_a_time}
    if backend is not None:
        ways["together_compiled"] = lambda c=cfg: together(c, backend)
        ways["one_at_a_time_compiled"] = lambda c=cfg: one_at_a_time(c, shared)
    warm = EvalConfig(model=args.model, models=args.models, epochs=0, strategy=args.strategy)
    warmup = {}
    for name, fn in ways.items():  # first-call costs (kernels, vmap tracing, compiling) out
        synchronize(device)
        t0 = time.perf_counter()
        fn(warm)
        synchronize(device)
        warmup[name] = time.perf_counter() - t0
        if name.endswith("compiled"):
            print(f"{name}: warm-up (compiling) {warmup[name]:.1f} s", file=sys.stderr)

    report = {"schema": "fastdm.eval_bench/1", "facts": run_facts(device), "models": args.models,
              "epochs": args.epochs, "images": n, "size": args.size, "model": args.model,
              "strategy": args.strategy, "compile_backend": backend,
              # a one-shot `fastdm evaluate` pays this too: the first call's tracing/compiling
              "warmup_s": {k: round(v, 3) for k, v in warmup.items()}}
    for name, fn in ways.items():
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        s = time.perf_counter() - t0
        report[f"{name}_s"] = s
        report[f"{name}_s_per_epoch"] = s / (args.epochs + 1)
        print(f"{name}: {s:.2f} s ({s / (args.epochs + 1):.3f} s per epoch, all models)",
              file=sys.stderr, flush=True)
    report["speedup"] = report["one_at_a_time_s"] / report["together_s"]
    print(f"together is {report['speedup']:.2f}x faster than one at a time (eager)", file=sys.stderr)
    if backend is not None:
        best = min(ways, key=lambda w: report[f"{w}_s"])
        report["best"] = best
        report["best_speedup"] = report["one_at_a_time_s"] / report[f"{best}_s"]
        # with the compile time counted (what one evaluation of this length sees)
        once = {w: report[f"{w}_s"] + warmup[w] for w in ways}
        best_once = min(once, key=once.get)
        report["best_with_warmup"] = best_once
        report["best_with_warmup_speedup"] = once["one_at_a_time"] / once[best_once]
        print(f"fastest: {best}, {report['best_speedup']:.2f}x faster than one at a time (eager); "
              f"counting warm-up: {best_once}, {report['best_with_warmup_speedup']:.2f}x",
              file=sys.stderr)
    save_json(report, args.json)
    print(json.dumps({k: v for k, v in report.items() if k != "facts"}))
    return report


if __name__ == "__main__":
    main()
