"""The DSA parameter table: explicit per-group transform parameters.

One row per Siamese group (in DM: one class in one iteration; real and synthetic images of
that class share the row). Samples point at rows through a ``group`` index, so sharing is by
index, never by copying. Every sampler (fastdm's counter-based one and the reference-order
one in fastdm.compat) produces raw uniform/integer draws and calls ``build_table``, so the
formulas that turn draws into transforms live in one place. The fused kernels consume this
same table.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from .params import DSAParams, cutout_size


@dataclass
class DSATable:
    ops: tuple            # op names in strategy order
    mode: str             # 'S' (one op per group, ``op``) or 'M' (all ops in order)
    op: torch.Tensor      # [G] int64 index into ops
    brightness: torch.Tensor  # [G] additive shift (b - 0.5) * ratio
    saturation: torch.Tensor  # [G] factor s * ratio
    contrast: torch.Tensor    # [G] factor c + ratio
    crop: torch.Tensor        # [G, 2] int64 (row shift, column shift)
    cutout: torch.Tensor      # [G, 4] int64 box (row0, row1, col0, col1), end exclusive, clipped
    flip: torch.Tensor        # [G] bool: reverse the width axis
    scale: torch.Tensor       # [G, 2, 3] affine matrix
    rotate: torch.Tensor      # [G, 2, 3] affine matrix

    @property
    def groups(self) -> int:
        return self.op.shape[0]

    def to(self, device) -> "DSATable":
        return replace(self, **{f.name: getattr(self, f.name).to(device)
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})

    @staticmethod
    def cat(tables: list["DSATable"]) -> "DSATable":
        """The rows of several tables (same ops and mode) one after another."""
        first = tables[0]
        return replace(first, **{f.name: torch.cat([getattr(t, f.name) for t in tables])
                                 for f in fields(first) if isinstance(getattr(first, f.name), torch.Tensor)})

    def rows(self, index: torch.Tensor) -> "DSATable":
        """The table restricted to rows ``index`` (e.g. one chunk of classes)."""
        return replace(self, **{f.name: getattr(self, f.name)[index.to(getattr(self, f.name).device)]
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})


def rotation_matrices(angle: torch.Tensor, scalar_ops: bool = False) -> torch.Tensor:
    """[[cos t, -sin t, 0], [sin t, cos t, 0]] per angle (float32, on angle's device).

    ``scalar_ops`` evaluates cos/sin one 0-dim tensor at a time, as the reference does; the
    vectorised CPU kernels may round differently in the last bit.
    """
    if scalar_ops:
        rows = [torch.stack([torch.cos(t), torch.sin(-t), torch.zeros_like(t),
                             torch.sin(t), torch.cos(t), torch.zeros_like(t)]) for t in angle.unbind(0)]
        m = torch.stack(rows) if rows else angle.new_zeros(0, 6)
    else:
        z = torch.zeros_like(angle)
        m = torch.stack([torch.cos(angle), torch.sin(-angle), z, torch.sin(angle), torch.cos(angle), z], 1)
    return m.view(-1, 2, 3).to(torch.float32)


def scale_matrices(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(sx)
    return torch.stack([sx, z, z, z, sy, z], 1).view(-1, 2, 3).to(torch.float32)


def build_table(ops, p: DSAParams, hw: tuple[int, int], *, op, b, s, c, tx, ty, oh, ow, f,
                sx_u, sy_u, rot_u, scalar_trig: bool = False) -> DSATable:
    """Turn raw draws ([G] each: uniforms b, s, c, f, sx_u, sy_u, rot_u; integers op, tx, ty,
    oh, ow) into the table, with the reference's formulas and operation order."""
    h, w = hw
    ch, cw = cutout_size(h, w, p)
    r0 = oh - ch // 2
    c0 = ow - cw // 2

    def box(lo, size, n):  # the set of clamp(lo + k, 0, n - 1), k < size, as [start, end)
        if size <= 0:
            return lo * 0, lo * 0
        return lo.clamp(0, n - 1), (lo + size - 1).clamp(0, n - 1) + 1

    (rs, re), (cs, ce) = box(r0, ch, h), box(c0, cw, w)
    ratio = p.ratio_scale
    angle = (rot_u - 0.5) * 2 * p.ratio_rotate / 180 * float(torch.pi)
    return DSATable(
        ops=tuple(ops), mode=p.aug_mode, op=op.to(torch.int64),
        brightness=(b - 0.5) * p.brightness,
        saturation=s * p.saturation,
        contrast=c + p.contrast,
        crop=torch.stack([tx, ty], 1).to(torch.int64),
        cutout=torch.stack([rs, re, cs, ce], 1).to(torch.int64),
        flip=f < p.prob_flip,
        scale=scale_matrices(sx_u * (ratio - 1.0 / ratio) + 1.0 / ratio,
                             sy_u * (ratio - 1.0 / ratio) + 1.0 / ratio),
        rotate=rotation_matrices(angle, scalar_trig),
    )
