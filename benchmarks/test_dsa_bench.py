"""DSA on a multi-class batch: fastdm's batched apply vs the reference-style per-class calls."""
import pytest
import torch

from fastdm import rng
from fastdm.augment import DSAParams, apply_dsa, parse_strategy, sample_siamese
from fastdm.compat import DiffAugment, ParamDiffAug

STRATEGY = "color_crop_cutout_flip_scale_rotate"
# classes, images per class, channels, pixels
SIZES = {"tiny": (3, 4, 3, 16), "small": (10, 64, 3, 32), "large": (100, 256, 3, 32)}


def batch(size, device):
    classes, per, ch, px = SIZES[size]
    x = torch.randn(classes * per, ch, px, px, device=device)
    group = torch.arange(classes, device=device).repeat_interleave(per)
    return x, group, classes, per


@pytest.mark.parametrize("mode", ["S", "M"])
def test_batched_dsa(timed, device, size, mode):
    x, group, classes, _ = batch(size, device)
    table = sample_siamese(parse_strategy(STRATEGY), DSAParams(aug_mode=mode), x.shape[2:], 0, rng.AUG, 0,
                           keys=torch.arange(classes, device=device))
    out = timed(apply_dsa, x, table, group)
    assert out.shape == x.shape


def test_per_class_reference_style(timed, device, size):
    x, _, classes, per = batch(size, device)
    param = ParamDiffAug()

    def loop():
        return [DiffAugment(x[c * per:(c + 1) * per], STRATEGY, seed=1000 + c, param=param)
                for c in range(classes)]

    assert len(timed(loop)) == classes
