"""benchmarks.gpu_suite: the prepared device run. Its steps' bookkeeping (budget, failures,
time limits) in the quick tier; the whole suite at --size tiny on the CPU in the slow tier, so
it cannot rot before a GPU runs it."""
import json
import sys

import pytest

from benchmarks import gpu_suite
from benchmarks.gpu_suite import Step, run_step


def test_a_step_is_recorded_when_it_fails_times_out_or_is_skipped():
    py = sys.executable
    failed = run_step(Step("f", [py, "-c", "print('x'); raise SystemExit(3)"], limit_s=30, min_s=1), 100)
    assert failed["status"] == "failed" and failed["rc"] == 3 and "x" in failed["output_tail"]
    slow = run_step(Step("t", [py, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                         limit_s=30, min_s=1), 2)
    assert slow["status"] == "timeout" and slow["limit_s"] == 2 and slow["seconds"] < 20
    skipped = run_step(Step("s", [py, "-c", "pass"], limit_s=30, min_s=20), 5)
    assert skipped["status"] == "skipped" and "5 s" in skipped["why"]
    ok = run_step(Step("o", [py, "-c", "pass"], limit_s=30, min_s=1), 100)
    assert ok["status"] == "ok" and ok["rc"] == 0


def test_full_suite_steps_cover_what_the_device_must_check(tmp_path):
    names = [s.name for s in gpu_suite.steps_for("cuda", "full", str(tmp_path), None, None)]
    assert names == ["tests", "compare-fp32", "compare-bf16", "dsa-kernels", "mmd-kernels",
                     "family-objectives", "eval-bench", "condense", "evaluate"]
    tests = gpu_suite.steps_for("cuda", "full", str(tmp_path), None, None)[0]
    assert tests.env == {"FASTDM_TEST_DEVICE": "cuda"} and set(gpu_suite.CUDA_TESTS) <= set(tests.argv)
    compare = gpu_suite.steps_for("cuda", "full", str(tmp_path), None, "/ref")[1]
    assert "cifar10-ipc10,cifar100-ipc50,tinyimagenet-ipc10" in compare.argv and "/ref" in compare.argv


@pytest.mark.slow
def test_the_tiny_suite_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "suite.json"
    rep = gpu_suite.main(["--device", "cpu", "--size", "tiny", "--budget-s", "900", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["steps"] == rep["steps"] and saved["facts"]["torch"]
    bad = {s["name"]: s.get("output_tail", s.get("why"))[-500:] for s in rep["steps"] if s["status"] != "ok"}
    assert not bad, bad
    assert rep["steps"][0]["tests"]["tests"] >= 2 and rep["steps"][0]["tests"]["failures"] == 0
    assert "speedup" in json.dumps(rep["steps"][1]["report"])
