"""The run plan: every auto resolved once (device, backends, convolutions, precision, compile,
tier, chunk, objective), its cost figures, --dry-run (one JSON line, nothing written, seconds
even for an ImageNet-size store), and metrics.json recording the plan the run used."""
import json
import os
import time

import numpy as np
import pytest
import torch

from conftest import make_dataset, plan_for
from fastdm import native
from fastdm.cli import main
from fastdm.data.store import write_store
from fastdm.footprint import embed_flops_per_image
from fastdm.plan import CHUNK_BUDGET

KEYS = {"device", "backends", "conv", "precision", "compiled", "real_tier", "class_chunk",
        "objective", "flops_per_iteration", "estimated_peak_bytes"}


def dry_run(capsys, *argv):
    code = main(["condense", *argv, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    plan = dry_run(capsys, "--dataset", "digits", "--out", str(out))
    assert KEYS <= set(plan)
    assert not out.exists() and os.listdir(tmp_path) == []  # not even runs/
    assert plan["device"] == "cpu" and plan["objective"] == "dm" and plan["precision"] == "fp32"
    assert plan["backends"] == {"dsa": "torch", "segment_sum": "torch", "linear_mmd": "torch"}
    assert plan["config"]["ipc"] == 1 and plan["config"]["iterations"] == 400  # digits' schedule
    assert plan["compiled"] is False and plan["real_tier"] == "memory"  # 8 px on the CPU
    # FLOPs: the embedder's forward of every real and synthetic image and the synthetic backward
    per_image = embed_flops_per_image("ConvNet", 1, 8).matmul
    assert plan["flops_per_iteration"] == per_image * (10 * 64 + 2 * 10)
    m3d = dry_run(capsys, "--dataset", "digits", "--objective", "m3d")
    assert m3d["backends"] == {"dsa": "torch", "segment_sum": "torch", "gaussian_mmd": "torch"}
    assert m3d["config"]["bandwidths"] == [0.5, 1.0, 2.0]


def test_dry_run_does_not_build_the_native_kernels(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTDM_NATIVE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(native, "_state", {})
    built = []
    monkeypatch.setattr(native, "load", lambda name="winograd": built.append(name))
    plan = dry_run(capsys, "--dataset", "digits")
    assert built == [] and plan["conv"] == ("winograd" if native.unavailable() is None else "direct")
    assert not any("built on the first run" in n for n in plan["notes"]) or not native.built()
    # a source tree without an installed library: the plan says the first run builds it
    monkeypatch.setattr(native, "_prebuilt_spec", lambda: None)
    plan = dry_run(capsys, "--dataset", "digits")
    if plan["conv"] == "winograd":
        assert any("built on the first run" in n for n in plan["notes"])
    assert built == []


def test_dry_run_of_an_imagenet_size_store_takes_seconds(tmp_path, capsys):
    """1000 classes, 1,281,167 images of 3 x 64 x 64 (a 15.7 GB store, sparse here): mapped,
    never read, so the plan takes seconds and chooses the disk tier only when RAM is short."""
    root = tmp_path / "in1k"
    counts = [1281167 // 1000 + (1 if c < 1281167 % 1000 else 0) for c in range(1000)]
    tiny = np.zeros((1000, 3, 64, 64), np.uint8)
    write_store(str(root), {"train": (tiny, [1] * 1000), "val": (tiny, [1] * 1000)},
                [f"n{c:08d}" for c in range(1000)])
    index = json.loads((root / "index.json").read_text())
    index["splits"]["train"].update(images=sum(counts), counts=counts,
                                    offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist())
    (root / "index.json").write_text(json.dumps(index))
    np.lib.format.open_memmap(root / "train.npy", mode="w+", dtype=np.uint8,
                              shape=(sum(counts), 3, 64, 64))  # sparse: no data written
    t0 = time.perf_counter()
    plan = dry_run(capsys, "--dataset", "store", "--data-root", str(root), "--ipc", "50")
    took = time.perf_counter() - t0
    assert took < 30, took
    assert plan["real_bytes"] == sum(counts) * 3 * 64 * 64 and plan["num_classes"] == 1000
    assert plan["real_tier"] in ("memory", "disk") and plan["config"]["model"] == "ConvNetD4"
    # 256 real + 2 x 50 synthetic passes of ConvNetD4 per class
    per_image = embed_flops_per_image("ConvNetD4", 3, 64, 1000).matmul
    assert plan["flops_per_iteration"] == per_image * 1000 * (256 + 2 * 50)


def test_plan_resolution_rules():
    data = make_dataset(num_classes=6, per_class=(12, 9, 15, 10, 11, 13), size=(16, 16))
    p = plan_for(data, ipc=2, batch_real=8, model="ConvNetW32", device="cpu")
    # the CPU budget: images x pixels / 1024 per chunk
    assert p.class_chunk == min(6, int(CHUNK_BUDGET["cpu"] // ((8 + 2) * 16 * 16 / 1024)))
    assert p.chunks[0] == (0, p.class_chunk) and p.chunks[-1][1] == 6
    assert plan_for(data, ipc=2, model="ConvNetBN", device="cpu").class_chunk == 6  # BN mixes classes
    assert plan_for(data, ipc=2, class_chunk=4, device="cpu").chunks == [(0, 4), (4, 6)]
    shard = plan_for(data, ipc=2, class_chunk=4, device="cpu", classes=(2, 5))
    assert shard.classes == (2, 5) and shard.chunks == [(2, 5)]
    assert shard.real_bytes == int(data.train.counts[2:5].sum()) * 3 * 16 * 16
    with pytest.raises(Exception, match="BatchNorm"):
        plan_for(data, ipc=2, model="ConvNetBN", device="cpu", classes=(0, 3))
    frozen = plan_for(data, ipc=2, device="cpu")
    with pytest.raises(Exception):
        frozen.class_chunk = 1


def test_memory_estimate_follows_the_chunk_and_ipc():
    data = make_dataset(num_classes=8, per_class=(20,) * 8, size=(16, 16))
    small = plan_for(data, ipc=2, batch_real=16, class_chunk=1, device="cpu")
    big = plan_for(data, ipc=2, batch_real=16, class_chunk=8, device="cpu")
    more = plan_for(data, ipc=10, batch_real=16, class_chunk=1, device="cpu")
    assert big.estimated_peak_bytes > 4 * small.memory["real_branch"] > 0
    assert more.memory["synthetic_state"] == 5 * small.memory["synthetic_state"]
    bf16 = plan_for(data, ipc=2, batch_real=16, class_chunk=8, device="cpu", precision="bf16")
    assert bf16.memory["real_branch"] < big.memory["real_branch"]
    assert big.estimated_peak_bytes == sum(v for k, v in big.memory.items()
                                           if k in ("real_set", "synthetic_state")) \
        + max(big.memory["real_branch"], big.memory["synthetic_branch"])


def test_metrics_record_the_plan_the_run_used(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["condense", "--dataset", "digits", "--iterations", "2", "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    recorded = json.loads((out / "metrics.json").read_text())["plan"]
    planned = dry_run(capsys, "--dataset", "digits", "--iterations", "2", "--out", str(out))
    assert KEYS <= set(recorded)
    for key in KEYS | {"config", "winograd_layers", "chunks"}:
        assert recorded[key] == planned[key], key


def test_dry_run_reports_bad_settings_in_one_line(capsys):
    assert main(["condense", "--dataset", "digits", "--ipc", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fastdm: error: --ipc must be an integer >= 1, got 0"
    assert main(["condense", "--dataset", "digits", "--device", "cuda", "--dry-run"]) == \
        (0 if torch.cuda.is_available() else 2)
