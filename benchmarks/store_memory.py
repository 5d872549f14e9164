"""Peak memory of condensing a generated many-class store at high ipc, by class chunk.

    python -m benchmarks.store_memory --classes 250,1000 --chunks 25,100 --ipc 50 --size 16

What must be bounded by the chunk (activations, real batches) is separated from what is the
run's state and grows with classes x ipc whatever the chunk (the synthetic images, their
momentum and gradient: 3 x classes x ipc x 3 x S x S float32). One iteration per setting; on
the CPU each setting runs in a fresh process and reports its peak RSS growth over the
imported libraries, on CUDA torch.cuda.max_memory_allocated. The store is random pixels
(write_store), read through the disk tier on the CPU so that the store's pages are not counted
as the run's memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from .measure import save_json

CHILD = """
import json, sys
import torch
from benchmarks.measure import peak_rss_bytes, reset_peak_rss
from fastdm.condense_job import condense_dataset
from fastdm.config import CondenseConfig
root, out, chunk, ipc, batch_real, device = sys.argv[1:7]
torch.zeros(1)
cuda = device.startswith("cuda")
reset_peak_rss()
base = torch.cuda.memory_allocated() if cuda else peak_rss_bytes()
cfg = CondenseConfig(dataset="store", data_root=root, ipc=int(ipc), iterations=1,
                     batch_real=int(batch_real), class_chunk=int(chunk), device=device,
                     compile="off", checkpoint_every=0, real_tier="auto" if cuda else "disk")
res = condense_dataset(cfg, out=out, progress=False)
peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
m = res["metrics"]
print(json.dumps({"growth_bytes": peak - base, "tier": m["plan"]["real_tier"], "model": m["config"]["model"],
                  "s_per_iteration": m["timings"]["per_iteration_s"]}))
"""


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise SystemExit(f"--{what} must be positive integers, got {text!r}")
    return vals


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.store_memory", description=__doc__.split("\n")[0])
    ap.add_argument("--classes", default="250,1000")
    ap.add_argument("--chunks", default="25,100", help="classes per chunk")
    ap.add_argument("--ipc", type=int, default=50)
    ap.add_argument("--per-class", type=int, default=60, help="real images per class in the store")
    ap.add_argument("--batch-real", type=int, default=16)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    classes, chunks = _ints(args.classes, "classes"), _ints(args.chunks, "chunks")
    if min(args.ipc, args.per_class, args.batch_real, args.size) < 1 or args.ipc > args.per_class:
        raise SystemExit("--ipc, --per-class, --batch-real, --size must be >= 1 and ipc <= per-class")
    from fastdm.data.store import write_store
    from .measure import run_facts
    import torch
    report = {"schema": "fastdm.store_memory/1", "facts": run_facts(torch.device(args.device)),
              "ipc": args.ipc, "size": args.size, "batch_real": args.batch_real, "rows": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        for k in classes:
            root = os.path.join(tmp, f"store{k}")
            g = np.random.default_rng(k)
            s, n = args.size, args.per_class
            write_store(root, {"train": (g.integers(0, 256, (k * n, 3, s, s), dtype=np.uint8), [n] * k),
                               "val": (g.integers(0, 256, (k, 3, s, s), dtype=np.uint8), [1] * k)},
                        [f"c{c}" for c in range(k)])
            state = 3 * k * args.ipc * 3 * s * s * 4
            for chunk in chunks:
                out = os.path.join(tmp, f"run{k}-{chunk}")
                done = subprocess.run([sys.executable, "-c", CHILD, root, out, str(chunk), str(args.ipc),
                                       str(args.batch_real), args.device],
                                      capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise SystemExit(f"classes {k} chunk {chunk} failed:\n{done.stderr[-3000:]}")
                got = json.loads(done.stdout.strip().splitlines()[-1])
                row = {"classes": k, "chunk": min(chunk, k), **got, "state_bytes": state,
                       "beyond_state_bytes": got["growth_bytes"] - state}
                report["rows"].append(row)
                print(f"classes {k:5d} chunk {row['chunk']:4d}: peak growth {got['growth_bytes'] / 1e6:8.1f} MB "
                      f"= state {state / 1e6:8.1f} MB + {row['beyond_state_bytes'] / 1e6:7.1f} MB "
                      f"({got['s_per_iteration']:.1f} s/iteration, {got['model']}, {got['tier']})",
                      file=sys.stderr)
    save_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
