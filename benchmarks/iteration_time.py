"""Per-iteration time of fastdm's DM engine on data of a named shape.

    python -m benchmarks.iteration_time --setting cifar10-ipc10 --device cpu --iters 5

Pixel values do not change the work, so the data are random uint8 images of the right shape
(the full benchmark harness against the reference loop is benchmarks/compare, a later issue).
Prints one JSON line: median and all per-iteration times after warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastdm.condense import DMEngine, device_name
from fastdm.config import CondenseConfig
from fastdm.data import ClassImages, Dataset
from fastdm.devices import resolve_device, synchronize

SETTINGS = {  # classes, images per class, channels, size, ipc, model
    "cifar10-ipc1": (10, 5000, 3, 32, 1, "ConvNet"),
    "cifar10-ipc10": (10, 5000, 3, 32, 10, "ConvNet"),
    "cifar10-ipc50": (10, 5000, 3, 32, 50, "ConvNet"),
    "cifar100-ipc10": (100, 500, 3, 32, 10, "ConvNet"),
    "tinyimagenet-ipc10": (200, 500, 3, 64, 10, "ConvNetD4"),
}


def synthetic_dataset(classes, per_class, channels, size) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    split = ClassImages(images, labels, classes)
    return Dataset("synthetic", split, split, [str(c) for c in range(classes)], (0.5,) * channels,
                   (0.25,) * channels, "ConvNet", "color_crop_cutout_flip_scale_rotate")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="cifar10-ipc10", choices=sorted(SETTINGS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-real", type=int, default=256)
    args = ap.parse_args(argv)
    classes, per_class, ch, size, ipc, model = SETTINGS[args.setting]
    data = synthetic_dataset(classes, per_class, ch, size)
    device = resolve_device(args.device)
    cfg = CondenseConfig(dataset="synthetic", ipc=ipc, iterations=args.iters + args.warmup,
                         batch_real=args.batch_real, model=model, device=str(device)).resolved(data)
    engine = DMEngine(cfg, data, device)
    state = engine.initial_state()
    times = []
    for i in range(args.warmup + args.iters):
        synchronize(device)
        t0 = time.perf_counter()
        engine.step(state)
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"setting": args.setting, "device": str(device),
                      "device_name": device_name(device),
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "batch_real": args.batch_real, "class_chunk": engine.chunk,
                      "median_s": round(statistics.median(times), 4), "times_s": [round(t, 4) for t in times]}))


if __name__ == "__main__":
    main()
