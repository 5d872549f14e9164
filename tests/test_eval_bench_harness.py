"""benchmarks.eval_bench on a tiny case: schema, arithmetic, argument errors."""
import pytest

from benchmarks import eval_bench


@pytest.mark.slow  # a whole benchmark run (6 s)
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


def test_protocol_cost_times_every_protocol(tmp_path, monkeypatch):
    from benchmarks import protocol_cost
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    monkeypatch.setenv("FASTDM_CACHE", str(tmp_path / "cache"))
    condense_dataset(CondenseConfig(dataset="digits", iterations=1, model="ConvNetW32", batch_real=8),
                     str(tmp_path / "run"), progress=False)
    rep = protocol_cost.main([str(tmp_path / "run" / "synset.pt"), "--epochs", "1", "--repeats", "1",
                              "--protocols", "dm,soft,dance", "--teacher-epochs", "1",
                              "--teacher-images-per-class", "3", "--json", str(tmp_path / "r.json")])
    assert set(rep["protocols"]) == {"dm", "soft", "dance"} and rep["teacher"]["accuracy"] > 0
    dance = rep["protocols"]["dance"]
    assert dance["seconds_per_model"] == pytest.approx(dance["seconds_per_epoch"] * 1500, rel=1e-3)
    assert dance["tests_during_training"] == 6


def test_eval_compare_times_both_sides(monkeypatch, tmp_path):
    """benchmarks.eval_compare on a tiny setting: both sides train and test one model, the report
    holds each side's seconds and the ratio (the baseline: fastdm.compat's evaluate_synset)."""
    import json

    from benchmarks import eval_compare
    monkeypatch.setitem(eval_compare.SETTINGS, "tiny", eval_compare.EvalSetting(1, 8, 1, test=20, classes=2))
    out = tmp_path / "r.json"
    report = eval_compare.main(["--settings", "tiny", "--epochs", "1", "--json", str(out), "--in-process"])
    row = report["settings"]["tiny"]
    assert set(row["seconds"]) == {"reference", "fastdm"} and all(v > 0 for v in row["seconds"].values())
    assert row["speedup"] == row["seconds"]["reference"] / row["seconds"]["fastdm"]
    saved = json.load(open(out))
    assert saved["baseline"] == "fastdm.compat" and saved["processes"] == "shared"


def test_eval_compare_times_each_run_in_its_own_process(monkeypatch, capsys):
    """By default every timed run is a child process (the reference then has glibc's malloc, as
    its users do); the child prints its seconds as JSON, the parent alternates the sides."""
    import json

    from benchmarks import eval_compare
    monkeypatch.setitem(eval_compare.SETTINGS, "tiny", eval_compare.EvalSetting(1, 8, 1, test=20, classes=2))
    for side in ("reference", "fastdm"):
        eval_compare.main(["--child", side, "--settings", "tiny", "--epochs", "0"])
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seconds"] > 0
    calls = []

    def fake(side, name, args):
        calls.append((side, name, args.reference_malloc))
        return {"reference": 4.0, "fastdm": 2.0}[side]
    monkeypatch.setattr(eval_compare, "_in_child", fake)
    report = eval_compare.main(["--settings", "tiny", "--epochs", "1", "--repeats", "2",
                                "--reference-malloc", "kept"])
    assert calls == [("reference", "tiny", "kept"), ("fastdm", "tiny", "kept"),
                     ("fastdm", "tiny", "kept"), ("reference", "tiny", "kept")]
    assert report["settings"]["tiny"]["speedup"] == 2.0
    assert report["processes"] == "one per timed run" and report["reference_malloc"] == "kept"
