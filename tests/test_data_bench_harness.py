"""benchmarks.gather_bench and benchmarks.prepare_bench on tiny cases: schema and arithmetic."""
import pytest

from benchmarks import gather_bench, prepare_bench


def test_gather_bench_tiny(tmp_path):
    out = tmp_path / "g.json"
    r = gather_bench.main(["--classes", "3", "--per-class", "20", "--size", "8", "--batch-real", "5",
                           "--chunk", "2", "--repeat", "1", "--dir", str(tmp_path), "--json", str(out)])
    assert out.exists() and r["schema"] == "fastdm.gather_bench/1"
    assert r["images_per_iteration"] == 15 and r["bytes_per_iteration"] == 15 * 3 * 64
    assert set(r["rows"]) == {"memcpy", "mapped", "memory", "stream_disk"}
    for row in r["rows"].values():
        assert row["gb_per_s"] == pytest.approx(r["bytes_per_iteration"] / row["s"] / 1e9)
    assert r["rows"]["memcpy"]["fraction_of_memcpy"] == 1.0


def test_prepare_bench_tiny(tmp_path):
    r = prepare_bench.main(["--images", "30", "--classes", "3", "--width", "40", "--height", "30",
                            "--size", "16", "--workers", "0", "--json", str(tmp_path / "p.json")])
    assert r["rows"]["0"]["images_per_s"] == pytest.approx(30 / r["rows"]["0"]["s"])
    with pytest.raises(SystemExit):
        prepare_bench.main(["--workers", "x"])
