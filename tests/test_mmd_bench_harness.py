"""benchmarks.mmd_bench: schema, arithmetic, the baselines compute the same quantities as the
fused ops, and argument errors (the Triton backend in the interpreter: the numbers are not
speed figures, the code paths are real)."""
import pytest
import torch

from benchmarks import mmd_bench
from fastdm.ops import gaussian_mmd as gauss
from fastdm.ops import linear_mmd as lin
from fastdm.ops import segments as seg


def test_tiny_run_schema_and_arithmetic(tmp_path):
    out = tmp_path / "mmd.json"
    report = mmd_bench.main(["--device", "cpu", "--backends", "torch,triton", "--linear-shape", "3x5x2x40",
                             "--gaussian-shape", "2x6x3x20", "--iters", "1", "--json", str(out)])
    assert out.exists() and report["schema"] == "fastdm.mmd_bench/1"
    assert [r["dtype"] for r in report["linear"]] == ["fp32", "bf16"]
    for r in report["linear"]:
        el = 4 if r["dtype"] == "fp32" else 2
        assert r["sums_bytes"] == 3 * 5 * 40 * el + 3 * 40 * 4
        assert r["loss_bytes"] == 3 * 5 * 40 * el + 3 * 3 * 2 * 40 * el
        for be in ("torch", "triton"):
            for part, nbytes in (("sums", r["sums_bytes"]), ("loss", r["loss_bytes"])):
                gbps = r[f"{be}_{part}_GBps"]
                assert gbps == pytest.approx(nbytes / (r[f"{be}_{part}_ms"] / 1e3) / 1e9)
                assert r[f"{be}_{part}_of_copy"] == pytest.approx(gbps / r["copy_GBps"])
            assert r[f"{be}_speedup_vs_plain"] == pytest.approx(r["plain_loss_ms"] / r[f"{be}_loss_ms"])
    for r in report["gaussian"]:
        for be in ("torch", "triton"):
            assert r[f"{be}_grad_speedup_vs_cdist"] == pytest.approx(r["cdist_grad_ms"] / r[f"{be}_grad_ms"])


def test_baselines_compute_the_same_quantities():
    g = torch.Generator().manual_seed(0)
    k, n, ipc, d = 3, 7, 2, 16
    real = torch.randn(k * n, d, generator=g) * 0.3
    syn = torch.randn(k * ipc, d, generator=g) * 0.3
    counts, syn_counts = torch.full((k,), n), torch.full((k,), ipc)
    sums = seg.segment_sum(real, counts)
    assert mmd_bench.plain_linear(real, syn, k, n, ipc) == pytest.approx(
        float(lin.linear_mmd(sums, counts, syn, syn_counts).sum()), rel=1e-5)
    for real_term in (True, False):
        assert mmd_bench.cdist_gaussian(real, syn, k, n, ipc, [0.5, 1.0], real_term) == pytest.approx(
            float(gauss.gaussian_mmd(real, counts, syn, syn_counts, [0.5, 1.0], real_term=real_term).sum()),
            rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("argv,msg", [
    (["--backends", "cuda"], "--backends"),
    (["--parts", "speed"], "--parts"),
    (["--dtypes", "fp8"], "--dtypes"),
    (["--linear-shape", "10x20"], "CLASSESxREALxIPCxD"),
    (["--gaussian-shape", "1x0x1x1"], "zero or negative"),
    (["--iters", "0"], "--iters"),
])
def test_argument_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        mmd_bench.main(["--device", "cpu"] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
