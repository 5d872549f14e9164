"""The CPU embedder's 3x3 convolutions: direct (PyTorch/oneDNN) against Winograd F(4x4, 3x3)
(fastdm.ops.winograd: native transforms + one torch.bmm), layer by layer.

    python -m benchmarks.winograd_bench --batch 2560 --json benchmarks/results/cpu-winograd.json

Layers: the ConvNet's three at 32 px (cifar10-ipc10's real branch: 10 classes x 256 images),
or ``--layers C:H,...`` (input channels : square input size; 128 output channels, padding 1).
Rows per layer, best of --repeat after one warm-up, forward under inference mode:
  direct          F.conv2d on NCHW input (what the engine ran before)
  direct_nhwc     F.conv2d on channels_last input
  winograd        winograd_conv2d (the engine's real branch on the CPU)
  torch_winograd  the same algorithm in plain torch (``--torch-winograd``; why native transforms)
and each row's largest error against a float64 direct convolution, relative to the largest
output.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from fastdm.ops.winograd import reference_winograd_conv2d, winograd_conv2d

from .measure import best_time, run_facts, save_json

CIFAR_LAYERS = "3:32,128:16,128:8"


def _layers(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        out = []
    if not out or any(len(t) != 2 or min(t) < 1 for t in out):
        raise SystemExit(f"--layers: expected C:H[,C:H...] with positive integers, got '{text}'")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.winograd_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2560, help="images per convolution (default 2560)")
    ap.add_argument("--layers", default=CIFAR_LAYERS, help=f"C:H,... (default {CIFAR_LAYERS})")
    ap.add_argument("--out-channels", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--torch-winograd", action="store_true", help="also time the plain-torch Winograd")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeat < 1 or args.out_channels < 1:
        ap.error("--batch, --repeat and --out-channels must be >= 1")
    rows = []
    g = torch.Generator().manual_seed(0)
    for c, h in _layers(args.layers):
        x = torch.randn(args.batch, c, h, h, generator=g)
        w = torch.randn(args.out_channels, c, 3, 3, generator=g) / (9 * c) ** 0.5
        b = torch.randn(args.out_channels, generator=g)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        ways = {"direct": lambda: F.conv2d(x, w, b, padding=1),
                "direct_nhwc": lambda: F.conv2d(x_cl, w, b, padding=1),
                "winograd": lambda: winograd_conv2d(x_cl, w, b, 1)}
        if args.torch_winograd:
            ways["torch_winograd"] = lambda: reference_winograd_conv2d(x, w, b, 1)
        with torch.inference_mode():
            ref = F.conv2d(x[:64].double(), w.double(), b.double(), padding=1)
            row = {"in_channels": c, "size": h, "batch": args.batch,
                   "gflop_direct": 2 * args.batch * h * h * args.out_channels * c * 9 / 1e9}
            for name, fn in ways.items():
                s = best_time(fn, args.repeat)
                err = float((fn()[:64].double() - ref).abs().max() / ref.abs().max())
                row[name] = {"s": round(s, 5), "rel_error": err}
            for name in ways:
                row[name]["speedup_vs_direct"] = round(row["direct"]["s"] / row[name]["s"], 3)
        rows.append(row)
        print(f"C={c:4d} {h:3d}px: " + "  ".join(
            f"{n} {row[n]['s'] * 1e3:8.1f} ms ({row[n]['speedup_vs_direct']:.2f}x, err {row[n]['rel_error']:.1e})"
            for n in ways), flush=True)
    report = {"schema": "fastdm.winograd_bench/1", **run_facts(torch.device("cpu")), "rows": rows}
    if args.json:
        save_json(report, args.json)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
