"""fastdm prepare: a generated image folder (JPEG/PNG, modes L/RGB/RGBA/CMYK, mixed sizes, one
corrupt file) -> a uint8 store holding exactly the documented decode + resize; interrupted and
resumed gives the identical store; parallel workers give the same bytes; the reader and
--dataset store."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastdm.cli import main
from fastdm.data import load_dataset
from fastdm.data import prepare as prep
from fastdm.errors import FastDMError

MODES = ("RGB", "L", "RGBA", "CMYK")
SIZES = ((20, 30), (40, 17), (16, 16), (33, 50), (9, 12))


def make_folder(root, classes=("cat", "dog", "eel"), per_class=(7, 5, 6), val_per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    k = 0
    for split, counts in (("train", per_class), ("val", [val_per_class] * len(classes))):
        for c, n in zip(classes, counts):
            os.makedirs(root / split / c)
            for i in range(n):
                mode, (w, h) = MODES[k % len(MODES)], SIZES[k % len(SIZES)]
                k += 1
                bands = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
                arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
                im = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode)
                ext = "png" if mode in ("L", "RGBA") else "jpg"
                im.save(root / split / c / f"img{i:03d}.{ext}")
    (root / "train" / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def expected_image(path, size):
    """The documented decode: RGB, shorter side -> size (bicubic), centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im).transpose(2, 0, 1)


@pytest.fixture
def src(tmp_path):
    return make_folder(tmp_path / "src")


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(prep, "SHARD", 4)  # several shards per split, a partial last one


def store_bytes(root):
    return {name: (root / name).read_bytes() for name in sorted(os.listdir(root))}


def test_store_holds_the_documented_decode(src, tmp_path, small_shards, caplog):
    out = tmp_path / "store"
    index = prep.prepare_store("imagefolder", str(src), str(out), image_size=12, workers=0,
                               max_bad_fraction=0.1, progress=False)
    assert sorted(os.listdir(out)) == ["index.json", "train.files.txt", "train.npy",
                                       "val.files.txt", "val.npy"]
    assert index["classes"] == ["cat", "dog", "eel"] and index["image_size"] == 12
    assert index["splits"]["train"]["skipped"] == [os.path.join("train", "cat", "broken.jpg")]
    assert "broken.jpg" in caplog.text
    for split, counts in (("train", [7, 5, 6]), ("val", [2, 2, 2])):
        meta = index["splits"][split]
        assert meta["counts"] == counts and meta["offsets"] == list(np.cumsum([0] + counts[:-1]))
        arr = np.load(out / f"{split}.npy")
        assert arr.dtype == np.uint8 and arr.shape == (sum(counts), 3, 12, 12)
        lines = (out / f"{split}.files.txt").read_text().splitlines()
        assert len(lines) == len(arr)
        labels = [int(line.split("\t")[1]) for line in lines]
        assert labels == sorted(labels)  # class-sorted
        for row, line in zip(arr, lines):
            rel, _ = line.split("\t")
            np.testing.assert_array_equal(row, expected_image(src / rel, 12))
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk["format"] == "fastdm.store" and on_disk["layout"].startswith("NCHW")


def clean_and_interrupted(src, tmp_path, workers):
    """(an uninterrupted store, the --out of a prepare stopped by Ctrl-C after two shards)."""
    clean = tmp_path / "clean"
    prep.prepare_store("imagefolder", str(src), str(clean), 10, workers=0, max_bad_fraction=0.1,
                       progress=False)

    def stop_after_two(done):
        if done == 2:
            raise KeyboardInterrupt
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_store("imagefolder", str(src), str(out), 10, workers=workers,
                           max_bad_fraction=0.1, progress=False, on_shard=stop_after_two)
    return clean, out


def test_interrupted_prepare_resumes_to_the_identical_store(src, tmp_path, small_shards):
    clean, out = clean_and_interrupted(src, tmp_path, workers=0)
    partial = tmp_path / "store.partial"
    assert not out.exists() and partial.is_dir()  # complete or not at all
    (partial / "train-0000002.npy.tmp123").write_bytes(b"half a shard")  # a write cut short
    with pytest.raises(FastDMError, match="unfinished prepare"):
        load_dataset("store", str(out))
    resumed = []
    prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, max_bad_fraction=0.1,
                       progress=False, on_shard=resumed.append)
    assert resumed and resumed[0] == 3  # the two finished shards were not decoded again
    assert not partial.exists()
    assert store_bytes(out) == store_bytes(clean)


def test_worker_processes_write_the_same_store(src, tmp_path, small_shards):
    a, b = tmp_path / "a", tmp_path / "b"
    prep.prepare_store("imagefolder", str(src), str(a), 10, workers=0, max_bad_fraction=0.1,
                       progress=False)
    prep.prepare_store("imagefolder", str(src), str(b), 10, workers=2, max_bad_fraction=0.1,
                       progress=False)
    assert store_bytes(a) == store_bytes(b)


def test_rerun_does_nothing_and_mismatches_are_errors(src, tmp_path, small_shards):
    out = tmp_path / "store"
    prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, max_bad_fraction=0.1,
                       progress=False)
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    calls = []
    prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, max_bad_fraction=0.1,
                       progress=False, on_shard=calls.append)
    assert calls == [] and before == {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    with pytest.raises(FastDMError, match="already holds a store"):
        prep.prepare_store("imagefolder", str(src), str(out), 16, workers=0, progress=False)
    with pytest.raises(FastDMError, match="could not be read or decoded"):  # 1 of 19 > 2 %
        prep.prepare_store("imagefolder", str(src), str(tmp_path / "strict"), 10, workers=0,
                           progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FastDMError, match="not a fastdm store"):
        prep.prepare_store("imagefolder", str(src), str(tmp_path / "file"), 10, progress=False)
    with pytest.raises(FastDMError, match="not a folder"):
        prep.prepare_store("imagefolder", str(tmp_path / "nope"), str(tmp_path / "s2"), 10)
    with pytest.raises(FastDMError, match="must be one of"):
        prep.prepare_store("cifar10", str(src), str(tmp_path / "s3"), 10)


def test_store_dataset_equals_the_in_memory_loader(src, tmp_path, monkeypatch):
    from fastdm.data import folders
    monkeypatch.setattr(folders, "MAX_BAD_FRACTION", 0.1)  # the folder has 1 corrupt file in 19
    out = tmp_path / "store"
    prep.prepare_store("imagefolder", str(src), str(out), 12, workers=0, max_bad_fraction=0.1,
                       progress=False)
    store = load_dataset("store", str(out))
    ref = load_dataset("imagefolder", str(src), image_size=12, progress=False)
    assert store.name == "store" and list(store.classes) == list(ref.classes)
    assert (store.mean, store.std, store.default_model) == (ref.mean, ref.std, ref.default_model)
    for a, b in ((store.train, ref.train), (store.test, ref.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    with pytest.raises(FastDMError, match="12 px"):
        load_dataset("store", str(out), image_size=16)
    with pytest.raises(FastDMError, match="not a fastdm store"):
        load_dataset("store", str(tmp_path))
    with pytest.raises(FastDMError, match="needs --data-root"):
        load_dataset("store")


def test_cli_prepare_condense_evaluate(src, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["prepare", "--dataset", "imagefolder", "--src", str(src), "--out", str(store),
                 "--image-size", "16", "--workers", "0", "--max-bad-fraction", "0.1",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_images"] == 18 and summary["skipped"] == 1
    run = tmp_path / "run"
    assert main(["condense", "--dataset", "store", "--data-root", str(store), "--ipc", "1",
                 "--iterations", "2", "--batch-real", "4", "--model", "ConvNetW32", "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "synset.pt"), "--models", "1", "--epochs", "1",
                 "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["dataset"] == "store" and 0 <= res["acc_mean"] <= 1
    # a bank pretrained on the store, and DANCE's pipeline condensing with it
    bank = tmp_path / "bank"
    assert main(["pretrain", "--dataset", "store", "--data-root", str(store), "--model",
                 "ConvNetW32", "--models", "1", "--epochs", "1", "--out", str(bank),
                 "--no-progress"]) == 0
    assert main(["condense", "--dataset", "store", "--data-root", str(store), "--ipc", "1",
                 "--method", "dance", "--embedders", f"bank:{bank}", "--bank-members", "1",
                 "--iterations", "2", "--batch-real", "4", "--model", "ConvNetW32",
                 "--out", str(tmp_path / "dance"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["prepare", "--dataset", "imagefolder", "--src", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_tinyimagenet_and_imagenet_layouts(tmp_path):
    from test_data import _tiny_imagenet
    _tiny_imagenet(tmp_path / "tin", per_class=5, val_per_class=3)
    out = tmp_path / "tin_store"
    index = prep.prepare_store("tinyimagenet", str(tmp_path / "tin"), str(out), 16, workers=0,
                               progress=False)
    ref = load_dataset("tinyimagenet", str(tmp_path / "tin"), image_size=16, progress=False)
    store = load_dataset("store", str(out))
    assert index["classes"] == list(ref.classes) and index["dataset"] == "tinyimagenet"
    for a, b in ((store.train, ref.train), (store.test, ref.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # imagenet: class folders in train/ and val/, names from LOC_synset_mapping.txt
    src = make_folder(tmp_path / "inet", classes=("n0001", "n0002"), per_class=(3, 4))
    (src / "train" / "n0001" / "broken.jpg").unlink()
    (src / "LOC_synset_mapping.txt").write_text("n0001 tench, Tinca tinca\nn0002 goldfish\n")
    index = prep.prepare_store("imagenet", str(src), str(tmp_path / "inet_store"), 8, workers=0,
                               progress=False)
    assert index["classes"] == ["tench", "goldfish"] and index["splits"]["train"]["counts"] == [3, 4]


def test_interrupted_after_assembly_or_in_cleanup_finishes(src, tmp_path, small_shards, monkeypatch):
    clean = tmp_path / "clean"
    prep.prepare_store("imagefolder", str(src), str(clean), 10, workers=0, max_bad_fraction=0.1,
                       progress=False)
    real_build = prep._build

    def build_then_stop(*a, **k):
        real_build(*a, **k)
        raise KeyboardInterrupt
    for also_lost in ((), ("prepare.json",), ("prepare.json", "train.skipped.json")):
        out = tmp_path / f"store{len(also_lost)}"
        monkeypatch.setattr(prep, "_build", build_then_stop)
        with pytest.raises(KeyboardInterrupt):
            prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0,
                               max_bad_fraction=0.1, progress=False)
        partial = tmp_path / f"store{len(also_lost)}.partial"
        for name in also_lost:  # cleanup got this far before the interruption
            (partial / name).unlink()
        monkeypatch.setattr(prep, "_build", real_build)
        calls = []
        prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, max_bad_fraction=0.1,
                           progress=False, on_shard=calls.append)
        assert calls == [] and store_bytes(out) == store_bytes(clean), also_lost


def test_orphaned_workers_cannot_write_into_another_run(src, tmp_path, small_shards):
    from fastdm.data.decode import decode_array, decode_shard
    partial = tmp_path / "x.partial"
    partial.mkdir()
    (partial / "prepare.json").write_text(json.dumps({"token": "new-run"}))
    paths = [str(p) for p in sorted((src / "train" / "dog").iterdir())]
    decode_shard(paths, 8, str(partial / "train-0000000.npy"), str(partial / "train-0000000.json"),
                 str(partial / "prepare.json"), "old-run")
    assert sorted(os.listdir(partial)) == ["prepare.json"]  # nothing written, no temp left
    decode_shard(paths, 8, str(partial / "train-0000000.npy"), str(partial / "train-0000000.json"),
                 str(partial / "prepare.json"), "new-run")
    assert sorted(os.listdir(partial)) == ["prepare.json", "train-0000000.json", "train-0000000.npy"]
    from fastdm.data.decode import decode_checked
    assert decode_array(str(tmp_path), 8) is None  # a folder: unreadable, skipped
    assert decode_checked(str(tmp_path), 8)[1].startswith("unreadable: ")
    assert decode_checked(str(src / "train" / "cat" / "broken.jpg"), 8)[1].startswith("undecodable: ")


def test_unreadable_files_are_skipped_and_listed_with_why(src, tmp_path, small_shards):
    os.symlink(tmp_path / "gone.jpg", src / "train" / "dog" / "link.jpg")  # a broken link
    index = prep.prepare_store("imagefolder", str(src), str(tmp_path / "s"), 10, workers=0,
                               max_bad_fraction=0.2, progress=False)
    meta = index["splits"]["train"]
    link, broken = os.path.join("train", "dog", "link.jpg"), os.path.join("train", "cat", "broken.jpg")
    assert sorted(meta["skipped"]) == sorted([link, broken]) and meta["counts"] == [7, 5, 6]
    assert meta["skipped_why"][link] == "unreadable: No such file or directory"
    assert meta["skipped_why"][broken].startswith("undecodable: ")
    with pytest.raises(FastDMError, match=r"2 of 20 train images could not be read .*link.jpg \(unreadable"):
        prep.prepare_store("imagefolder", str(src), str(tmp_path / "t"), 10, workers=0,
                           max_bad_fraction=0.05, progress=False)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from fastdm.data.decode import decode_array
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL reads it as a 16-bit (or 32-bit) integer image
    got = decode_array(str(path), 8)
    want = ((ramp.astype(np.int64) + 128) // 257).astype(np.uint8)
    assert got.shape == (3, 8, 8) and (got == want[None]).all()


def test_a_prepare_that_waited_for_the_lock_finds_the_finished_store(src, tmp_path, small_shards,
                                                                     monkeypatch):
    out = tmp_path / "store"
    prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, max_bad_fraction=0.1,
                       progress=False)
    before = store_bytes(out)
    real, seen = prep._finished, []

    def first_look_sees_nothing(*a):  # as if the other prepare finished after our first look
        seen.append(1)
        return None if len(seen) == 1 else real(*a)
    monkeypatch.setattr(prep, "_finished", first_look_sees_nothing)
    calls = []
    index = prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0,
                               max_bad_fraction=0.1, progress=False, on_shard=calls.append)
    assert len(seen) == 2 and calls == [] and index["classes"] == ["cat", "dog", "eel"]
    assert store_bytes(out) == before and not (tmp_path / "store.partial").exists()


def test_interrupted_worker_pool_resumes_to_the_identical_store(src, tmp_path, small_shards):
    clean, out = clean_and_interrupted(src, tmp_path, workers=2)
    assert not out.exists() and (tmp_path / "store.partial").is_dir()
    prep.prepare_store("imagefolder", str(src), str(out), 10, workers=2, max_bad_fraction=0.1,
                       progress=False)
    assert store_bytes(out) == store_bytes(clean)


def test_one_prepare_per_out_and_stale_partials(src, tmp_path):
    from fastdm.data.store import write_store
    out = tmp_path / "store"
    with prep._exclusive(str(out)):
        with pytest.raises(FastDMError, match="another fastdm prepare"):
            prep.prepare_store("imagefolder", str(src), str(out), 10, workers=0, progress=False)
    (tmp_path / "w.partial").mkdir()
    arr = np.zeros((3, 3, 4, 4), np.uint8)
    with pytest.raises(FastDMError, match="exists"):
        write_store(str(tmp_path / "w"), {"train": (arr, [3]), "val": (arr, [3])}, ["a"])
    with pytest.raises(FastDMError, match="differ in size"):
        write_store(str(tmp_path / "w2"), {"train": (arr, [3]), "val": (np.zeros((3, 3, 8, 8), np.uint8), [3])}, ["a"])
