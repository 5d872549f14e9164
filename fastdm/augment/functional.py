"""The DSA ops on NCHW float tensors with per-sample parameters (the pure-torch reference).

Each function takes parameters already expanded to one row per sample. The arithmetic
follows the spec (section 4) operation for operation, so that with the same parameters
the results equal the reference's bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x + _col(shift, x)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * _col(factor, x) + m


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * _col(factor, x) + m


def crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[i, j] = x[i + shift_row, j + shift_col] inside the image, else 0 (integer translate)."""
    n, c, h, w = x.shape
    shift = shift.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + shift[:, 0:1]
    cols = torch.arange(w, device=x.device)[None, :] + shift[:, 1:2]
    r_ok = (rows >= 0) & (rows < h)
    c_ok = (cols >= 0) & (cols < w)
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    keep = (r_ok[:, :, None] & c_ok[:, None, :])[:, None]
    return torch.where(keep, out, torch.zeros((), dtype=x.dtype, device=x.device))


def cutout(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Zero rows [box0, box1) x columns [box2, box3); multiplies by a 0/1 mask as the reference."""
    n, _, h, w = x.shape
    box = box.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_r = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])
    in_c = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])
    mask = (~(in_r[:, :, None] & in_c[:, None, :])).to(x.dtype)
    return x * mask.unsqueeze(1)


def flip(x: torch.Tensor, do_flip: torch.Tensor) -> torch.Tensor:
    return torch.where(do_flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling, zero padding, align_corners=False, through ``theta`` [N, 2, 3].

    The sampling grid is built on theta's device and then moved to x's, as the reference does
    (it builds the grid on the CPU).
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)
