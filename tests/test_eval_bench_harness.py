"""benchmarks.eval_bench on a tiny case: schema, arithmetic, argument errors."""
import pytest

from benchmarks import eval_bench


def test_tiny_run(tmp_path):
    out = tmp_path / "eval.json"
    r = eval_bench.main(["--device", "cpu", "--models", "2", "--epochs", "0", "--ipc", "1",
                         "--classes", "3", "--size", "8", "--compile-backend", "aot_eager",
                         "--json", str(out)])
    assert out.exists() and r["schema"] == "fastdm.eval_bench/1" and r["images"] == 3
    assert r["speedup"] == pytest.approx(r["one_at_a_time_s"] / r["together_s"])
    assert r["together_s_per_epoch"] == pytest.approx(r["together_s"])  # epochs 0 = one pass
    assert r["best_speedup"] == pytest.approx(r["one_at_a_time_s"] / r[f"{r['best']}_s"])
    assert {"together_compiled_s", "one_at_a_time_compiled_s"} <= set(r)


def test_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        eval_bench.main(["--device", "cpu", "--models", "0"])
    assert e.value.code == 2 and "--models" in capsys.readouterr().err
