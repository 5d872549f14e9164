"""fastdm's fused operations as public functions, for an existing DM-family training loop.

These signatures are stable (the ``fastdm.ops`` modules behind them may change). Every
function takes ``backend``: 'torch' (plain PyTorch, any device), 'triton' (fused kernels; CUDA)
or None (automatic: Triton on CUDA, torch elsewhere; FASTDM_BACKEND=torch|triton overrides).
Features are *class-contiguous*: class c owns ``counts[c]`` consecutive rows of an [N, D]
matrix; counts may differ between classes and between the real and the synthetic side.
Recipe: docs/compat.md.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import rng
from .augment import DSAParams, DSATable, build_table, parse_strategy, sample_siamese
from .errors import FastDMError
from .ops import attention, characteristic, dsa, gaussian_mmd as _gaussian, linear_mmd as _linear
from .ops import segments

__all__ = ["DSAParams", "DSATable", "dsa_table", "sample_dsa_table", "dsa_augment", "segment_sum",
           "linear_mmd", "dm_loss", "gaussian_mmd", "relative_bandwidths", "cf_sums",
           "cf_distance", "attention_map"]

# The reference's raw draws that each op reads (the spec-oracle's names), and whether integer.
_DRAWS = {"color": ("brightness", "saturation", "contrast"), "crop": ("crop_x", "crop_y"),
          "cutout": ("cutout_x", "cutout_y"), "flip": ("flip",), "scale": ("scale_x", "scale_y"),
          "rotate": ("rotate",)}
_INTEGER = ("crop_x", "crop_y", "cutout_x", "cutout_y")
# build_table's argument for each draw
_ARG = {"brightness": "b", "saturation": "s", "contrast": "c", "crop_x": "tx", "crop_y": "ty",
        "cutout_x": "oh", "cutout_y": "ow", "flip": "f", "scale_x": "sx_u", "scale_y": "sy_u",
        "rotate": "rot_u"}


def _params(params) -> DSAParams:
    """DSAParams, the reference's ParamDiffAug (or anything with its attributes), or None."""
    from .compat.augment import as_dsa_params
    return as_dsa_params(params)


def _hw(image_size) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise FastDMError(f"image_size must be an int or (height, width), got {image_size!r}")
    return int(hw[0]), int(hw[1])


def dsa_table(strategy: str, image_size, *, op=None, brightness=None, saturation=None,
              contrast=None, crop_x=None, crop_y=None, cutout_x=None, cutout_y=None, flip=None,
              scale_x=None, scale_y=None, rotate=None, params=None) -> DSATable:
    """A DSA table from explicit draws, one row per entry, by the reference's formulas.

    Each draw is a [G] tensor, as the reference's DiffAugment draws it: ``brightness``,
    ``saturation``, ``contrast``, ``flip``, ``scale_x``, ``scale_y``, ``rotate`` uniforms in
    [0, 1) (torch.rand); ``crop_x``/``crop_y`` integer shifts of rows/columns in [-p, p]
    (p = round(side * ratio_crop_pad)); ``cutout_x``/``cutout_y`` integer cutout centres
    (row, column). ``op`` [G] (mode S, params.aug_mode == 'S', the default) indexes the
    strategy's ops: the one op each row applies. Give the draws of every op a row applies;
    the others may be omitted. ``params``: DSAParams or the reference's ParamDiffAug.
    """
    ops = parse_strategy(strategy)
    if not ops:
        raise FastDMError("dsa_table needs a strategy with at least one op, e.g. 'color_crop'")
    p = _params(params)
    given = {k: v for k, v in dict(brightness=brightness, saturation=saturation, contrast=contrast,
                                   crop_x=crop_x, crop_y=crop_y, cutout_x=cutout_x, cutout_y=cutout_y,
                                   flip=flip, scale_x=scale_x, scale_y=scale_y, rotate=rotate).items()
             if v is not None}
    if op is not None:
        given["op"] = op
    if not given:
        raise FastDMError("dsa_table needs the draws of at least one row (e.g. op=, crop_x=)")
    given = {k: torch.as_tensor(v) for k, v in given.items()}
    first = next(iter(given.values()))
    g, dev = (first.shape[0] if first.dim() else 0), first.device
    for k, v in given.items():
        if v.dim() != 1 or v.shape[0] != g:
            raise FastDMError(f"dsa_table: every draw must be a 1-D tensor of {g} rows; {k} has "
                              f"shape {tuple(v.shape)}")
        if (k in _INTEGER or k == "op") and v.dtype.is_floating_point:
            raise FastDMError(f"dsa_table: {k} must hold integers, got {v.dtype}")
    if p.aug_mode == "S":
        chosen = given.get("op", torch.zeros(g, dtype=torch.int64, device=dev))
        if g and (int(chosen.min()) < 0 or int(chosen.max()) >= len(ops)):
            raise FastDMError(f"dsa_table: op indices must lie in [0, {len(ops)}) for '{strategy}'")
        applied = {ops[i] for i in chosen.unique().tolist()}
    else:
        chosen, applied = torch.zeros(g, dtype=torch.int64, device=dev), set(ops)
    missing = [d for o in ops if o in applied for d in _DRAWS[o] if d not in given]
    if missing:
        raise FastDMError(f"dsa_table: the rows apply ops whose draws are missing: {', '.join(missing)}")
    raw = {_ARG[d]: given[d].to(dev) if d in given else
           torch.zeros(g, device=dev, dtype=torch.int64 if d in _INTEGER else torch.float32)
           for d in _ARG}
    return build_table(ops, p, _hw(image_size), op=chosen.to(dev), scalar_trig=True, **raw)


def sample_dsa_table(strategy: str, image_size, classes, *, seed: int = 0, iteration: int = 0,
                     params=None, device=None) -> DSATable:
    """One independent DSA row (op and parameters) per class, for Siamese augmentation.

    ``classes``: a count k (rows for classes 0..k-1) or an integer tensor of class ids. Row c
    is a pure function of (seed, iteration, c), on any device: the row fastdm condense --seed
    draws for class c at that iteration. Augment a class's real and synthetic images with the
    same row (``dsa_augment``'s ``group``) and they see the same transform, as the reference's
    shared seed does, for every class in one call.
    """
    ops = parse_strategy(strategy)
    if isinstance(classes, int):
        keys = torch.arange(classes, device=device)
    elif isinstance(classes, torch.Tensor) and classes.dim() == 1 and not classes.dtype.is_floating_point:
        keys = classes.to(device if device is not None else classes.device)
    else:
        raise FastDMError(f"classes must be a count or a 1-D integer tensor of class ids, got {classes!r}")
    if int(seed) < 0 or int(iteration) < 0:
        raise FastDMError(f"seed and iteration must be non-negative, got {seed} and {iteration}")
    return sample_siamese(ops, _params(params), _hw(image_size), int(seed), rng.AUG, int(iteration),
                          keys=keys)


def dsa_augment(x: torch.Tensor, table: DSATable, group: torch.Tensor | None = None, *, mean=None,
                std=None, backend: str | None = None) -> torch.Tensor:
    """Augment images x [N, C, H, W]: image i by table row ``group[i]`` (default: row i).

    x: float32/bf16/fp16 (differentiable w.r.t. x), or uint8 with per-channel ``mean`` and
    ``std``: then ``(x / 255 - mean) / std`` is augmented in the same pass (float32 out), as
    torchvision's ToTensor + Normalize would give it. Returns a new contiguous tensor.
    """
    return dsa.dsa_augment(x, table, group, mean=mean, std=std, backend=backend)


def segment_sum(features: torch.Tensor, counts, *, out: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Per-class sums of class-contiguous rows [N, D] -> float32 [k, D]; counts [k] (zeros
    allowed). With ``out`` (float32 [k, D]) the sums are added into it: accumulate the real
    side over several chunks. Deterministic."""
    return segments.segment_sum(features, counts, out=out, backend=backend)


def linear_mmd(real_sums: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts, *,
               backend: str | None = None) -> torch.Tensor:
    """DM's distance per class, ||real_sums_c / real_counts_c - mean(syn_c)||^2 -> float32 [k]:
    real_sums [k, D] from ``segment_sum``, syn class-contiguous [Ns, D]. Differentiable
    w.r.t. syn only."""
    return _linear.linear_mmd(real_sums, real_counts, syn, syn_counts, backend=backend)


def dm_loss(real: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts, *,
            backend: str | None = None) -> torch.Tensor:
    """The reference DM loss, sum over classes of ||mean(real_c) - mean(syn_c)||^2, as a 0-d
    float32 tensor, from class-contiguous features. The real side is a constant (the reference
    detaches it); differentiable w.r.t. syn."""
    sums = segment_sum(real.detach(), real_counts, backend=backend)
    return linear_mmd(sums, real_counts, syn, syn_counts, backend=backend).sum()


def gaussian_mmd(real: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts,
                 bandwidths, *, real_term: bool = True, backend: str | None = None) -> torch.Tensor:
    """Per-class biased multi-kernel MMD^2 -> float32 [k], with the kernel
    k(a, b) = sum over sigma in ``bandwidths`` of exp(-||a - b||^2 / (2 sigma^2)): a list for
    all classes or a per-class [k, NB] tensor (``relative_bandwidths``). ``real_term=False``
    drops the real-real term (constant in syn: same gradient, nr^2 fewer pairs).
    Differentiable w.r.t. syn only."""
    return _gaussian.gaussian_mmd(real, real_counts, syn, syn_counts, bandwidths,
                                  real_term=real_term, backend=backend)


def relative_bandwidths(real: torch.Tensor, real_counts, multiples: Sequence[float], *,
                        backend: str | None = None) -> torch.Tensor:
    """Per-class bandwidths [k, NB]: ``multiples`` times the class's feature scale, the root
    mean squared distance between its real rows (a class without spread: its feature norm,
    at least 1)."""
    return _gaussian.relative_bandwidths(real, real_counts, multiples, backend=backend)


def cf_sums(x: torch.Tensor, counts, t: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Per-class sums of cos(x t^T) and sin(x t^T) -> float32 [k, 2, M]: x class-contiguous
    [N, D], frequencies t [M, D]. Sums, so the real side accumulates over chunks."""
    return characteristic.cf_sums(x, counts, t, backend=backend)


def cf_distance(real_sums: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts,
                t: torch.Tensor, alpha: float = 0.5, beta: float = 0.5, *,
                backend: str | None = None) -> torch.Tensor:
    """NCFM's characteristic-function distance per class -> float32 [k]: with a, b the moduli
    of the real and synthetic empirical characteristic functions at each frequency,
    mean over m of sqrt(alpha (a - b)^2 + beta max(2 (a b - Re_r Re_s - Im_r Im_s), 1e-12)).
    real_sums [k, 2, M] from ``cf_sums``. Differentiable w.r.t. syn only."""
    return characteristic.cf_distance(real_sums, real_counts, syn, syn_counts, t, alpha, beta,
                                      backend=backend)


def attention_map(a: torch.Tensor, p: float = 1.0, *, nonnegative: bool = False,
                  backend: str | None = None) -> torch.Tensor:
    """DataDAM's spatial attention map per image: activations a [N, C, H, W] -> float32
    [N, H * W], sum over channels of |a|^p, L2-normalised. ``nonnegative``: a >= 0 (a ReLU's
    output), which saves a pass. Differentiable w.r.t. a."""
    return attention.attention_map(a, p, nonnegative=nonnegative, backend=backend)
