"""Host gather of class-balanced real batches from a uint8 store, against memcpy bandwidth.

    python -m benchmarks.gather_bench --classes 200 --per-class 500 --size 64 --batch-real 256

Writes a store-shaped .npy (random pixels) to --dir, reads it once (page cache warm, as in a
long run), then times, per iteration's worth of batches (batch_real per class, every class):
  memcpy      torch copy of a buffer of the same size (the bandwidth ceiling)
  mapped      torch.index_select from the memory-mapped file (the 'disk' tier, page cache warm)
  memory      torch.index_select from an in-RAM copy (the 'memory'/'pinned' tiers' gather)
  stream      the engine's RealStream over the mapped store, chunk by chunk with gathering
              ahead in worker threads (what an iteration sees)
and reports GB/s, images/s and each gather's fraction of memcpy. On CUDA (``--device cuda``)
the 'gpu' and 'pinned' tiers are timed too, end to end onto the device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

from fastdm.data.sampler import RealSampler
from fastdm.data.stream import RealStream

from .measure import best_time, run_facts, save_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gather_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8, help="classes per chunk for the stream row")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="where to write the store file (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for name in ("classes", "per_class", "size", "batch_real", "chunk", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    device = torch.device(args.device)
    k, n = args.classes, args.per_class
    shape = (k * n, 3, args.size, args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "train.npy")
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        for i in range(0, shape[0], 4096):  # random pixels, written in blocks
            arr[i:i + 4096] = np.random.default_rng(i).integers(0, 256, arr[i:i + 4096].shape, np.uint8)
        arr.flush()
        del arr
        mapped = torch.from_numpy(np.load(path, mmap_mode="c"))
        mapped.sum(dtype=torch.int64)  # page cache warm
        memory = mapped.clone()
        counts = torch.full((k,), n)
        offsets = torch.arange(k) * n

        sampler = RealSampler(counts, offsets, args.batch_real, seed=0)  # the engine's
        rows, _ = sampler.indices(0, 0, k)
        nbytes = rows.numel() * mapped[0].numel()
        src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
        src.fill_(1)
        out = torch.empty((rows.numel(), *shape[1:]), dtype=torch.uint8)
        rows_it = iter(range(1, 10 ** 9))
        chunks = [(c, min(k, c + args.chunk)) for c in range(0, k, args.chunk)]

        def stream_iteration(stream):
            it = next(rows_it)
            stream.plan([(it, c0, c1) for c0, c1 in chunks])
            for c0, c1 in chunks:
                stream.take((it, c0, c1))

        ways = {
            "memcpy": lambda: dst.copy_(src),
            "mapped": lambda: torch.index_select(mapped, 0, rows, out=out),
            "memory": lambda: torch.index_select(memory, 0, rows, out=out),
        }
        streams = {"stream_disk": RealStream(mapped, torch.device("cpu"), "disk", sampler, mapped=True)}
        if device.type == "cuda":
            streams["stream_pinned"] = RealStream(mapped, device, "pinned", sampler, mapped=True)
            streams["stream_gpu"] = RealStream(mapped, device, "gpu", sampler)
        for name, st in streams.items():
            ways[name] = (lambda st=st: (stream_iteration(st), torch.cuda.synchronize(device)
                                         if device.type == "cuda" else None))
        report = {"schema": "fastdm.gather_bench/1", "facts": run_facts(device), "classes": k,
                  "per_class": n, "size": args.size, "batch_real": args.batch_real,
                  "images_per_iteration": rows.numel(), "bytes_per_iteration": nbytes,
                  "threads": torch.get_num_threads(), "rows": {}}
        for name, fn in ways.items():
            s = best_time(fn, args.repeat)
            report["rows"][name] = {"s": s, "gb_per_s": nbytes / s / 1e9, "images_per_s": rows.numel() / s}
        for st in streams.values():
            st.close()
    copy = report["rows"]["memcpy"]["gb_per_s"]
    for name, r in report["rows"].items():
        r["fraction_of_memcpy"] = r["gb_per_s"] / copy
        print(f"{name:14s} {r['s'] * 1e3:9.1f} ms  {r['gb_per_s']:7.2f} GB/s  {r['images_per_s']:12.0f} img/s  "
              f"{100 * r['fraction_of_memcpy']:5.1f} % of memcpy", file=sys.stderr)
    save_json(report, args.json)
    print(json.dumps({k: v for k, v in report.items() if k != "facts"}))
    return report


if __name__ == "__main__":
    main()
