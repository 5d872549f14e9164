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


@pytest.mark.slow  # subprocess runs
def test_store_memory_tiny(tmp_path):
    from benchmarks import store_memory
    r = store_memory.main(["--classes", "3,6", "--chunks", "1,6", "--ipc", "2", "--per-class", "4",
                           "--batch-real", "2", "--size", "8", "--json", str(tmp_path / "m.json")])
    assert r["schema"] == "fastdm.store_memory/1" and len(r["rows"]) == 4
    for row in r["rows"]:
        assert row["state_bytes"] == 3 * row["classes"] * 2 * 3 * 8 * 8 * 4
        assert row["beyond_state_bytes"] == row["growth_bytes"] - row["state_bytes"] > 0
        assert row["tier"] == "disk" and row["chunk"] == min(row["classes"], row["chunk"])
    assert [(row["classes"], row["chunk"]) for row in r["rows"]] == [(3, 1), (3, 3), (6, 1), (6, 6)]
    with pytest.raises(SystemExit):
        store_memory.main(["--chunks", "0"])


def test_winograd_bench_tiny(tmp_path):
    from benchmarks import winograd_bench
    r = winograd_bench.main(["--batch", "3", "--layers", "3:9,17:6", "--out-channels", "5",
                             "--repeat", "1", "--torch-winograd", "--json", str(tmp_path / "w.json")])
    assert r["schema"] == "fastdm.winograd_bench/1" and len(r["rows"]) == 2
    for row in r["rows"]:
        assert row["direct"]["speedup_vs_direct"] == 1.0
        for way in ("direct_nhwc", "winograd", "torch_winograd"):
            assert row[way]["rel_error"] < 1e-4
    with pytest.raises(SystemExit):
        winograd_bench.main(["--layers", "3x9"])
