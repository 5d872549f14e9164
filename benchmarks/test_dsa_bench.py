"""DSA on a multi-class batch: the fused Triton kernels and the batched torch path vs the
reference-style per-class calls, and vs kornia's nearest ops.

Triton rows need CUDA; on the CPU they run only under TRITON_INTERPRET=1 (so CI executes them
once; interpreter times are not speed figures). Bandwidth against a copy and a whole
iteration's augmentation work are in ``python -m benchmarks.dsa_bench``.
"""
import os

import pytest
import torch

from fastdm import rng
from fastdm.augment import DSAParams, parse_strategy, sample_siamese
from fastdm.compat import DiffAugment, ParamDiffAug
from fastdm.ops.dsa import dsa_augment

STRATEGY = "color_crop_cutout_flip_scale_rotate"
# classes, images per class, channels, pixels
SIZES = {"tiny": (3, 4, 3, 16), "small": (10, 64, 3, 32), "large": (100, 256, 3, 32)}
BACKENDS = ["torch", "triton"]


def batch(size, device):
    classes, per, ch, px = SIZES[size]
    x = torch.randn(classes * per, ch, px, px, device=device)
    group = torch.arange(classes, device=device).repeat_interleave(per)
    return x, group, classes, per


def skip_unless_runs(backend, device):
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1 for a smoke run)")


def table_for(classes, mode, hw, device):
    keys = torch.arange(classes, device=device)
    return sample_siamese(parse_strategy(STRATEGY), DSAParams(aug_mode=mode), hw, 0, rng.AUG, 0, keys=keys)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["S", "M"])
def test_batched_dsa(timed, device, size, mode, backend):
    """Draw every class's row and augment the whole batch (what the engine does per chunk)."""
    skip_unless_runs(backend, device)
    x, group, classes, _ = batch(size, device)

    def augment():
        return dsa_augment(x, table_for(classes, mode, x.shape[2:], device), group, backend=backend)

    assert timed(augment).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_dsa_forward_backward(timed, device, size, backend):
    """Synthetic images: forward and the input gradient (mode S)."""
    skip_unless_runs(backend, device)
    x, group, classes, _ = batch(size, device)
    x.requires_grad_(True)
    table = table_for(classes, "S", x.shape[2:], device)
    up = torch.randn_like(x)

    def fwd_bwd():
        return torch.autograd.grad(dsa_augment(x, table, group, backend=backend), x, up)[0]

    assert timed(fwd_bwd).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_dsa_uint8_nhwc(timed, device, size, backend):
    """The real stream: uint8 NHWC from the store to normalised, augmented floats."""
    skip_unless_runs(backend, device)
    x, group, classes, _ = batch(size, device)
    u8 = (x.abs() * 60).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    table = table_for(classes, "S", x.shape[2:], device)

    def augment():
        return dsa_augment(u8, table, group, mean=[0.5] * 3, std=[0.25] * 3, channels_last=True,
                           backend=backend)

    assert timed(augment).shape == x.shape


@pytest.mark.parametrize("mode", ["S", "M"])
def test_per_class_calls(timed, device, size, mode):
    """The same work as one DiffAugment call per class (the reference's draws and torch ops),
    as the reference-style loop makes them."""
    x, _, classes, per = batch(size, device)
    param = ParamDiffAug()
    param.aug_mode = mode

    def loop():
        return [DiffAugment(x[c * per:(c + 1) * per], STRATEGY, seed=1000 + c, param=param,
                            backend="torch") for c in range(classes)]

    assert len(timed(loop)) == classes


# -- kornia (benchmark-only dependency: pip install kornia) -----------------------------------
KORNIA_OPS = ["affine", "color", "flip"]


def _kornia_aug(op):
    K = pytest.importorskip("kornia.augmentation")
    if op == "affine":  # DSA: scale then rotate (two resamplings); kornia: one warp
        return K.RandomAffine(degrees=15.0, scale=(1 / 1.2, 1.2), p=1.0, same_on_batch=False)
    if op == "color":
        return K.ColorJiggle(brightness=0.5, contrast=0.5, saturation=0.5, p=1.0)
    return K.RandomHorizontalFlip(p=0.5)


_DSA_EQUIV = {"affine": "scale_rotate", "color": "color", "flip": "flip"}


@pytest.mark.parametrize("op", KORNIA_OPS)
def test_kornia(timed, device, size, op):
    aug = _kornia_aug(op)
    x, _, _, _ = batch(size, device)
    assert timed(aug, x).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", KORNIA_OPS)
def test_fastdm_vs_kornia(timed, device, size, op, backend):
    """fastdm's equivalent of each kornia row: per-sample parameters, mode M over its ops."""
    skip_unless_runs(backend, device)
    x, _, _, _ = batch(size, device)
    n = x.shape[0]
    ops = parse_strategy(_DSA_EQUIV[op])
    keys = torch.arange(n, device=device)

    def augment():
        t = sample_siamese(ops, DSAParams(aug_mode="M"), x.shape[2:], 0, rng.AUG, 0, keys=keys)
        return dsa_augment(x, t, backend=backend)

    assert timed(augment).shape == x.shape
