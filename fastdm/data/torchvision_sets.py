"""MNIST, FashionMNIST, SVHN, CIFAR10 and CIFAR100 through torchvision, as uint8 tensors."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import FastDMError
from .images import ClassImages

# Where torchvision looks below --data-root, for the error message.
LAYOUT = {
    "mnist": "MNIST/raw/*-ubyte(.gz)",
    "fashionmnist": "FashionMNIST/raw/*-ubyte(.gz)",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
}


def _raw_gz_present(cls, root: str) -> bool:
    raw = os.path.join(root, cls.__name__, "raw")
    return all(os.path.isfile(os.path.join(raw, os.path.basename(url)))
               for url, _ in cls.resources)


def _open(name: str, cls, root: str, download: bool, **kw):
    try:
        return cls(root, download=download, **kw)
    except RuntimeError as e:
        if "not found" not in str(e).lower():
            raise
        # The official .gz files alone (as distributed) are enough: torchvision's download
        # step finds them, checks their md5 and extracts them without touching the network.
        if not download and name in ("mnist", "fashionmnist") and _raw_gz_present(cls, root):
            return cls(root, download=True, **kw)
        raise FastDMError(
            f"{name} not found under --data-root {root} (torchvision expects {LAYOUT[name]}); "
            f"point --data-root at the folder that holds it, or pass --download to fetch it"
        ) from None
    except (OSError, ValueError, EOFError) as e:  # truncated or unreadable files
        raise FastDMError(f"{name} under {root} could not be read ({e}); "
                          f"delete the damaged files and pass --download") from None


def load_torchvision(name: str, root: str | None, download: bool) -> tuple[ClassImages, ClassImages, list]:
    import torchvision.datasets as tvd

    if root is None:
        raise FastDMError(f"dataset {name} needs --data-root DIR (add --download to fetch it there)")
    if not os.path.isdir(root):
        if download:
            os.makedirs(root, exist_ok=True)
        else:
            raise FastDMError(f"--data-root {root} does not exist; create it and pass --download, "
                              f"or point it at the folder that holds {LAYOUT[name]}")

    def split(train: bool):
        if name in ("mnist", "fashionmnist"):
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            ds = _open(name, cls, root, download, train=train)
            images = ds.data.unsqueeze(1)
            labels = torch.as_tensor(ds.targets)
            classes = [str(c) for c in range(10)] if name == "mnist" else list(ds.classes)
            n = 10
        elif name == "svhn":
            ds = _open(name, tvd.SVHN, root, download, split="train" if train else "test")
            images = torch.from_numpy(np.ascontiguousarray(ds.data))
            labels = torch.from_numpy(np.asarray(ds.labels)).to(torch.int64)
            classes, n = [str(c) for c in range(10)], 10
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = _open(name, cls, root, download, train=train)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
            labels = torch.as_tensor(ds.targets, dtype=torch.int64)
            classes = list(ds.classes)
            n = len(classes)
        return ClassImages.sorted(images.contiguous(), labels, n), classes

    train, classes = split(True)
    test, _ = split(False)
    return train, test, classes
