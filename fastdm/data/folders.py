"""Image folders: the official tiny-imagenet-200 layout and any ImageFolder tree.

Decoding: PIL, converted to RGB; an image whose size differs from the target is resized so
its shorter side equals the target (PIL bicubic, which filters over the whole footprint when
shrinking, i.e. antialiased) and centre-cropped to a square. Unreadable or corrupt files are
skipped and counted; more than MAX_BAD_FRACTION of a split is an error.
"""
from __future__ import annotations

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


def imagefolder_files(root: str | None, what: str = "imagefolder", flag: str = "--data-root"):
    """([train files, val files], class names) of a train/<class>/*, val/<class>/* tree."""
    if root is None:
        raise FastDMError(f"dataset {what} needs {flag} DIR with train/<class>/* and "
                          "val/<class>/*")
    hint = f"an {what} folder needs train/<class>/<images> and val/<class>/<images>"
    for sub in ("train", "val"):
        _require_dir(os.path.join(root, sub), hint)
    classes = sorted(d for d in os.listdir(os.path.join(root, "train"))
                     if os.path.isdir(os.path.join(root, "train", d)))
    if not classes:
        raise FastDMError(f"{root}/train holds no class folders; {hint}")
    splits = []
    for sub in ("train", "val"):
        files = []
        for i, c in enumerate(classes):
            folder = os.path.join(root, sub, c)
            if os.path.isdir(folder):
                files += [(f, i) for f in _images_in(folder)]
        extra = sorted(set(d for d in os.listdir(os.path.join(root, sub))
                           if os.path.isdir(os.path.join(root, sub, d))) - set(classes))
        if extra:
            raise FastDMError(f"{root}/{sub} has class folders missing from train/: {extra[:5]}")
        splits.append(files)
    return splits, classes
