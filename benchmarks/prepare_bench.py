"""fastdm prepare throughput: images decoded + resized + stored per second, by worker count.

    python -m benchmarks.prepare_bench --images 2000 --width 500 --height 375 --workers 0,1,2

Generates an ImageFolder of JPEGs (smooth random content at the given size; ImageNet's
average photo is about 400x350) in a temp folder, then prepares a 64 px store from it with each
worker count (0: decoding in the main process) and reports images/s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from fastdm.data.prepare import prepare_store

import torch

from .measure import run_facts, save_json


def make_jpegs(root: str, images: int, classes: int, width: int, height: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = os.path.join(root, "train" if (i // classes) % 10 else "val", f"c{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((width, height), Image.BILINEAR)  # photo-like smoothness
        im.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.prepare_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if min(args.images, args.classes, args.width, args.height, args.size) < 1 or args.images < 10 * args.classes:
        ap.error("--images must be >= 10 x --classes and every size positive")
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    if not workers or min(workers) < 0:
        ap.error("--workers takes integers >= 0")
    report = {"schema": "fastdm.prepare_bench/1", "facts": run_facts(torch.device("cpu")), "images": args.images,
              "source_size": [args.width, args.height], "size": args.size, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        make_jpegs(src, args.images, args.classes, args.width, args.height)
        for w in workers:
            out = os.path.join(tmp, f"store{w}")
            t0 = time.perf_counter()
            prepare_store("imagefolder", src, out, args.size, workers=w, progress=False)
            s = time.perf_counter() - t0
            report["rows"][str(w)] = {"s": s, "images_per_s": args.images / s}
            print(f"workers {w}: {s:.2f} s, {args.images / s:.0f} images/s", file=sys.stderr)
    save_json(report, args.json)
    print(json.dumps({k: v for k, v in report.items() if k != "facts"}))
    return report


if __name__ == "__main__":
    main()
