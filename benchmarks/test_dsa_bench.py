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
    """Draw every class's row and augment the whole batch (what the engine does per chunk)."""
    x, group, classes, _ = batch(size, device)
    ops, p, keys = parse_strategy(STRATEGY), DSAParams(aug_mode=mode), torch.arange(classes, device=device)

    def augment():
        return apply_dsa(x, sample_siamese(ops, p, x.shape[2:], 0, rng.AUG, 0, keys=keys), group)

    assert timed(augment).shape == x.shape


@pytest.mark.parametrize("mode", ["S", "M"])
def test_per_class_calls(timed, device, size, mode):
    """The same work as one DiffAugment call per class (fastdm.compat: the reference's draws,
    fastdm's ops), as the reference-style loop makes them."""
    x, _, classes, per = batch(size, device)
    param = ParamDiffAug()
    param.aug_mode = mode

    def loop():
        return [DiffAugment(x[c * per:(c + 1) * per], STRATEGY, seed=1000 + c, param=param)
                for c in range(classes)]

    assert len(timed(loop)) == classes
