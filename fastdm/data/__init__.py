"""Datasets by name: each loads as class-indexed uint8 train/test splits plus its constants."""
from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from ..errors import FastDMError

if TYPE_CHECKING:
    from .images import Dataset

__all__ = ["ClassImages", "Dataset", "DATASETS", "load_dataset", "normalize", "dataset_info",
           "default_model_for_size", "ALL_OPS_STRATEGY", "DIGIT_STRATEGY"]

ALL_OPS_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGIT_STRATEGY = "color_crop_cutout_scale_rotate"  # digits are not mirror-symmetric: no flip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    mean: tuple
    std: tuple
    strategy: str
    native_size: int | None      # None: resized to --image-size (folder datasets)
    default_size: int
    needs_root: bool = True


# Normalisation constants from the spec (dm-reference-semantics.md, section 2); digits' own
# constants are computed from its train split (fastdm/data/digits.py).
DATASETS = {
    "digits": DatasetInfo("digits", None, None, DIGIT_STRATEGY, 8, 8, needs_root=False),
    "mnist": DatasetInfo("mnist", (0.1307,), (0.3081,), DIGIT_STRATEGY, 28, 28),
    "fashionmnist": DatasetInfo("fashionmnist", (0.2861,), (0.3530,), ALL_OPS_STRATEGY, 28, 28),
    "svhn": DatasetInfo("svhn", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), DIGIT_STRATEGY, 32, 32),
    "cifar10": DatasetInfo("cifar10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), ALL_OPS_STRATEGY, 32, 32),
    "cifar100": DatasetInfo("cifar100", (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), ALL_OPS_STRATEGY, 32, 32),
    "tinyimagenet": DatasetInfo("tinyimagenet", IMAGENET_MEAN, IMAGENET_STD, ALL_OPS_STRATEGY, None, 64),
    "imagefolder": DatasetInfo("imagefolder", IMAGENET_MEAN, IMAGENET_STD, ALL_OPS_STRATEGY, None, 64),
    # a uint8 store from `fastdm prepare` (fastdm.data.store): its constants come from its index
    "store": DatasetInfo("store", None, None, ALL_OPS_STRATEGY, None, 64),
}


def __getattr__(name):  # torch-backed classes on first use: fastdm prepare's decode workers
    if name in ("ClassImages", "Dataset", "normalize"):  # import this package without torch
        from . import images
        return getattr(images, name)
    raise AttributeError(f"module 'fastdm.data' has no attribute {name!r}")


def dataset_info(name: str) -> DatasetInfo:
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise FastDMError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return DATASETS[key]


def default_model_for_size(size: int) -> str:
    """ConvNet for 28/32 px (and smaller), ConvNetD4 for 64 px, D5 for 128, D6 for 256 (spec)."""
    if size <= 32:
        return "ConvNet"
    depth = 3
    while size > 32 * 2 ** (depth - 3):
        depth += 1
    return f"ConvNetD{depth}"


def load_dataset(name: str, data_root: str | None = None, download: bool = False,
                 image_size: int | None = None, progress: bool = True) -> Dataset:
    info = dataset_info(name)
    if info.name == "store":
        from .store import load_store
        return load_store(data_root, image_size)
    if info.native_size is not None and image_size not in (None, info.native_size):
        raise FastDMError(f"dataset {info.name} has {info.native_size}x{info.native_size} images; "
                          f"--image-size {image_size} applies only to tinyimagenet and imagefolder "
                          f"(omit it)")
    size = image_size if image_size is not None else info.default_size
    if size < 1:
        raise FastDMError(f"--image-size must be positive, got {size}")
    mean, std = info.mean, info.std
    if info.name == "digits":
        from . import digits
        train, test = digits.load_digits_splits()
        classes = [str(c) for c in range(10)]
        mean, std = digits.MEAN, digits.STD
    elif info.name == "tinyimagenet":
        from .folders import tinyimagenet_splits
        train, test, classes = tinyimagenet_splits(data_root, size, progress)
    elif info.name == "imagefolder":
        from .folders import imagefolder_splits
        train, test, classes = imagefolder_splits(data_root, size, progress)
    else:
        from .torchvision_sets import load_torchvision
        train, test, classes = load_torchvision(info.name, data_root, download)
    from .images import Dataset
    model = "ConvNet" if info.name == "digits" else default_model_for_size(size)
    return Dataset(info.name, train, test, classes, mean, std, model, info.strategy)
