"""Apply a DSA table to a batch: the batched torch path."""
from __future__ import annotations

import torch

from . import functional as Fn
from .table import DSATable


def _rows(v: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    return v[group.to(v.device)]


def apply_op(name: str, x: torch.Tensor, t: DSATable, group: torch.Tensor) -> torch.Tensor:
    """One op of the strategy; ``group`` [N] maps each sample to its table row."""
    if name == "color":
        x = Fn.brightness(x, _rows(t.brightness, group))
        x = Fn.saturation(x, _rows(t.saturation, group))
        return Fn.contrast(x, _rows(t.contrast, group))
    if name == "crop":
        return Fn.crop(x, _rows(t.crop, group))
    if name == "cutout":
        return Fn.cutout(x, _rows(t.cutout, group))
    if name == "flip":
        return Fn.flip(x, _rows(t.flip, group))
    if name == "scale":
        return Fn.affine(x, _rows(t.scale, group))
    if name == "rotate":
        return Fn.affine(x, _rows(t.rotate, group))
    raise ValueError(f"unknown DSA op {name}")


def apply_dsa(x: torch.Tensor, table: DSATable, group: torch.Tensor | None = None) -> torch.Tensor:
    """Augment ``x`` [N, C, H, W]; sample i uses table row ``group[i]`` (default: row i).

    Mode 'M' applies every op in strategy order. Mode 'S' applies to each sample only its
    row's op: samples are gathered per op, transformed together and scattered back, so a
    batch mixing many classes (and ops) costs one pass per op, not one per class.
    """
    if not table.ops or x.shape[0] == 0:
        return x
    n = x.shape[0]
    if group is None:
        if table.groups != n:
            raise ValueError(f"table has {table.groups} rows for {n} samples; pass group=")
        group = torch.arange(n, device=x.device)
    group = group.to(x.device)
    if table.mode == "M":
        for name in table.ops:
            x = apply_op(name, x, table, group)
        return x.contiguous()
    op = _rows(table.op, group).to(x.device)
    present = torch.unique(op).tolist()
    if len(present) == 1:
        return apply_op(table.ops[present[0]], x, table, group).contiguous()
    # every sample is written once: scatter in place into one new tensor (an out-of-place
    # index_copy per op would copy the whole batch per op: 3.5x slower on the CPU)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for k in present:
        idx = torch.nonzero(op == k).squeeze(1)
        sub = apply_op(table.ops[k], x.index_select(0, idx), table, group[idx])
        out.index_copy_(0, idx, sub)
    return out
