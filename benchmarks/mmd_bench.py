"""MMD throughput: DM's linear loss in bytes per second against the device's copy bandwidth, and
the Gaussian multi-kernel MMD against a torch cdist-based implementation.

    python -m benchmarks.mmd_bench --device cuda [--json benchmarks/results/h100-mmd.json]
    python -m benchmarks.mmd_bench --device cpu --backends torch

linear, per shape CLASSESxREALxIPCxD (default 1000x256x10x2048: ImageNet-1K, batch_real 256,
ConvNet features) and dtype (fp32, bf16):
- ``real sums``: the real side reduced to per-class sums (fastdm.ops.seg.segment_sum).
  Bytes = features read + sums written.
- ``loss+grad``: real sums, the loss, and the synthetic features' gradient: fused
  (segment_sum + linear_mmd + backward) vs the plain torch expression
  ``((real.view(k, n, D).mean(1) - syn.view(k, ipc, D).mean(1)) ** 2).sum()`` + autograd.
  Bytes = real read + synthetic read twice (forward, backward) + gradient written.
Copy bandwidth: ``dst.copy_(src)`` on the real features' fp32 bytes (read + write).

gaussian, per shape (default 100x256x10x2048) and bandwidths 0.5,1,2 (absolute, on features of
unit-variance entries scaled by 1/sqrt(D)): forward without the real-real term + backward (what
a DM iteration needs) and the full value (forward with it); fused vs the torch path
(fastdm.ops.gauss.torch_gaussian_mmd, batched bmm) vs a cdist-based implementation (batched
``torch.cdist`` per class, exp, sums; autograd).
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastdm.devices import resolve_device
from fastdm.errors import FastDMError
from fastdm.ops import gaussian_mmd as gauss
from fastdm.ops import linear_mmd as lin
from fastdm.ops import segments as seg

from .dsa_bench import copy_bandwidth, timeit
from .measure import parse_backends, parse_list, run_facts, save_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BANDWIDTHS = [0.5, 1.0, 2.0]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        k, n, ipc, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FastDMError(f"shape '{text}' is not CLASSESxREALxIPCxD (e.g. 1000x256x10x2048)") from None
    if min(k, n, ipc, d) < 1:
        raise FastDMError(f"shape '{text}' has a zero or negative size")
    return k, n, ipc, d


def plain_linear(real, syn, k, n, ipc):
    """The expression a DM codebase writes (one loss, all classes)."""
    d = real.shape[1]
    return ((real.view(k, n, d).float().mean(1) - syn.view(k, ipc, d).float().mean(1)) ** 2).sum()


def cdist_gaussian(real, syn, k, n, ipc, bandwidths, real_term):
    """MMD^2 by batched torch.cdist per class: the usual torch implementation."""
    d = real.shape[1]
    r, s = real.view(k, n, d).float(), syn.view(k, ipc, d).float()

    def ksum(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * bw * bw)) for bw in bandwidths).sum((1, 2))

    loss = ksum(s, s) / ipc ** 2 - 2 * ksum(r, s) / (n * ipc)
    if real_term:
        loss = loss + ksum(r, r) / n ** 2
    return loss.sum()


def _grad_of(fn, syn):
    def work():
        (g,) = torch.autograd.grad(fn(), syn)
        return g
    return work


def linear_rows(shape, device, backends, dtypes, iters) -> list[dict]:
    k, n, ipc, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    real32 = torch.randn(k * n, d, device=device, generator=gen)
    copy = copy_bandwidth(real32.numel() * 4, device, iters)
    rows = []
    for name in dtypes:
        real = real32.to(DTYPES[name])
        syn = torch.randn(k * ipc, d, device=device, generator=gen).to(DTYPES[name]).requires_grad_(True)
        counts = torch.full((k,), n)
        syn_counts = torch.full((k,), ipc)
        el = real.element_size()
        sums_bytes = real.numel() * el + k * d * 4
        loss_bytes = real.numel() * el + 3 * syn.numel() * el
        row = {"shape": f"{k}x{n}x{ipc}x{d}", "dtype": name, "copy_GBps": copy / 1e9,
               "sums_bytes": sums_bytes, "loss_bytes": loss_bytes}

        def rate(prefix, seconds, nbytes):
            row[f"{prefix}_ms"] = seconds * 1e3
            row[f"{prefix}_GBps"] = nbytes / seconds / 1e9
            row[f"{prefix}_of_copy"] = nbytes / seconds / copy

        rate("plain_loss", timeit(_grad_of(lambda: plain_linear(real, syn, k, n, ipc), syn), device,
                                  iters), loss_bytes)
        for be in backends:
            rate(f"{be}_sums", timeit(lambda: seg.segment_sum(real, counts, backend=be), device,
                                      iters), sums_bytes)

            def fused():
                sums = seg.segment_sum(real, counts, backend=be)
                return lin.linear_mmd(sums, counts, syn, syn_counts, backend=be).sum()
            rate(f"{be}_loss", timeit(_grad_of(fused, syn), device, iters), loss_bytes)
            row[f"{be}_speedup_vs_plain"] = row["plain_loss_ms"] / row[f"{be}_loss_ms"]
        rows.append(row)
        _say("  ".join([f"linear {row['shape']} {name}: plain {row['plain_loss_ms']:.2f} ms "
                        f"({100 * row['plain_loss_of_copy']:.1f}% of copy)"]
                       + [f"{be} sums {row[f'{be}_sums_ms']:.2f} ms ({100 * row[f'{be}_sums_of_copy']:.1f}%) "
                          f"loss+grad {row[f'{be}_loss_ms']:.2f} ms ({100 * row[f'{be}_loss_of_copy']:.1f}%, "
                          f"{row[f'{be}_speedup_vs_plain']:.2f}x plain)" for be in backends]))
    return rows


def gaussian_rows(shape, device, backends, dtypes, iters) -> list[dict]:
    k, n, ipc, d = shape
    gen = torch.Generator(device=device).manual_seed(1)
    rows = []
    for name in dtypes:
        scale = d ** -0.5  # distances ~ sqrt(2): the bandwidths 0.5-2 are in range
        real = (torch.randn(k * n, d, device=device, generator=gen) * scale).to(DTYPES[name])
        syn = (torch.randn(k * ipc, d, device=device, generator=gen) * scale).to(DTYPES[name])
        syn.requires_grad_(True)
        counts, syn_counts = torch.full((k,), n), torch.full((k,), ipc)
        row = {"shape": f"{k}x{n}x{ipc}x{d}", "dtype": name, "bandwidths": BANDWIDTHS}
        row["cdist_grad_ms"] = 1e3 * timeit(_grad_of(
            lambda: cdist_gaussian(real, syn, k, n, ipc, BANDWIDTHS, False), syn), device, iters)
        with torch.no_grad():
            row["cdist_value_ms"] = 1e3 * timeit(
                lambda: cdist_gaussian(real, syn, k, n, ipc, BANDWIDTHS, True), device, iters)
        for be in backends:
            def loss(real_term):
                return gauss.gaussian_mmd(real, counts, syn, syn_counts, BANDWIDTHS,
                                        real_term=real_term, backend=be).sum()
            row[f"{be}_grad_ms"] = 1e3 * timeit(_grad_of(lambda: loss(False), syn), device, iters)
            with torch.no_grad():
                row[f"{be}_value_ms"] = 1e3 * timeit(lambda: loss(True), device, iters)
            row[f"{be}_grad_speedup_vs_cdist"] = row["cdist_grad_ms"] / row[f"{be}_grad_ms"]
            row[f"{be}_value_speedup_vs_cdist"] = row["cdist_value_ms"] / row[f"{be}_value_ms"]
        rows.append(row)
        _say("  ".join([f"gaussian {row['shape']} {name}: cdist grad {row['cdist_grad_ms']:.2f} ms "
                        f"value {row['cdist_value_ms']:.2f} ms"]
                       + [f"{be} grad {row[f'{be}_grad_ms']:.2f} ms ({row[f'{be}_grad_speedup_vs_cdist']:.2f}x) "
                          f"value {row[f'{be}_value_ms']:.2f} ms ({row[f'{be}_value_speedup_vs_cdist']:.2f}x)"
                          for be in backends]))
    return rows


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mmd_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default=None,
                    help="comma-separated from torch,triton (default: both on CUDA, torch on CPU)")
    ap.add_argument("--parts", default="linear,gaussian", help="linear,gaussian")
    ap.add_argument("--linear-shape", default="1000x256x10x2048", help="CLASSESxREALxIPCxD")
    ap.add_argument("--gaussian-shape", default="100x256x10x2048", help="CLASSESxREALxIPCxD")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
        args.linear_shape = parse_shape(args.linear_shape)
        args.gaussian_shape = parse_shape(args.gaussian_shape)
    except FastDMError as e:
        ap.error(str(e))
    args.backends = parse_backends(ap, args.backends, args.device)
    args.parts = parse_list(ap, args.parts, ("linear", "gaussian"), "--parts")
    args.dtypes = parse_list(ap, args.dtypes, tuple(DTYPES), "--dtypes")
    if args.iters < 1:
        ap.error("--iters must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = {"schema": "fastdm.mmd_bench/1", "facts": run_facts(args.device),
              "backends": args.backends, "linear": [], "gaussian": []}

    def save():
        save_json(report, args.json)

    if "linear" in args.parts:
        report["linear"] = linear_rows(args.linear_shape, args.device, args.backends, args.dtypes, args.iters)
        save()
    if "gaussian" in args.parts:
        report["gaussian"] = gaussian_rows(args.gaussian_shape, args.device, args.backends, args.dtypes,
                                           args.iters)
        save()
    return report


if __name__ == "__main__":
    main()
