"""The uint8 image store written by ``fastdm prepare`` and read by ``--dataset store``.

A store is a folder:

    index.json         format, version, dataset, image size, channels, layout, resize method,
                       normalisation constants, class names, and per split: file, image count,
                       per-class counts and offsets, skipped (unreadable or undecodable) source
                       files and why
    train.npy          uint8 [N, 3, S, S] (NCHW, the layout the engine and the DSA kernels
    val.npy            read), sorted by class; a plain .npy, memory-mapped by the reader
    train.files.txt    the manifest: one line per stored image, in store order,
    val.files.txt      "<path relative to the source folder>\t<class index>"

Reading maps the arrays (nothing is loaded up front; the page cache holds what is used).
"""
from __future__ import annotations

import json
import os
import secrets

import numpy as np
import torch

from ..errors import FastDMError
from .images import ClassImages, Dataset

STORE_FORMAT = "fastdm.store"
STORE_VERSION = 1
SPLITS = ("train", "val")
INDEX = "index.json"


def is_store(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX))


def read_index(root: str) -> dict:
    path = os.path.join(root, INDEX)
    if not os.path.isfile(path):
        hint = (f" ({root}.partial exists: an unfinished prepare; rerun the same fastdm prepare "
                f"command to finish it)" if os.path.isdir(root + ".partial") else "")
        raise FastDMError(f"{root} is not a fastdm store (no {INDEX}){hint}; make one with "
                          f"fastdm prepare --dataset ... --src DIR --out {root}")
    try:
        with open(path) as fh:
            index = json.load(fh)
    except (OSError, ValueError) as e:
        raise FastDMError(f"cannot read {path}: {e}") from None
    if index.get("format") != STORE_FORMAT:
        raise FastDMError(f"{path} is not a fastdm store index (format {index.get('format')!r})")
    if index.get("version") != STORE_VERSION:
        raise FastDMError(f"{path} is store version {index.get('version')}; this fastdm reads "
                          f"version {STORE_VERSION}: prepare the store again")
    return index


def open_split(root: str, index: dict, split: str) -> ClassImages:
    """One split as ClassImages over the memory-mapped array (copy-on-write: never written)."""
    meta = index["splits"][split]
    path = os.path.join(root, meta["file"])
    try:
        arr = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as e:
        raise FastDMError(f"cannot map {path}: {e}") from None
    s, c = index["image_size"], index["channels"]
    if arr.dtype != np.uint8 or arr.shape != (meta["images"], c, s, s):
        raise FastDMError(f"{path} holds {arr.dtype} {arr.shape}, but {INDEX} says uint8 "
                          f"{(meta['images'], c, s, s)}: the store is damaged; prepare it again")
    counts = torch.tensor(meta["counts"], dtype=torch.int64)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return ClassImages(torch.from_numpy(arr), labels, len(counts), mapped=True)


def load_store(root: str | None, image_size: int | None = None) -> Dataset:
    from . import ALL_OPS_STRATEGY, default_model_for_size

    if root is None:
        raise FastDMError("dataset store needs --data-root STORE (a folder made by fastdm prepare)")
    root = os.path.abspath(root)
    index = read_index(root)
    if image_size is not None and image_size != index["image_size"]:
        raise FastDMError(f"{root} holds {index['image_size']} px images; --image-size {image_size} "
                          f"needs a store prepared at that size")
    train, val = (open_split(root, index, s) for s in SPLITS)
    return Dataset("store", train, val, index["classes"], tuple(index["mean"]), tuple(index["std"]),
                   default_model_for_size(index["image_size"]), ALL_OPS_STRATEGY,
                   fingerprint=index["prepare"].get("fingerprint"))


def write_store(root: str, splits: dict, classes: list[str], mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), dataset: str = "arrays") -> dict:
    """A store from arrays already in memory: ``splits`` maps 'train'/'val' to (uint8 images
    [N, 3, S, S] sorted by class, per-class counts). Written under ROOT.partial, then renamed.
    (For generated data and conversions; image folders go through fastdm prepare.)"""
    from ..io import atomic_json_dump

    root = os.path.abspath(root)
    partial = root + ".partial"
    for path in (root, partial):
        if os.path.exists(path):
            raise FastDMError(f"{path} exists; choose another folder (or remove it)")
    sizes = {np.asarray(splits[s][0]).shape[2:] for s in SPLITS}
    if len(sizes) != 1:
        raise FastDMError(f"write_store: train and val images differ in size ({sorted(sizes)})")
    os.makedirs(partial)
    size = None
    index = {"format": STORE_FORMAT, "version": STORE_VERSION, "dataset": dataset, "channels": 3,
             "layout": "NCHW uint8, sorted by class", "resize": "none (written from arrays)",
             "mean": list(mean), "std": list(std), "classes": list(classes),
             # written afresh, a store is another store: a checkpoint of the old one won't resume
             "prepare": {"dataset": dataset, "source": None, "fingerprint": f"written:{secrets.token_hex(8)}"},
             "splits": {}}
    for split in SPLITS:
        images, counts = splits[split]
        images = np.asarray(images)
        counts = [int(c) for c in counts]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 \
                or images.shape[2] != images.shape[3] or sum(counts) != len(images) \
                or len(counts) != len(classes):
            raise FastDMError(f"write_store: {split} must be uint8 [N, 3, S, S] with one count per "
                              f"class summing to N")
        size = images.shape[2]
        np.save(os.path.join(partial, f"{split}.npy"), images)
        with open(os.path.join(partial, f"{split}.files.txt"), "w") as fh:
            fh.writelines(f"{dataset}:{i}\t{c}\n" for c, n in enumerate(counts) for i in range(n))
        index["splits"][split] = {"file": f"{split}.npy", "images": len(images), "counts": counts,
                                  "offsets": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist(),
                                  "manifest": f"{split}.files.txt", "skipped": [],
                                  "skipped_why": {}}
    index["image_size"] = size
    index["prepare"]["image_size"] = size
    atomic_json_dump(index, os.path.join(partial, INDEX))
    os.replace(partial, root)
    return index
