"""--dataset imagefolder without val/: train/<class>/* alone or a plain <class>/* folder gets a
stratified validation split (10 % of each class, at least 1 of a class with >= 2 images),
seeded and stable (independent of listing order and of the other classes); fastdm prepare
gives the same split."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastdm.data import folders, load_dataset
from fastdm.data import prepare as prep
from fastdm.data.folders import imagefolder_files
from fastdm.errors import FastDMError

COUNTS = {"ant": 1, "bee": 2, "cat": 9, "dog": 10, "eel": 25}
HELD = {"ant": 0, "bee": 1, "cat": 1, "dog": 1, "eel": 2}  # max(1, floor(10 % of n)); 1 image: 0


def make(root, counts=COUNTS, reverse=False):
    """PNGs root/<class>/img<i>.png, each a distinct 6x6 image (a function of class and name,
    not of creation order); ``reverse`` creates the classes and files in the opposite order."""
    items = [(c, i) for c in counts for i in range(counts[c])]
    for c, i in (reversed(items) if reverse else items):
        os.makedirs(root / c, exist_ok=True)
        arr = np.random.default_rng([*map(ord, c), i]).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / c / f"img{i:02d}.png")
    return root


def names(files, root):
    return [(os.path.relpath(p, root), label) for p, label in files]


def split_of(root, top):
    (train, val), classes = imagefolder_files(str(root))
    return names(train, top), names(val, top), classes


def test_split_sizes_per_class_and_stratified(tmp_path, caplog):
    root = make(tmp_path / "plain")
    caplog.set_level(logging.INFO, logger="fastdm")
    train, val, classes = split_of(root, root)
    assert classes == sorted(COUNTS)
    for i, c in enumerate(classes):
        held = [n for n, label in val if label == i]
        kept = [n for n, label in train if label == i]
        assert len(held) == HELD[c] and len(kept) == COUNTS[c] - HELD[c], c
        assert all(n.startswith(c + os.sep) for n in held + kept)
    assert sorted(train + val) == sorted((f"{c}{os.sep}img{i:02d}.png", classes.index(c))
                                         for c in COUNTS for i in range(COUNTS[c]))
    assert train == sorted(train) and val == sorted(val)  # class, then file-name order
    lines = [r.getMessage() for r in caplog.records if "validation split" in r.getMessage()]
    assert len(lines) == 1 and "held out 5 of 47 images" in lines[0] and "10%" in lines[0]
    # not simply the first or last files: a seeded permutation
    eel = [n for n, label in val if label == classes.index("eel")]
    assert eel != [f"eel{os.sep}img00.png", f"eel{os.sep}img01.png"]


def test_both_layouts_give_the_same_split_and_the_loader_decodes_it(tmp_path):
    plain = make(tmp_path / "plain")
    tree = make(tmp_path / "tree" / "train").parent
    assert split_of(plain, plain) == split_of(tree, tree / "train")
    a = load_dataset("imagefolder", str(plain), image_size=6, progress=False)
    b = load_dataset("imagefolder", str(tree), image_size=6, progress=False)
    assert a.classes == sorted(COUNTS)
    assert a.test.counts.tolist() == [HELD[c] for c in a.classes]
    assert a.train.counts.tolist() == [COUNTS[c] - HELD[c] for c in a.classes]
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    # the held-out images are the listed files, decoded
    _, val, _ = split_of(plain, plain)
    want = torch.stack([torch.from_numpy(np.asarray(Image.open(plain / n)).transpose(2, 0, 1).copy())
                        for n, _ in val])
    assert torch.equal(a.test.images, want)


def test_deterministic_across_loads_listing_order_and_other_classes(tmp_path, monkeypatch):
    first = make(tmp_path / "a")
    ref = split_of(first, first)
    assert split_of(first, first) == ref
    d1 = load_dataset("imagefolder", str(first), image_size=6, progress=False)
    d2 = load_dataset("imagefolder", str(first), image_size=6, progress=False)
    assert torch.equal(d1.test.images, d2.test.images) and torch.equal(d1.train.images, d2.train.images)
    # the same files created in the opposite order, and listed backwards
    other = make(tmp_path / "b", reverse=True)
    assert split_of(other, other) == ref
    listdir = os.listdir
    monkeypatch.setattr(folders.os, "listdir", lambda p: list(reversed(sorted(listdir(p)))))
    assert split_of(other, other) == ref
    monkeypatch.undo()
    # a new class (sorting first, so every other class's index moves) reshuffles nothing
    more = make(tmp_path / "c", {"aardvark": 12, **COUNTS})
    train, val, classes = split_of(more, more)
    by_name = lambda files, cls: sorted(n for n, label in files if cls[label] != "aardvark")
    assert by_name(train, classes) == by_name(ref[0], ref[2])
    assert by_name(val, classes) == by_name(ref[1], ref[2])


def test_one_image_class_stays_train_and_a_val_folder_is_used_as_is(tmp_path):
    root = make(tmp_path / "one", {"solo": 1, "pair": 2})
    train, val, classes = split_of(root, root)
    assert classes == ["pair", "solo"]
    assert [label for _, label in train] == [0, 1] and [label for _, label in val] == [0]
    # with val/ the folders are taken as they are (no split)
    tree = tmp_path / "tree"
    make(tree / "train", {"x": 5, "y": 5})
    make(tree / "val", {"x": 1, "y": 2})
    (train, val), _ = imagefolder_files(str(tree))
    assert len(train) == 10 and len(val) == 3


def test_neither_layout_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = make(tmp_path / "flat", {"x": 3}) / "x"          # images, no class folders
    deep = tmp_path / "deep"                                 # class folders without images
    (deep / "n01" / "images").mkdir(parents=True)
    only_val = make(tmp_path / "only_val" / "val", {"x": 3}).parent
    for root, what in ((empty, "holds no class folders"), (flat, "holds no class folders"),
                       (deep, "holds no images in class folders"), (only_val, "train not found")):
        with pytest.raises(FastDMError) as e:
            load_dataset("imagefolder", str(root), progress=False)
        msg = str(e.value)
        assert what in msg and "\n" not in msg, msg
        if root is not only_val:
            assert "train/<class>/<images> (val/<class>/<images> optional) or <class>/<images>" in msg
    with pytest.raises(FastDMError, match=r"needs --data-root DIR with train/<class>/<images> \(val"):
        load_dataset("imagefolder", None)
    # imagenet keeps requiring its val split
    with pytest.raises(FastDMError, match="val not found; an imagenet folder needs"):
        imagefolder_files(str(make(tmp_path / "inet" / "train", {"n01": 3}).parent), "imagenet", "--src")


def test_prepare_store_gives_the_same_split(tmp_path):
    src = make(tmp_path / "src")
    index = prep.prepare_store("imagefolder", str(src), str(tmp_path / "store"), 6, workers=0,
                               progress=False)
    assert index["splits"]["val"]["counts"] == [HELD[c] for c in sorted(COUNTS)]
    train, val, classes = split_of(src, src)
    for split, want in (("train", train), ("val", val)):
        lines = (tmp_path / "store" / f"{split}.files.txt").read_text().splitlines()
        assert [tuple(line.rsplit("\t", 1)) for line in lines] == [(n, str(c)) for n, c in want]
    store = load_dataset("store", str(tmp_path / "store"))
    ref = load_dataset("imagefolder", str(src), image_size=6, progress=False)
    for a, b in ((store.train, ref.train), (store.test, ref.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
