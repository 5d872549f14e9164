"""A fastdm Dataset from the caller's own data: tensors (uint8, or floats in [0, 1]) or a
torchvision-style Dataset of (image, label) pairs. The engine reads every dataset as
class-sorted uint8 images normalised on the fly, so these become the same."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from ..errors import FastDMError
from . import ALL_OPS_STRATEGY, default_model_for_size
from .images import ClassImages, Dataset

NAME = "tensors"  # the dataset name such a run records


def dataset_from_data(train, labels=None, *, test=None, num_classes: int | None = None,
                      classes: Sequence[str] | None = None, mean=None, std=None,
                      progress: bool = False) -> Dataset:
    """``train``: an (images, labels) pair, an images tensor with ``labels``, or a Dataset of
    (image, label) items; ``test`` likewise (optional: without it the set can be condensed but
    not evaluated). ``mean``/``std``: the normalisation constants per channel (default: the
    training images', as for the embedded digits)."""
    x, y = _pair(train, labels, "data", progress)
    if num_classes is None:
        num_classes = len(classes) if classes is not None else int(y.max()) + 1 if y.numel() else 0
    _check_labels(y, num_classes, "labels")
    if classes is None:
        classes = [str(c) for c in range(num_classes)]
    elif len(classes) != num_classes:
        raise FastDMError(f"classes names {len(classes)} classes but num_classes is {num_classes}")
    if test is not None:
        tx, ty = _pair(test, None, "test", progress)
        if tx.shape[1:] != x.shape[1:]:
            raise FastDMError(f"test images are {tuple(tx.shape[1:])} but the training images are "
                              f"{tuple(x.shape[1:])} (C x H x W); they must match")
        _check_labels(ty, num_classes, "test labels")
    else:
        tx, ty = x[:0], y[:0]
    channels = x.shape[1]
    if mean is None or std is None:
        m, s = _stats(x)
        mean = m if mean is None else mean
        std = s if std is None else std
    mean, std = _constants(mean, channels, "mean"), _constants(std, channels, "std")
    if not all(v > 0 for v in std):
        raise FastDMError(f"std must be positive per channel, got {std} (are all images constant?)")
    model = default_model_for_size(max(x.shape[2], x.shape[3]))
    return Dataset(NAME, ClassImages.sorted(x, y, num_classes), ClassImages.sorted(tx, ty, num_classes),
                   list(map(str, classes)), mean, std, model, ALL_OPS_STRATEGY,
                   fingerprint=_fingerprint(x, y, tx, ty, mean, std))


def test_only(test, *, num_classes: int, mean, std, progress: bool = False) -> Dataset:
    """A Dataset holding only a test split (to evaluate a set made elsewhere)."""
    data = dataset_from_data(test, num_classes=num_classes, mean=mean, std=std, progress=progress)
    return Dataset(NAME, ClassImages.sorted(data.train.images[:0], data.train.labels[:0], num_classes),
                   data.train, data.classes, data.mean, data.std, data.default_model,
                   data.default_strategy, fingerprint=data.fingerprint)


def _fingerprint(*parts) -> str:
    """The data's identity (a resume in the same folder, the teacher's cache): its bytes."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.contiguous().numpy().tobytes() if isinstance(p, torch.Tensor) else repr(p).encode())
    return "tensors:" + h.hexdigest()


def _pair(data, labels, what: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and labels is None:
        data, labels = data
    if isinstance(data, torch.Tensor) or _is_array(data):
        if labels is None:
            raise FastDMError(f"{what}: images without labels; pass (images, labels)")
        return _images(torch.as_tensor(data), what), _labels(labels, what)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if labels is not None:
            raise FastDMError(f"{what}: a Dataset yields its own labels; do not pass labels too")
        return _from_items(data, what, progress)
    raise FastDMError(f"{what} must be a dataset name, an (images, labels) pair of tensors or a "
                      f"Dataset of (image, label) items, got {type(data).__name__}")


def _is_array(obj) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "shape")


def _images(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() == 3:  # N x H x W: one channel
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise FastDMError(f"{what}: images must be N x C x H x W (or N x H x W), got shape "
                          f"{tuple(x.shape)}")
    if x.shape[0] == 0:
        raise FastDMError(f"{what}: no images")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        raise FastDMError(f"{what}: images look channels-last ({tuple(x.shape)}); pass N x C x H x W "
                          f"(e.g. x.permute(0, 3, 1, 2))")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise FastDMError(f"{what}: images must be uint8 or floats in [0, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise FastDMError(f"{what}: float images must hold pixel values in [0, 1], got values in "
                          f"[{lo:.3g}, {hi:.3g}] (already normalised? pass the raw pixels)")
    # the engine keeps every dataset as uint8 (4x less memory): floats round to the nearest level
    return x.float().mul(255).round_().to(torch.uint8).contiguous()


def _labels(y, what: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise FastDMError(f"{what}: labels must be a 1-d tensor of class indices, got "
                          f"{y.dtype} {tuple(y.shape)}")
    return y.long()


def _check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise FastDMError(f"{what} must lie in 0..{num_classes - 1} (num_classes {num_classes}), "
                          f"got {int(y.min())}..{int(y.max())}")


def _from_items(ds, what: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision-style Dataset: tensors in [0, 1] (ToTensor) or uint8, or PIL images."""
    from tqdm.auto import tqdm
    n = len(ds)
    if n == 0:
        raise FastDMError(f"{what}: the Dataset is empty")
    xs, ys = [], []
    for i in tqdm(range(n), desc=f"reading {what}", unit="img", disable=not progress or None):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise FastDMError(f"{what}: item {i} is not an (image, label) pair")
        img, label = item[0], item[1]
        if not isinstance(img, torch.Tensor):
            try:
                from torchvision.transforms.functional import pil_to_tensor
                img = pil_to_tensor(img)
            except TypeError:
                raise FastDMError(f"{what}: item {i}'s image is a {type(img).__name__}; give tensors "
                                  f"or PIL images") from None
        xs.append(img)
        ys.append(int(label))
    try:
        x = torch.stack(xs)
    except RuntimeError:
        raise FastDMError(f"{what}: the images differ in size; resize them to one size "
                          f"(e.g. a transforms.Resize in the Dataset)") from None
    return _images(x, what), torch.tensor(ys, dtype=torch.int64)


def _stats(x: torch.Tensor) -> tuple[list, list]:
    """Per-channel mean and std of the pixels in [0, 1] (in chunks: the set may be large)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        v = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += v.sum(1)
        squares += (v * v).sum(1)
    count = x.numel() // c
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0) * count / max(1, count - 1)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in var.sqrt()]


def _constants(values, channels: int, what: str) -> list:
    vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise FastDMError(f"{what} has {len(vals)} values for {channels}-channel images")
    return vals
