"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits.

1797 real images in 10 classes, shipped inside scikit-learn, so the default run needs no
download and no --data-root. Split deterministically and stratified: within each class, in
the original order, every fifth image (positions 4, 9, 14, ...) goes to test (about 80/20).
Pixels are 0..16 in the source; they are scaled to 0..255 and rounded to uint8.
"""
from __future__ import annotations

import torch

from ..errors import FastDMError
from .images import ClassImages

# Per-pixel mean and std of the train split of this split after /255, computed once with
# ``python -m fastdm.data.digits`` (the spec gives none for this dataset).
MEAN = (0.3052,)
STD = (0.3760,)


def _load_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise FastDMError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).to(torch.float64)
    images = torch.round(pixels * (255.0 / 16.0)).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    return images, labels


def load_digits_splits() -> tuple[ClassImages, ClassImages]:
    images, labels = _load_arrays()
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).squeeze(1)
        is_test[idx[4::5]] = True
    train = ClassImages.sorted(images[~is_test], labels[~is_test], 10)
    test = ClassImages.sorted(images[is_test], labels[is_test], 10)
    return train, test


if __name__ == "__main__":  # recompute the constants above
    tr, _ = load_digits_splits()
    x = tr.images.to(torch.float64) / 255.0
    print(f"MEAN = ({x.mean():.4f},)\nSTD = ({x.std():.4f},)")
