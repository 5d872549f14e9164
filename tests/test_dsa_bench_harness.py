"""benchmarks.dsa_bench: schema, arithmetic and argument errors on a tiny run (the Triton
backend in the interpreter: the numbers are not speed figures, the code paths are real)."""
import pytest

from benchmarks import dsa_bench


@pytest.mark.slow  # 16 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_tiny_run_schema_and_arithmetic(tmp_path):
    out = tmp_path / "dsa.json"
    report = dsa_bench.main(["--device", "cpu", "--backends", "torch,triton", "--settings", "toy-ipc2",
                             "--bandwidth-mb", "0.05", "--iters", "1", "--real-per-class", "3",
                             "--json", str(out)])
    assert out.exists() and report["schema"] == "fastdm.dsa_bench/1"
    copy, *rows = report["bandwidth"]
    assert copy["copy_GBps"] > 0
    assert len(rows) == 3 * 8  # fp32, bf16, uint8 x (six ops, the DM mix, mode M)
    for r in rows:
        for be in ("torch", "triton"):
            assert r[f"{be}_GBps"] == pytest.approx(r["bytes_moved"] / (r[f"{be}_ms"] / 1e3) / 1e9)
            assert r[f"{be}_of_copy"] == pytest.approx(r[f"{be}_GBps"] / copy["copy_GBps"])
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["triton_ms"])
    u8 = next(r for r in rows if r["input"] == "uint8-nhwc")
    assert u8["bytes_moved"] == u8["images"] * 3 * 32 * 32 * (1 + 4)  # bytes in, floats out
    (it,) = report["iteration"]
    assert it["setting"] == "toy-ipc2" and it["real_per_class"] == 3
    assert it["speedup_triton"] == pytest.approx(it["reference_ms"] / it["fused_triton_ms"])


@pytest.mark.parametrize("argv,msg", [
    (["--backends", "cuda"], "--backends"),
    (["--parts", "speed"], "--parts"),
    (["--iters", "0"], "--iters"),
    (["--settings", "mnist"], "unknown setting"),
])
def test_argument_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        dsa_bench.main(["--device", "cpu"] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
