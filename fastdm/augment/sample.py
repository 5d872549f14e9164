"""Counter-based DSA sampling: a table row is a pure function of (words, row key).

DM: one row per class per iteration, ``sample_siamese(ops, p, hw, seed, rng.AUG, it,
keys=classes)``; the row of class c does not depend on which other classes are drawn with
it. Evaluation (no seed in the reference): one row per sample, with one op shared by the
whole call, as the reference's mode S picks one op per call.
"""
from __future__ import annotations

import torch

from .. import rng
from .params import DSAParams, crop_shift, cutout_size
from .table import DSATable, build_table

# Slot numbers: each raw draw of a row has its own counter.
_OP, _B, _S, _C, _TX, _TY, _OH, _OW, _F, _SX, _SY, _ROT = range(12)


def _draws(ops, p: DSAParams, hw, words, keys: torch.Tensor, op_keys: torch.Tensor) -> DSATable:
    h, w = hw
    dev = keys.device
    sh, sw = crop_shift(h, w, p)
    ch, cw = cutout_size(h, w, p)
    # every slot's hash in one broadcast call ([slots, rows]): the same values as one
    # rng.uniform/randint call per slot, for a fraction of the small-tensor operations
    slots = torch.arange(_B, _ROT + 1, dtype=torch.int64, device=dev)[:, None]
    drawn = rng.hash32(*words, keys[None, :], slots, device=dev)

    def u(slot):
        return rng.hash_to_uniform(drawn[slot - _B])

    def ri(lo, hi, slot):
        return rng.hash_to_int(drawn[slot - _B], lo, hi)

    n_ops = max(1, len(ops))
    return build_table(
        ops, p, hw,
        op=rng.randint(0, n_ops, *words, op_keys, _OP, device=dev),
        b=u(_B), s=u(_S), c=u(_C),
        tx=ri(-sh, sh + 1, _TX), ty=ri(-sw, sw + 1, _TY),
        oh=ri(0, h + (1 - ch % 2), _OH), ow=ri(0, w + (1 - cw % 2), _OW),
        f=u(_F), sx_u=u(_SX), sy_u=u(_SY), rot_u=u(_ROT),
    )


def sample_siamese(ops, p: DSAParams, hw, *words, keys: torch.Tensor) -> DSATable:
    """One independent row (op and parameters) per key, e.g. per class."""
    keys = keys.to(torch.int64)
    return _draws(ops, p, hw, words, keys, keys)


def sample_per_sample(ops, p: DSAParams, hw, n: int, *words, device="cpu") -> DSATable:
    """n rows with independent parameters and one op for all (non-Siamese DSA)."""
    keys = torch.arange(n, dtype=torch.int64, device=device)
    return _draws(ops, p, hw, words, keys, torch.zeros_like(keys))
