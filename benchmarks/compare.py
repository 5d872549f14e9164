"""fastdm's engine against the reference-style baseline, per DM iteration, in one process.

    python -m benchmarks.compare --settings cifar10-ipc10,cifar100-ipc10 --device cuda --iters 5

For each setting: both sides are built on random data of the setting's shape, warmed up, then
timed alternately (which side goes first alternates too), and the median is reported. Per side:
ms per iteration, peak memory (CUDA: max_memory_allocated in the timing process, as the side's
data plus the peak working memory of its iterations; CPU: the peak resident set size of one
iteration of that side alone in a fresh process, over the process's size before it built
anything; --no-memory skips that extra iteration), the embedder FLOPs per
iteration (benchmarks/flops.py), achieved TFLOP/s and how far it is from the floor time at the
device's peak (measured by a large matmul in this run unless --peak-tflops is given).
The JSON report (--json) is rewritten after every setting, so an interrupted run keeps what it
measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from fastdm.devices import resolve_device, synchronize
from fastdm.errors import FastDMError
from fastdm.host_memory import release_freed
from fastdm.io import atomic_json_dump

from .measure import (ROOT, CudaMemory, conv_precision, host_available, measured_peaks,
                      peak_rss_bytes, reset_peak_rss, rss_bytes, run_facts)
from .reference_loop import fastdm_impl, upstream_impl
from .settings import (SETTINGS, Setting, baseline_fits, baseline_side, fastdm_side,
                       parse_settings, uint8_bytes)

SCHEMA = "fastdm.compare/1"
SIDES = ("baseline", "fastdm")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Side:
    """One side of a comparison: its step function, its times and (CUDA) its memory."""

    def __init__(self, name: str, build, device: torch.device):
        self.name, self.device = name, device
        self.cuda = CudaMemory(device) if device.type == "cuda" else None
        before = self.cuda.current() if self.cuda else 0
        self.obj = build()
        if name == "fastdm":
            self.state = self.obj.initial_state()
        self.data_bytes = self.cuda.current() - before if self.cuda else self.tensor_bytes()
        self.times, self.working = [], 0

    def tensor_bytes(self) -> int:
        """Bytes of the side's persistent tensors (after its first step)."""
        if self.name == "fastdm":  # images, momentum
            return self.obj.stream.images.nbytes + 2 * self.state.images.nbytes
        return self.obj.images_all.nbytes + 3 * self.obj.image_syn.nbytes  # images, .grad, momentum

    def step(self, timed: bool = True) -> None:
        synchronize(self.device)
        if self.cuda:
            base = self.cuda.current()
            self.cuda.start()
        t0 = time.perf_counter()
        if self.name == "fastdm":
            self.obj.step(self.state)
        else:
            self.obj.step()
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        if self.cuda:
            self.working = max(self.working, self.cuda.peak() - base)
        if timed:
            self.times.append(elapsed)

    def report(self, flops: int, floor_ms: float, memory: dict | None, extra: dict) -> dict:
        ms = statistics.median(self.times) * 1e3
        out = {"ms_per_iter": round(ms, 3), "times_ms": [round(t * 1e3, 3) for t in self.times],
               "tflops": round(flops / (ms * 1e-3) / 1e12, 4), "x_floor": round(ms / floor_ms, 2)}
        if self.cuda:
            memory = {"peak_mem_mb": _mb(self.data_bytes + self.working), "data_mb": _mb(self.data_bytes),
                      "working_mb": _mb(self.working), "mem_kind": CudaMemory.kind}
        return {**out, **(memory or {"peak_mem_mb": None, "mem_kind": "not measured (--no-memory)"}),
                **extra}


class ChildSide(Side):
    """The baseline timed in a process of its own: fastdm's engine keeps freed host memory
    process-wide (fastdm.host_memory), which a baseline in the same process would gain from
    too; its users run it under glibc's default malloc."""

    def __init__(self, name: str, setting: str, device: torch.device, args):
        self.name, self.device, self.cuda, self.obj, self.state = name, device, None, None, None
        self.working = 0
        cmd = [sys.executable, "-m", "benchmarks.compare", "--settings", setting, "--device", str(device),
               "--sides", name, "--iters", str(args.iters), "--warmup", str(args.warmup),
               "--no-memory", "--peak-tflops", str(args.peak_used), "--baseline-process", "shared",
               *_side_options(args)]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "child.json")
            done = subprocess.run(cmd + ["--json", out], cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0 or not os.path.exists(out):
                why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise FastDMError(f"the {name} side's own process failed on {setting}: {why}")
            with open(out) as f:
                got = json.load(f)["settings"][setting]["sides"][name]
        if "times_ms" not in got:
            raise FastDMError(f"the {name} side's own process skipped {setting}: {got.get('skipped')}")
        self.times = [t / 1e3 for t in got["times_ms"]]


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _mb(n: int) -> float:
    return round(n / 2 ** 20, 1)


def _side_options(args) -> list[str]:
    opts = []
    for opt in ("real_per_class", "class_chunk", "reference_repo", "compile", "precision", "conv"):
        if getattr(args, opt) is not None:
            opts += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    return opts


def probe_cpu_memory(name: str, side: str, args) -> dict:
    """Peak RSS of one side's iteration, in a fresh process: in the timing process RSS also
    holds pages the other side freed, so it cannot be split between the sides."""
    cmd = [sys.executable, "-m", "benchmarks.compare", "--settings", name, "--device", "cpu",
           "--probe-memory", side, *_side_options(args)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.probe_timeout)
    except subprocess.TimeoutExpired:
        return {"peak_mem_mb": None, "mem_kind": f"probe timed out after {args.probe_timeout} s"}
    if done.returncode != 0:  # keep the timings; say why memory is missing
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        _say(f"[{name}] {side}: memory probe failed: {why}")
        return {"peak_mem_mb": None, "mem_kind": f"probe failed: {why}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_probe(name: str, side: str, args) -> None:
    """(Child process) build one side, run one iteration, print its memory as JSON."""
    s = SETTINGS[name]
    per_class = args.real_per_class or s.per_class
    impl = upstream_impl(args.reference_repo) if args.reference_repo else fastdm_impl()
    cpu = torch.device("cpu")

    def build(s, per_class, chunk=None):
        return (lambda: baseline_side(s, per_class, cpu, impl)) if side == "baseline" else (
            lambda: fastdm_side(s, per_class, cpu, chunk, args.compile, args.precision, args.conv))

    # one toy iteration first, so one-time library costs (kernel code, thread pools) are not
    # booked to the setting
    toy = SETTINGS["toy-ipc2"]
    Side(side, build(toy, toy.per_class), cpu).step()
    gc.collect()
    release_freed()  # the warm-up's freed blocks stay in fastdm's heap (host_memory); not live data
    start = rss_bytes()
    obj = Side(side, build(s, per_class, args.class_chunk), cpu)
    gc.collect()
    exact = reset_peak_rss()  # building (e.g. uint8 -> float) has its own transient peak
    obj.step()
    peak = peak_rss_bytes() - start
    print(json.dumps({"peak_mem_mb": _mb(peak), "data_mb": _mb(obj.data_bytes),
                      "working_mb": _mb(max(0, peak - obj.data_bytes)),
                      "mem_kind": "cpu_peak_rss" + ("" if exact else "_incl_setup")}))


def run_setting(name: str, s: Setting, device, args, impl) -> dict:
    per_class = args.real_per_class or s.per_class
    flops = s.flops(per_class)
    out = {"setting": s.to_dict(), "real_per_class": per_class, "flops": flops, "sides": {}}
    builders = {
        "baseline": lambda: baseline_side(s, per_class, device, impl),
        "fastdm": lambda: fastdm_side(s, per_class, device, args.class_chunk, args.compile,
                                      args.precision, args.conv),
    }
    skip = {}
    host = host_available()
    store = uint8_bytes(s, per_class)  # fastdm's side starts from a host uint8 store
    if "fastdm" in args.sides and host is not None and store > 0.6 * host:
        skip["fastdm"] = (f"its uint8 training set ({store / 1e9:.1f} GB) is more than 60 % of "
                          f"the {host / 1e9:.1f} GB available host memory")
    if "baseline" in args.sides:
        reason = baseline_fits(s, per_class, device,
                               store if "fastdm" in args.sides and "fastdm" not in skip else 0)
        if reason:
            skip["baseline"] = reason
    for side in SIDES:
        if side not in args.sides:
            skip.setdefault(side, "not selected (--sides)")
    sides = {}
    for side in SIDES:
        if side in skip:
            _say(f"[{name}] {side}: skipped: {skip[side]}")
            continue
        if side == "baseline" and args.baseline_own:
            _say(f"[{name}] timing {side} in a process of its own (glibc's malloc) ...")
            sides[side] = ChildSide(side, name, device, args)
            continue
        _say(f"[{name}] building {side} ...")
        try:
            sides[side] = Side(side, builders[side], device)
            for _ in range(args.warmup):
                sides[side].step(timed=False)
        except torch.OutOfMemoryError as e:  # the other side may still fit
            sides.pop(side, None)
            skip[side] = f"out of memory: {str(e).splitlines()[0]}"
            _say(f"[{name}] {side}: {skip[side]}")
            _free(device)
    order = [side for side in sides.values() if not isinstance(side, ChildSide)]
    try:
        for i in range(args.iters):
            for side in (order if i % 2 == 0 else order[::-1]):
                side.step()
                _say(f"[{name}] {side.name} iteration {i + 1}/{args.iters}: {side.times[-1] * 1e3:.1f} ms")
    except torch.OutOfMemoryError as e:
        for side_name in sides:
            skip[side_name] = f"out of memory while timing: {str(e).splitlines()[0]}"
        sides = {}
        _free(device)
    floor_ms = flops["per_iteration"] / (args.peak_used * 1e12) * 1e3
    out["floor_ms"] = round(floor_ms, 3)
    if "bf16" in args.peaks:
        out["floor_ms_bf16"] = round(flops["per_iteration"] / (args.peaks["bf16"] * 1e12) * 1e3, 3)
    extras = {}
    for side_name, side in sides.items():  # free this setting's data before probes and the next setting
        extras[side_name] = ({"impl": impl.source} if side_name == "baseline" else
                             {k: side.obj.plan.to_dict()[k] for k in
                              ("class_chunk", "backends", "compiled", "precision", "conv",
                               "winograd_layers")})
        side.obj = side.state = None
    _free(device)
    for side_name, side in sides.items():
        memory = None
        if device.type == "cpu" and args.memory:
            _say(f"[{name}] {side_name}: measuring peak memory in a fresh process ...")
            memory = probe_cpu_memory(name, side_name, args)
        # each side against the floor of the arithmetic it ran (the baseline is fp32; fastdm
        # in bf16 is measured against the bf16 peak when that peak was measured)
        bf16 = extras[side_name].get("precision") == "bf16" and "floor_ms_bf16" in out
        out["sides"][side_name] = side.report(flops["per_iteration"],
                                              out["floor_ms_bf16"] if bf16 else floor_ms, memory,
                                              {**extras[side_name], "floor": "bf16" if bf16 else "fp32"})
    for side_name, reason in skip.items():
        out["sides"][side_name] = {"skipped": reason}
    b, f = out["sides"].get("baseline", {}), out["sides"].get("fastdm", {})
    out["speedup"] = (round(b["ms_per_iter"] / f["ms_per_iter"], 3)
                      if "ms_per_iter" in b and "ms_per_iter" in f else None)
    return out


def table(report: dict) -> str:
    head = ("setting", "side", "ms/iter", "speedup", "peak MB", "GFLOP/iter", "TFLOP/s", "floor ms",
            "x floor")
    rows = [head]
    for name, r in report["settings"].items():
        gflop = r["flops"]["per_iteration"] / 1e9
        for side in SIDES:
            d = r["sides"].get(side)
            if d is None:
                continue
            if "skipped" in d:
                rows.append((name, side, "skipped", "", "", f"{gflop:.1f}", "", f"{r['floor_ms']:.1f}", ""))
                continue
            speed = f"{r['speedup']:.2f}x" if side == "fastdm" and r["speedup"] else ""
            mem = "-" if d["peak_mem_mb"] is None else f"{d['peak_mem_mb']:.0f}"
            rows.append((name, side, f"{d['ms_per_iter']:.1f}", speed, mem,
                         f"{gflop:.1f}", f"{d['tflops']:.3f}", f"{r['floor_ms']:.1f}", f"{d['x_floor']:.1f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="cifar10-ipc10",
                    help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per side (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per side first")
    ap.add_argument("--sides", default="baseline,fastdm", help="which sides to run")
    ap.add_argument("--json", metavar="PATH", help="write the report here")
    ap.add_argument("--peak-tflops", type=float, help="the device peak for the floor time "
                    "(default: a large matmul measured in this run)")
    ap.add_argument("--real-per-class", type=int, help="real images stored per class (default: "
                    "the dataset's; only memory depends on it, not the work per iteration)")
    ap.add_argument("--class-chunk", type=int, help="fastdm's class chunk (default: automatic)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="fastdm's embedder under torch.compile (default auto, as fastdm condense); "
                         "the warm-up iterations absorb the compilation")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="fastdm's embedder arithmetic (default auto, as fastdm condense: bf16 on "
                         "CUDA, fp32 on the CPU)")
    ap.add_argument("--conv", choices=["auto", "winograd", "direct"], default="auto",
                    help="fastdm's real-branch convolutions (default auto, as fastdm condense: "
                         "Winograd on the CPU in fp32)")
    ap.add_argument("--reference-repo", metavar="PATH", help="time the upstream code of a "
                    "VICO-UoE/DatasetCondensation checkout instead of fastdm.compat's")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="CPU: skip the peak-memory probe (one extra iteration per side)")
    ap.add_argument("--probe-timeout", type=float, default=3600, help="seconds (default 3600)")
    ap.add_argument("--baseline-process", choices=["auto", "own", "shared"], default="auto",
                    help="time the baseline in a process of its own, under glibc's default malloc "
                         "as its users run it, or in this one, sharing fastdm's host-memory "
                         "setting and interleaved with fastdm (auto: own on the CPU)")
    ap.add_argument("--probe-memory", choices=SIDES, help=argparse.SUPPRESS)  # internal: the probe
    args = ap.parse_args(argv)
    try:
        args.settings = parse_settings(args.settings)
        args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        if not args.sides or any(s not in SIDES for s in args.sides):
            raise FastDMError(f"--sides takes a comma-separated subset of {', '.join(SIDES)}")
        for opt in ("iters", "real_per_class", "class_chunk"):
            v = getattr(args, opt)
            if v is not None and v < 1:
                raise FastDMError(f"--{opt.replace('_', '-')} must be >= 1")
        if args.warmup < 0:
            raise FastDMError("--warmup must be >= 0")
        if args.peak_tflops is not None and not 0 < args.peak_tflops < float("inf"):
            raise FastDMError("--peak-tflops must be a positive number")
        if args.real_per_class is not None:
            low = [n for n in args.settings if SETTINGS[n].ipc > args.real_per_class]
            if low:
                raise FastDMError(f"--real-per-class {args.real_per_class} is below the ipc of {low[0]}")
        if args.json:
            folder = os.path.dirname(os.path.abspath(args.json))
            if os.path.isdir(args.json) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise FastDMError(f"--json {args.json}: not a file path in a writable folder")
        if args.reference_repo:
            args.reference_repo = os.path.abspath(args.reference_repo)
    except FastDMError as e:
        ap.error(str(e))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.probe_memory:
        return memory_probe(args.settings[0], args.probe_memory, args)
    try:
        device = resolve_device(args.device)
        impl = upstream_impl(args.reference_repo) if args.reference_repo else fastdm_impl()
    except FastDMError as e:
        raise SystemExit(f"error: {e}")
    torch.manual_seed(0)
    np.random.seed(0)
    _say("measuring the matmul peak ...")
    args.peaks = measured_peaks(device)
    precision = conv_precision(device)
    args.peak_used = args.peak_tflops or args.peaks[precision]
    args.baseline_own = args.baseline_process == "own" or (
        args.baseline_process == "auto" and device.type == "cpu" and set(args.sides) == set(SIDES))
    report = {"schema": SCHEMA, **run_facts(device), "iters": args.iters, "warmup": args.warmup,
              "peaks_tflops": args.peaks, "peak_tflops_used": args.peak_used,
              "peak_source": "--peak-tflops" if args.peak_tflops else f"measured matmul {precision}",
              "baseline_impl": impl.source,
              "baseline_process": "own (glibc's malloc)" if args.baseline_own else "shared with fastdm",
              "settings": {}}
    try:
        for name in args.settings:
            report["settings"][name] = run_setting(name, SETTINGS[name], device, args, impl)
            if args.json:
                atomic_json_dump(report, args.json)
    except KeyboardInterrupt:
        _say("interrupted: the report holds the settings finished so far")
    except FastDMError as e:
        raise SystemExit(f"error: {e}")
    print(table(report))
    if args.json:
        atomic_json_dump(report, args.json)
        _say(f"report: {args.json}")
    return report


if __name__ == "__main__":
    main()
