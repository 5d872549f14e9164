"""Class-indexed uint8 image sets, normalised on the fly on the target device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class ClassImages:
    """Images sorted by class: class c occupies rows offsets[c] : offsets[c] + counts[c].

    ``images`` is uint8 [N, C, H, W] (what the pixels are on disk, 4x smaller than float32);
    ``labels`` int64 [N]. Keeping the set class-sorted turns "image j of class c" into one
    add, which the samplers rely on.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mapped: bool = False  # images memory-mapped from a store file (fastdm.data.store)
    counts: torch.Tensor = field(init=False)
    offsets: torch.Tensor = field(init=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("ClassImages.images must be uint8 [N, C, H, W]")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("ClassImages.labels must be [N]")
        self.labels = self.labels.to(torch.int64)
        if self.labels.numel() and not bool((self.labels[1:] >= self.labels[:-1]).all()):
            raise ValueError("ClassImages must be sorted by label; use ClassImages.sorted()")
        self.counts = torch.bincount(self.labels, minlength=self.num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    @classmethod
    def sorted(cls, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "ClassImages":
        """Build from images in any order; a stable sort keeps each class's original order."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        order = torch.sort(labels, stable=True).indices
        return cls(images[order].contiguous(), labels[order].contiguous(), num_classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


@dataclass
class Dataset:
    """A dataset's train and test splits plus the constants that describe them."""

    name: str
    train: ClassImages
    test: ClassImages
    classes: Sequence[str]
    mean: Sequence[float]
    std: Sequence[float]
    default_model: str
    default_strategy: str
    fingerprint: str | None = None  # a store's identity: its source listing, or its writing

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, images_u8: torch.Tensor, device=None) -> torch.Tensor:
        return normalize(images_u8, self.mean, self.std, device)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp_(0.0, 1.0)


def normalize(images_u8: torch.Tensor, mean, std, device=None) -> torch.Tensor:
    """uint8 -> (x / 255 - mean) / std in float32, as torchvision's ToTensor + Normalize.

    The same operations in the same order, so the values equal the reference's
    preprocessed tensors bit for bit. The uint8 tensor moves to ``device`` first (4x fewer
    bytes than moving floats).
    """
    x = images_u8.to(device=device, non_blocking=True) if device is not None else images_u8
    x = x.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
