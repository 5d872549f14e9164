"""Evaluation of one model, fastdm against the reference's evaluate_synset, per setting.

    python -m benchmarks.eval_compare --settings mnist-ipc1,cifar10-ipc10 --epochs 300 \
        [--reference-repo PATH] [--json OUT]

For each setting (10 classes, the dataset's image shape and test-set size, ipc synthetic
images per class, all random: speed does not depend on pixel values) both sides train one
ConvNet for ``--epochs`` (+1, as the reference) epochs with DSA, batch 256, and test it on the
test set. The baseline is the reference's ``evaluate_synset`` (the upstream code of a
VICO-UoE/DatasetCondensation checkout with ``--reference-repo``, else fastdm.compat's, which
trains to the same weights); fastdm's side is ``fastdm.evaluation.evaluate_images`` with the
defaults of ``fastdm evaluate --models 1``. Sides alternate (which goes first too); the report
gives each side's median seconds per model and the ratio, measured in this run.

Each timed run happens in a fresh process of its own (``--child``): fastdm's evaluation keeps
freed host memory for reuse process-wide (fastdm.host_memory), and a reference timed in the
same process would gain from it too. ``--reference-malloc kept`` gives the reference's process
that setting as well (the ratio then shows what is left without it); ``--in-process`` times
both sides in this process, as before.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from fastdm.data import ClassImages, Dataset
from fastdm.devices import resolve_device
from fastdm.errors import FastDMError
from fastdm.evaluation import EvalConfig, evaluate_images

from .measure import ROOT, run_facts, save_json

STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class EvalSetting:
    channels: int
    size: int
    ipc: int
    test: int = 10000
    classes: int = 10


SETTINGS = {f"{name}-ipc{ipc}": EvalSetting(c, s, ipc)
            for name, c, s in (("mnist", 1, 28), ("cifar10", 3, 32)) for ipc in (1, 10, 50)}


def _data(s: EvalSetting):
    g = torch.Generator().manual_seed(0)
    test = torch.randint(0, 256, (s.test, s.channels, s.size, s.size), dtype=torch.uint8, generator=g)
    test_y = torch.arange(s.classes).repeat_interleave(s.test // s.classes)
    split = ClassImages(test, test_y, s.classes)
    data = Dataset("synthetic", split, split, [str(c) for c in range(s.classes)],
                   (0.5,) * s.channels, (0.25,) * s.channels, "ConvNet", STRATEGY)
    images = torch.randn(s.classes * s.ipc, s.channels, s.size, s.size, generator=g)
    labels = torch.arange(s.classes).repeat_interleave(s.ipc)
    return data, images, labels


def reference_side(s: EvalSetting, data, images, labels, epochs: int, device, repo: str | None):
    """A function training and testing one model the reference's way."""
    if repo:
        from .reference_loop import upstream_impl
        impl = upstream_impl(repo)
        utils = impl.DiffAugment.__globals__  # the upstream utils.py's namespace
        evaluate, tensor_dataset = utils["evaluate_synset"], utils["TensorDataset"]
    else:
        from fastdm.compat import TensorDataset as tensor_dataset
        from fastdm.compat import evaluate_synset as evaluate
        impl = None
    from fastdm.compat import ParamDiffAug, get_network
    param = impl.ParamDiffAug() if impl else ParamDiffAug()
    make_net = impl.get_network if impl else get_network
    test_x = data.normalize(data.test.images)
    loader = torch.utils.data.DataLoader(tensor_dataset(test_x, data.test.labels), batch_size=256,
                                         shuffle=False, num_workers=0)
    args = SimpleNamespace(lr_net=0.01, epoch_eval_train=epochs, batch_train=256, device=str(device),
                           dsa=True, dsa_strategy=STRATEGY, dsa_param=param, dc_aug_param=None)

    def run():
        net = make_net("ConvNet", s.channels, s.classes, (s.size, s.size))
        return evaluate(0, net, images, labels, loader, args)[2]
    return run


def fastdm_side(data, images, labels, epochs: int, device):
    cfg = EvalConfig(model="ConvNet", models=1, epochs=epochs, strategy=STRATEGY)

    def run():
        return evaluate_images(images, labels, data, cfg, device, progress=False)["acc_mean"]
    return run


def _timed(run):
    """run, as a function returning the seconds it took."""
    def timed() -> float:
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0
    return timed


def _child(args) -> None:
    """(Child process) time one side once on one setting; print its seconds as JSON."""
    s = SETTINGS[args.settings]
    data, images, labels = _data(s)
    device = resolve_device(args.device)
    if args.child == "reference":
        if args.reference_malloc == "kept":
            from fastdm import host_memory
            host_memory.keep_freed_memory()
        run = reference_side(s, data, images, labels, args.epochs, device, args.reference_repo)
    else:
        run = fastdm_side(data, images, labels, args.epochs, device)
    print(json.dumps({"seconds": _timed(run)()}))


def _in_child(side: str, name: str, args) -> float:
    cmd = [sys.executable, "-m", "benchmarks.eval_compare", "--child", side, "--settings", name,
           "--epochs", str(args.epochs), "--device", args.device,
           "--reference-malloc", args.reference_malloc]
    if args.reference_repo:
        cmd += ["--reference-repo", args.reference_repo]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"eval_compare: the {side} side failed on {name}: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval_compare", description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="mnist-ipc1", help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference-repo", metavar="PATH")
    ap.add_argument("--json")
    ap.add_argument("--in-process", action="store_true",
                    help="time both sides in this process (they then share fastdm's host-memory setting)")
    ap.add_argument("--reference-malloc", choices=("default", "kept"), default="default",
                    help="the reference process's malloc: glibc's default (as users run it) or "
                         "fastdm's kept freed memory")
    ap.add_argument("--child", choices=("reference", "fastdm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        raise SystemExit(f"eval_compare: unknown setting '{bad[0]}'; choose from {', '.join(SETTINGS)}")
    device = resolve_device(args.device)
    report = {"schema": "fastdm.eval_compare/1", "facts": run_facts(device), "epochs": args.epochs,
              "baseline": f"upstream:{args.reference_repo}" if args.reference_repo else "fastdm.compat",
              "processes": "shared" if args.in_process else "one per timed run",
              "reference_malloc": "shared with fastdm" if args.in_process else args.reference_malloc,
              "settings": {}}
    for name in names:
        s = SETTINGS[name]
        data, images, labels = _data(s)
        # each side: a function returning the seconds of one timed run
        if args.in_process:
            try:
                sides = {"reference": _timed(reference_side(s, data, images, labels, args.epochs,
                                                            device, args.reference_repo)),
                         "fastdm": _timed(fastdm_side(data, images, labels, args.epochs, device))}
            except FastDMError as e:
                raise SystemExit(f"eval_compare: {e}")
        else:
            sides = {k: (lambda k=k, name=name: _in_child(k, name, args)) for k in ("reference", "fastdm")}
        times = {k: [] for k in sides}
        order = list(sides)
        for r in range(args.repeats):
            for k in (order if r % 2 == 0 else order[::-1]):
                times[k].append(sides[k]())
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"seconds": med, "runs": times, "speedup": med["reference"] / med["fastdm"]}
        report["settings"][name] = row
        print(f"{name}: reference {med['reference']:.2f} s, fastdm {med['fastdm']:.2f} s per model "
              f"({args.epochs} epochs): {row['speedup']:.2f}x", file=sys.stderr, flush=True)
        if args.json:
            save_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
