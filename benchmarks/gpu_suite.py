"""Everything a lent GPU should check, in one prepared run: the CUDA tests, the comparison with
the reference-style loop, the kernel benchmarks, the evaluation benchmark and a short
condense + evaluate, within a time budget, each step timed and recorded even when it fails.

    python -m benchmarks.gpu_suite --device cuda --json OUT.json [--budget-s 480] [--mnist-root DIR]
    python -m benchmarks.gpu_suite --device cpu --size tiny --json OUT.json   # the same steps, tiny

Steps run smallest and most informative first, each as its own process (a crash or a hang
costs one step, not the suite) with a time limit of its own, cut to what is left of the
budget; a step that would start with less than its minimum left is recorded as skipped. The
JSON (rewritten after every step, so a killed suite keeps what it did) holds the run facts and
per step: the command, exit status, seconds, the end of its output and the step's own JSON
report where it writes one. A summary table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

# the CUDA test subset: fused kernels against torch, the GPU tiers, compile without
# recompiles, bf16; with --device cpu the same files run their CPU cases (interpreter)
CUDA_TESTS = ["tests/test_ops_dsa.py", "tests/test_ops_mmd.py", "tests/test_family.py",
              "tests/test_stream.py", "tests/test_compile_embed.py", "tests/test_precision.py",
              "tests/test_train_batched.py", "tests/test_objectives.py"]
TINY_TESTS = ["tests/test_protocols.py::test_ranking_scores",
              "tests/test_ops_mmd.py::test_linear_uses_the_kernels_by_default_when_triton_is_chosen"]


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float                  # the step's own time limit
    min_s: float = 20.0             # not started with less than this left
    env: dict = field(default_factory=dict)
    report: str | None = None       # the JSON file the step writes (its --json)


def steps_for(device: str, size: str, work: str, mnist_root: str | None,
              reference_repo: str | None) -> list[Step]:
    py = sys.executable
    full = size == "full"
    j = lambda name: os.path.join(work, f"{name}.json")  # noqa: E731
    cuda_env = {"FASTDM_TEST_DEVICE": "cuda"} if device == "cuda" else {"TRITON_INTERPRET": "1"}
    tests = CUDA_TESTS if full else TINY_TESTS
    out = [Step("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                          "--junitxml", os.path.join(work, "tests.xml"), *tests],
                limit_s=150 if full else 120, min_s=30, env=cuda_env)]
    settings = "cifar10-ipc10,cifar100-ipc50,tinyimagenet-ipc10" if full else "toy-ipc2"
    iters = ["--iters", "5", "--warmup", "1"] if full else ["--iters", "1", "--warmup", "0", "--no-memory"]
    ref = ["--reference-repo", reference_repo] if reference_repo else []
    for precision in (("fp32", "bf16") if device == "cuda" else ("fp32",)):
        out.append(Step(f"compare-{precision}", [py, "-m", "benchmarks.compare", "--settings", settings,
                                                 "--device", device, "--precision", precision, *iters,
                                                 *ref, "--json", j(f"compare-{precision}")],
                        limit_s=120 if full else 90, report=j(f"compare-{precision}")))
    kernel_env = {} if device == "cuda" else {"TRITON_INTERPRET": "1"}
    if full:
        dsa = ["--iters", "20"]
        mmd = ["--iters", "20"]
        fam = ["--setting", "cifar10-ipc10", "--iters", "5", "--warmup", "1"]
        ev = ["--models", "10", "--epochs", "20"]
    else:
        dsa = ["--settings", "cifar10-ipc10", "--parts", "bandwidth", "--bandwidth-mb", "1",
               "--iters", "1", "--backends", "torch"]
        mmd = ["--linear-shape", "4x8x2x16", "--gaussian-shape", "4x8x2x16", "--dtypes", "fp32",
               "--iters", "1", "--backends", "torch"]
        fam = ["--setting", "mnist-ipc1", "--iters", "1", "--warmup", "0", "--per-class", "20",
               "--variants", "dm,ncfm"]
        ev = ["--models", "2", "--epochs", "1", "--ipc", "1", "--classes", "2", "--size", "8",
              "--compile-backend", "none"]
    out += [
        Step("dsa-kernels", [py, "-m", "benchmarks.dsa_bench", "--device", device, *dsa, "--json", j("dsa")],
             limit_s=60, env=kernel_env, report=j("dsa")),
        Step("mmd-kernels", [py, "-m", "benchmarks.mmd_bench", "--device", device, *mmd, "--json", j("mmd")],
             limit_s=60, env=kernel_env, report=j("mmd")),
        Step("family-objectives", [py, "-m", "benchmarks.family_cost", "--device", device, *fam,
                                   "--json", j("family")], limit_s=90, report=j("family")),
        Step("eval-bench", [py, "-m", "benchmarks.eval_bench", "--device", device, *ev, "--json", j("eval")],
             limit_s=90, report=j("eval")),
    ]
    run_dir = os.path.join(work, "condense")
    data = (["--dataset", "mnist", "--data-root", mnist_root, "--download"] if mnist_root
            else ["--dataset", "digits"])
    its = ["--iterations", "200" if full else "2", "--ipc", "10" if full else "1"]
    out.append(Step("condense", [py, "-m", "fastdm", "condense", *data, *its, "--device", device,
                                 "--out", run_dir, "--overwrite", "--no-progress"], limit_s=120))
    out.append(Step("evaluate", [py, "-m", "fastdm", "evaluate", os.path.join(run_dir, "synset.pt"),
                                 "--device", device, "--models", "5" if full else "1",
                                 "--epochs", "300" if full else "1", "--compare-random", "--no-progress"],
                    limit_s=120))
    return out


def _tests_summary(xml_path: str) -> dict | None:
    import xml.etree.ElementTree as ET
    if not os.path.isfile(xml_path):
        return None
    root = ET.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    out = {k: int(suite.get(k, 0)) for k in keys}
    out["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                           if c.find("failure") is not None or c.find("error") is not None][:20]
    return out


def run_step(step: Step, left_s: float) -> dict:
    rec = {"name": step.name, "command": " ".join(step.argv), "limit_s": step.limit_s}
    if left_s < step.min_s:
        return {**rec, "status": "skipped", "why": f"{left_s:.0f} s of the budget left"}
    limit = min(step.limit_s, left_s)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(step.argv, capture_output=True, text=True,
                           timeout=limit, env=env)
        rc, text = p.returncode, p.stdout + p.stderr
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired as e:
        rc = None
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = "timeout"
    rec.update(status=status, rc=rc, seconds=round(time.perf_counter() - t0, 2), limit_s=round(limit, 1),
               output_tail=text[-3000:])
    if step.report and os.path.isfile(step.report):
        with open(step.report) as fh:
            rec["report"] = json.load(fh)
    return rec


def summary_table(results: list[dict]) -> str:
    lines = [f"{'step':20} {'status':8} {'seconds':>8}  note"]
    for r in results:
        note = r.get("why", "")
        if r["name"] == "tests" and r.get("tests"):
            t = r["tests"]
            note = f"{t['tests']} tests, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
        elif r["name"].startswith("compare") and r.get("report"):
            note = ", ".join(f"{k} {v['speedup']:.1f}x" for k, v in r["report"].get("settings", {}).items()
                             if v.get("speedup"))
        elif r.get("status") in ("failed", "timeout"):
            tail = [ln for ln in r.get("output_tail", "").splitlines() if ln.strip()]
            note = tail[-1][:100] if tail else ""
        lines.append(f"{r['name']:20} {r['status']:8} {r.get('seconds', 0):8.1f}  {note}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--budget-s", type=float, default=480, help="seconds for all steps (default 480)")
    ap.add_argument("--mnist-root", help="a folder holding MNIST/raw/*.gz for the condense step "
                                         "(default: the embedded digits)")
    ap.add_argument("--reference-repo", help="the upstream DatasetCondensation checkout for compare")
    ap.add_argument("--only", help="comma-separated step names to run (default: all)")
    ap.add_argument("--json", required=True, metavar="PATH")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")

    import torch
    sys.path.insert(0, os.getcwd())
    from benchmarks.measure import run_facts, save_json
    facts = run_facts(torch.device(args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu"))
    facts["cuda_available"] = torch.cuda.is_available()
    work = tempfile.mkdtemp(prefix="gpu-suite-")
    report = {"facts": facts, "device": args.device, "size": args.size, "budget_s": args.budget_s,
              "work": work, "steps": []}
    if args.device == "cuda" and not torch.cuda.is_available():
        report["error"] = "--device cuda but torch sees no CUDA device"
        save_json(report, args.json)
        print(f"gpu_suite: {report['error']}", file=sys.stderr)
        return report
    steps = steps_for(args.device, args.size, work, args.mnist_root, args.reference_repo)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            ap.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in wanted]
    t_start = time.perf_counter()
    for step in steps:
        left = args.budget_s - (time.perf_counter() - t_start)
        rec = run_step(step, left)
        if step.name == "tests":
            rec["tests"] = _tests_summary(os.path.join(work, "tests.xml"))
        report["steps"].append(rec)
        report["seconds"] = round(time.perf_counter() - t_start, 2)
        save_json(report, args.json)
        print(f"gpu_suite: {rec['name']}: {rec['status']} ({rec.get('seconds', 0):.1f} s)", flush=True)
    print(summary_table(report["steps"]))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
