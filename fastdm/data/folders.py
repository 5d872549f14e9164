"""Image folders: the official tiny-imagenet-200 layout and any ImageFolder tree.

Decoding: PIL, converted to RGB; an image whose size differs from the target is resized so
its shorter side equals the target (PIL bicubic, which filters over the whole footprint when
shrinking, i.e. antialiased) and centre-cropped to a square. Unreadable or corrupt files are
skipped and counted; more than MAX_BAD_FRACTION of a split is an error. An imagefolder tree
without val/ (train/<class>/* or plain <class>/*) gets a seeded, stratified validation split
(split_val), the same for the in-memory loader and fastdm prepare.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import FastDMError
from .decode import decode_array
from .images import ClassImages

log = logging.getLogger("fastdm")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
MAX_BAD_FRACTION = 0.02
VAL_FRACTION = 0.1  # held out of each class when a folder has no val/ split (split_val)
VAL_SEED = 0        # fixed, not the condensation seed: that split never changes between runs


def decode_image(path: str, size: int) -> torch.Tensor | None:
    """One file -> uint8 [3, size, size], or None when it cannot be decoded."""
    arr = decode_array(path, size)
    return None if arr is None else torch.from_numpy(arr)


def decode_files(files: list[tuple[str, int]], size: int, num_classes: int, what: str,
                 progress: bool = True) -> ClassImages:
    if not files:
        raise FastDMError(f"no image files found for {what}")
    from tqdm import tqdm

    workers = min(32, (os.cpu_count() or 1) + 2)  # PIL decodes with the GIL released
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(tqdm(pool.map(lambda f: decode_image(f[0], size), files), total=len(files),
                            desc=f"decoding {what}", unit="img", disable=not progress or None,
                            leave=False))
    bad = [f for (f, _), d in zip(files, decoded) if d is None]
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        if len(bad) > MAX_BAD_FRACTION * len(files):
            raise FastDMError(f"{len(bad)} of {len(files)} images in {what} could not be decoded "
                              f"(more than {MAX_BAD_FRACTION:.0%}): {shown}; fix or remove them")
        log.warning("skipped %d corrupt or unreadable image(s) in %s: %s", len(bad), what, shown)
    keep = [i for i, d in enumerate(decoded) if d is not None]
    images = torch.stack([decoded[i] for i in keep])
    labels = torch.tensor([files[i][1] for i in keep], dtype=torch.int64)
    return ClassImages.sorted(images, labels, num_classes)


def _images_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS))


def _require_dir(path: str, hint: str) -> None:
    if not os.path.isdir(path):
        raise FastDMError(f"{path} not found; {hint}")


def tinyimagenet_splits(root: str | None, size: int, progress: bool = True):
    train_files, val_files, names = tinyimagenet_files(root)
    train = decode_files(train_files, size, len(names), "tinyimagenet train", progress)
    test = decode_files(val_files, size, len(names), "tinyimagenet val", progress)
    return train, test, names


def tinyimagenet_files(root: str | None, flag: str = "--data-root"):
    """(train files, val files, class names): files as (path, class) in listing order.
    ``flag``: the option that named ``root``, for the error messages."""
    if root is None:
        raise FastDMError(f"dataset tinyimagenet needs {flag} DIR (the tiny-imagenet-200 folder "
                          "or its parent)")
    if os.path.isdir(os.path.join(root, "tiny-imagenet-200")):
        root = os.path.join(root, "tiny-imagenet-200")
    hint = (f"{flag} must be the official tiny-imagenet-200 folder (train/<wnid>/images/*.JPEG, "
            "val/images/*.JPEG, val/val_annotations.txt) or its parent")
    _require_dir(os.path.join(root, "train"), hint)
    wnids = sorted(d for d in os.listdir(os.path.join(root, "train"))
                   if os.path.isdir(os.path.join(root, "train", d)))
    if not wnids:
        raise FastDMError(f"{root}/train holds no class folders; {hint}")
    index = {w: i for i, w in enumerate(wnids)}
    train_files = []
    for w in wnids:
        folder = os.path.join(root, "train", w, "images")
        _require_dir(folder, hint)
        train_files += [(f, index[w]) for f in _images_in(folder)]
    ann = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(ann):
        raise FastDMError(f"{ann} not found; {hint}")
    val_files = []
    with open(ann) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.strip().split("\t")
            if not parts or not parts[0]:
                continue
            if len(parts) < 2 or parts[1] not in index:
                raise FastDMError(f"{ann} line {n}: expected 'file<TAB>wnid' with a wnid from train/")
            val_files.append((os.path.join(root, "val", "images", parts[0]), index[parts[1]]))
    return train_files, val_files, _tinyimagenet_names(root, wnids)


def _tinyimagenet_names(root: str, wnids: list[str]) -> list[str]:
    words = os.path.join(root, "words.txt")
    if not os.path.isfile(words):
        return wnids
    table = {}
    with open(words) as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) == 2:
                table[parts[0]] = parts[1].split(",")[0]
    return [table.get(w, w) for w in wnids]


def imagefolder_splits(root: str | None, size: int, progress: bool = True):
    (train_files, val_files), classes = imagefolder_files(root)
    return (decode_files(train_files, size, len(classes), "imagefolder train", progress),
            decode_files(val_files, size, len(classes), "imagefolder val", progress), classes)


def _class_dirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def imagefolder_files(root: str | None, what: str = "imagefolder", flag: str = "--data-root"):
    """([train files, val files], class names), files as (path, class). Layouts: train/<class>/*
    with val/<class>/*; for imagefolder also train/<class>/* alone or <class>/* (torchvision's
    ImageFolder), whose validation split split_val makes. ImageNet ships a val split, so for
    imagenet a missing val/ is a mistake, not a layout."""
    strict = what == "imagenet"
    layouts = ("train/<class>/<images> and val/<class>/<images>" if strict else
               "train/<class>/<images> (val/<class>/<images> optional) or <class>/<images>")
    if root is None:
        raise FastDMError(f"dataset {what} needs {flag} DIR with {layouts}")
    hint = f"an {what} folder needs {layouts}"
    has_train, has_val = (os.path.isdir(os.path.join(root, s)) for s in ("train", "val"))
    if strict or has_val:
        for sub in ("train", "val"):
            _require_dir(os.path.join(root, sub), hint)
    top = os.path.join(root, "train") if has_train else root
    classes = _class_dirs(top)
    if not classes:
        raise FastDMError(f"{top} holds no class folders; {hint}")
    if not (strict or has_val):
        per_class = [_images_in(os.path.join(top, c)) for c in classes]
        if not any(per_class):
            raise FastDMError(f"{top} holds no images in class folders; {hint}")
        return list(split_val(per_class, classes, top)), classes
    splits = []
    for sub in ("train", "val"):
        files = []
        for i, c in enumerate(classes):
            folder = os.path.join(root, sub, c)
            if os.path.isdir(folder):
                files += [(f, i) for f in _images_in(folder)]
        extra = sorted(set(_class_dirs(os.path.join(root, sub))) - set(classes))
        if extra:
            raise FastDMError(f"{root}/{sub} has class folders missing from train/: {extra[:5]}")
        splits.append(files)
    return splits, classes


def split_val(per_class: list[list[str]], classes: list[str], where: str,
              fraction: float = VAL_FRACTION, seed: int = VAL_SEED):
    """(train, val) files as (path, class) for a folder without a val/ split, stratified: of
    each class of n >= 2 images, max(1, floor(fraction * n)) go to val (at most n - 1); a class
    of 1 image stays all-train. The held-out ones are the first of the class's files ranked by
    sha256(seed, class folder, file name): a seeded permutation that depends on neither the
    listing order, the other classes, the root's path nor the condensation --seed, and is
    the same with every numpy/Python version. Both splits keep file-name order."""
    train, val = [], []
    for i, (c, paths) in enumerate(zip(classes, per_class)):
        paths = sorted(paths)
        n = len(paths)
        # + 1e-9: n * fraction can land just under an integer (90 * 0.7 is 62.99999999999999)
        k = 0 if n < 2 else min(n - 1, max(1, int(n * fraction + 1e-9)))
        rank = sorted(paths, key=lambda p: hashlib.sha256(
            f"{seed}\0{c}\0{os.path.basename(p)}".encode()).digest())
        held = set(rank[:k])
        train += [(p, i) for p in paths if p not in held]
        val += [(p, i) for p in paths if p in held]
    log.info("%s has no val/ split: held out %d of %d images as the validation split (%.0f%% of "
             "each class, at least 1 of a class with 2 or more; fixed seed %d, the same every run)",
             where, len(val), len(train) + len(val), 100 * fraction, seed)
    return train, val
