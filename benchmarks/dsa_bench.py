"""DSA throughput: bytes per second against the device's copy bandwidth, and one DM iteration's
augmentation work against the reference-style per-class loop.

    python -m benchmarks.dsa_bench --device cuda [--json benchmarks/results/h100-dsa.json]
    python -m benchmarks.dsa_bench --device cpu --backends torch --settings cifar10-ipc10

bandwidth: a batch of --bandwidth-mb MB (default 72: 6000 CIFAR-size fp32 images), each op of
mode S alone, the DM mix (mode S, every op present) and mode M, with fp32, bf16 and uint8
NHWC input (normalisation fused). Bytes moved = images read + images written (the minimum any
implementation must move; colour's extra mean pass is not counted, so it shows as lost
bandwidth). Copy bandwidth: ``dst.copy_(src)`` on the same number of fp32 bytes.

iteration: per setting, the augmentation of one DM iteration: every class's real batch
(uint8 in the store) and synthetic images forward, plus the synthetic images' input gradient.
fused = one table draw + one call for all real images + one for all synthetic ones;
reference = per class, normalised float real images and two DiffAugment calls with a seed
(torch ops, the reference's draws), one backward over the summed outputs. Both sides apply the
same op to each class (mode S; the reference's seeds choose it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fastdm import rng
from fastdm.augment import DSAParams, parse_strategy, sample_siamese
from fastdm.compat import DiffAugment, ParamDiffAug, draw_reference_table
from fastdm.devices import resolve_device, synchronize
from fastdm.errors import FastDMError
from fastdm.ops.dsa import dsa_augment

from .measure import parse_backends, parse_list, run_facts, save_json
from .settings import SETTINGS, parse_settings

STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = parse_strategy(STRATEGY)


def timeit(fn, device, iters: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(nbytes: int, device, iters: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timeit(lambda: dst.copy_(src), device, iters)


def bandwidth_rows(device, backends, mb: float, iters: int) -> list[dict]:
    n = max(1, int(mb * 2**20) // (3 * 32 * 32 * 4))
    hw = (32, 32)
    x32 = torch.randn(n, 3, *hw, device=device)
    inputs = {"fp32": x32, "bf16": x32.to(torch.bfloat16),
              "uint8-nhwc": (x32.abs() * 60).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()}
    keys = torch.arange(n, device=device)
    copy = copy_bandwidth(x32.numel() * 4, device, iters)
    rows = []
    cases = [(op, "S", (op,)) for op in OPS] + [("mix (DM)", "S", OPS), ("all (mode M)", "M", OPS)]
    for kind, x in inputs.items():
        u8 = x.dtype == torch.uint8
        out_bytes = x.numel() * (4 if u8 else x.element_size())
        moved = x.numel() * x.element_size() + out_bytes
        for name, mode, ops in cases:
            table = sample_siamese(ops, DSAParams(aug_mode=mode), hw, 0, rng.AUG, 0, keys=keys)
            row = {"input": kind, "ops": name, "mode": mode, "images": n, "bytes_moved": moved}
            for be in backends:
                kw = dict(mean=[0.5] * 3, std=[0.25] * 3, channels_last=True) if u8 else {}
                s = timeit(lambda: dsa_augment(x, table, backend=be, **kw), device, iters)
                row[f"{be}_ms"] = s * 1e3
                row[f"{be}_GBps"] = moved / s / 1e9
                row[f"{be}_of_copy"] = moved / s / copy
            if "torch" in backends and "triton" in backends:
                row["speedup"] = row["torch_ms"] / row["triton_ms"]
            rows.append(row)
            _say(_fmt_bw(row, backends))
    return [{"copy_GBps": copy / 1e9}] + rows


def _fmt_bw(row, backends) -> str:
    parts = [f"{row['input']:>10} {row['ops']:>13}"]
    for be in backends:
        parts.append(f"{be} {row[f'{be}_ms']:8.3f} ms {row[f'{be}_GBps']:7.1f} GB/s "
                     f"({100 * row[f'{be}_of_copy']:5.1f}% of copy)")
    return "  ".join(parts)


def iteration_row(name: str, device, backends, iters: int, real_per_class: int | None) -> dict:
    s = SETTINGS[name]
    per = min(s.batch_real, real_per_class or s.batch_real)
    hw = (s.size, s.size)
    g = torch.Generator(device=device).manual_seed(0)
    real_u8 = torch.randint(0, 256, (s.classes * per, s.channels, *hw), dtype=torch.uint8,
                            device=device, generator=g)
    mean, std = [0.5] * s.channels, [0.25] * s.channels
    real_f = ((real_u8.float() / 255 - 0.5) / 0.25)  # the reference holds normalised floats
    syn = torch.randn(s.classes * s.ipc, s.channels, *hw, device=device, generator=g)
    up = torch.randn_like(syn)
    keys = torch.arange(s.classes, device=device)
    g_real = keys.repeat_interleave(per)
    g_syn = keys.repeat_interleave(s.ipc)
    p = DSAParams()
    param = ParamDiffAug()
    # the same op per class on both sides (mode S): the reference's seeds pick them
    ops = torch.tensor([int(draw_reference_table(syn[:1], STRATEGY, 1000 + c, param)[0].op[0])
                        for c in range(s.classes)], device=device)

    def fused(be):
        def work():
            t = sample_siamese(OPS, p, hw, 0, rng.AUG, 0, keys=keys)
            t.op = ops
            r = dsa_augment(real_u8, t, g_real, mean=mean, std=std, backend=be)
            x = syn.detach().requires_grad_(True)
            y = dsa_augment(x, t, g_syn, backend=be)
            return r, torch.autograd.grad(y, x, up)[0]
        return work

    def reference():
        x = syn.detach().requires_grad_(True)
        total = 0
        outs = []
        for c in range(s.classes):
            seed = 1000 + c
            outs.append(DiffAugment(real_f[c * per:(c + 1) * per], STRATEGY, seed, param, backend="torch"))
            ys = DiffAugment(x[c * s.ipc:(c + 1) * s.ipc], STRATEGY, seed, param, backend="torch")
            total = total + (ys * up[c * s.ipc:(c + 1) * s.ipc]).sum()
        return outs, torch.autograd.grad(total, x)[0]

    row = {"setting": name, "classes": s.classes, "real_per_class": per, "ipc": s.ipc, "px": s.size}
    row["reference_ms"] = timeit(reference, device, iters, warmup=1) * 1e3
    for be in backends:
        row[f"fused_{be}_ms"] = timeit(fused(be), device, iters, warmup=1) * 1e3
        row[f"speedup_{be}"] = row["reference_ms"] / row[f"fused_{be}_ms"]
    _say(f"{name}: reference {row['reference_ms']:.2f} ms  " + "  ".join(
        f"fused[{be}] {row[f'fused_{be}_ms']:.2f} ms ({row[f'speedup_{be}']:.1f}x)" for be in backends))
    return row


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dsa_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default=None,
                    help="comma-separated from torch,triton (default: both on CUDA, torch on CPU)")
    ap.add_argument("--settings", default="cifar10-ipc10,cifar100-ipc10,tinyimagenet-ipc10")
    ap.add_argument("--parts", default="bandwidth,iteration", help="bandwidth,iteration")
    ap.add_argument("--bandwidth-mb", type=float, default=72)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--real-per-class", type=int, default=None,
                    help="cap the real images per class (default: the setting's batch, 256)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
        args.settings = parse_settings(args.settings)
    except FastDMError as e:
        ap.error(str(e))
    args.backends = parse_backends(ap, args.backends, args.device)
    args.parts = parse_list(ap, args.parts, ("bandwidth", "iteration"), "--parts")
    if args.iters < 1:
        ap.error("--iters must be at least 1")
    if not args.bandwidth_mb > 0:
        ap.error("--bandwidth-mb must be positive")
    if args.real_per_class is not None and args.real_per_class < 1:
        ap.error("--real-per-class must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = {"schema": "fastdm.dsa_bench/1", "facts": run_facts(args.device),
              "backends": args.backends, "bandwidth": [], "iteration": []}

    def save():
        save_json(report, args.json)

    if "bandwidth" in args.parts:
        report["bandwidth"] = bandwidth_rows(args.device, args.backends, args.bandwidth_mb, args.iters)
        save()
    if "iteration" in args.parts:
        for name in args.settings:
            report["iteration"].append(iteration_row(name, args.device, args.backends, args.iters,
                                                     args.real_per_class))
            save()
    return report


if __name__ == "__main__":
    main()
