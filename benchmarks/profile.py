"""Where the time of a DM iteration goes: a torch.profiler trace and a top-ops table.

    python -m benchmarks.profile cifar10-ipc10 --side fastdm --iters 2 --out profiles/

Writes OUT/SETTING-SIDE-DEVICE.json (open it in chrome://tracing or https://ui.perfetto.dev)
and OUT/SETTING-SIDE-DEVICE.txt, and prints the table: the ops with the most self time
(device time on CUDA) over ``--iters`` iterations after one warm-up iteration.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from fastdm.devices import resolve_device, synchronize
from fastdm.errors import FastDMError

from .reference_loop import fastdm_impl, upstream_impl
from .settings import SETTINGS, baseline_fits, baseline_side, fastdm_side


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    ap.add_argument("setting", choices=list(SETTINGS), metavar="SETTING",
                    help=f"one of: {', '.join(SETTINGS)}")
    ap.add_argument("--side", choices=("fastdm", "baseline"), default="fastdm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=2, help="profiled iterations (after 1 warm-up)")
    ap.add_argument("--top", type=int, default=25, help="rows in the table")
    ap.add_argument("--out", default="profiles", help="folder for the trace and the table")
    ap.add_argument("--real-per-class", type=int, help="real images stored per class")
    ap.add_argument("--reference-repo", metavar="PATH", help="profile the upstream code (baseline side)")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.top < 1:
        ap.error("--iters and --top must be >= 1")
    s = SETTINGS[args.setting]
    per_class = s.per_class if args.real_per_class is None else args.real_per_class
    if per_class < s.ipc:
        ap.error(f"--real-per-class must be at least the setting's ipc ({s.ipc})")
    if args.reference_repo and args.side != "baseline":
        ap.error("--reference-repo profiles the upstream code: use it with --side baseline")
    try:
        device = resolve_device(args.device)
        os.makedirs(args.out, exist_ok=True)
        if args.side == "fastdm":
            engine = fastdm_side(s, per_class, device)
            state = engine.initial_state()
            step = lambda: engine.step(state)  # noqa: E731
        else:
            reason = baseline_fits(s, per_class, device)
            if reason:
                raise FastDMError(f"the baseline cannot run {args.setting} here: {reason}")
            impl = upstream_impl(args.reference_repo) if args.reference_repo else fastdm_impl()
            step = baseline_side(s, per_class, device, impl).step
    except FastDMError as e:
        raise SystemExit(f"error: {e}")
    except OSError as e:
        raise SystemExit(f"error: --out {args.out}: {e.strerror}")
    step()  # warm-up: first-call costs (allocator, cuDNN autotuning) stay out of the profile
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(args.iters):
            with record_function(f"dm_iteration_{i}"):
                step()
            synchronize(device)
    stem = os.path.join(args.out, f"{args.setting}-{args.side}-{device.type}")
    prof.export_chrome_trace(stem + ".json")
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=sort, row_limit=args.top)
    with open(stem + ".txt", "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"trace: {stem}.json  table: {stem}.txt", file=sys.stderr)
    return stem + ".json"


if __name__ == "__main__":
    main()
