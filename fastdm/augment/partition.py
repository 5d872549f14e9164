"""Partition and expand (IDC's "multi-formation", used by IDM, M3D, DANCE and NCFM): each stored
synthetic image holds factor x factor tiles, and each tile is upsampled to a full-size image
before augmentation. The storage budget stays ipc images per class; the embedder sees
ipc x factor^2 images per class.

Layout (DANCE/NCFM's ``decode_zoom``): tiles row-major (tile k = row i * factor + column j), each
upsampled bilinearly (align_corners=False) by the factor; within a class the decoded images go
tile-major, so class c's decoded row k * ipc + s comes from its stored image s, tile k. The
initial tiles are real images resized by nearest neighbour to the tile size (DANCE/NCFM's
'mix' init), tile k of stored image s holding the class's (k * ipc + s)-th chosen image.
The side must be a multiple of the factor (the codebases pad otherwise; fastdm refuses).

``Partition`` carries the index maps the fused DSA kernels read (fastdm.ops.dsa): which stored
image and tile each decoded image comes from, and the decoded row of each (stored image, tile).
``decode`` is the torch reference.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Partition(NamedTuple):
    factor: int
    source: torch.Tensor  # int64 [N']: the stored row of each decoded image
    tile: torch.Tensor    # int64 [N']: its tile (row-major)
    index: torch.Tensor   # int64 [N, factor^2]: the decoded row of each (stored row, tile)

    @property
    def decoded(self) -> int:
        return self.source.numel()


def partition(classes: int, ipc: int, factor: int, device=None) -> Partition:
    """The maps of ``classes`` class-contiguous blocks of ``ipc`` stored images each."""
    f2 = factor * factor
    c = torch.arange(classes, device=device)[:, None, None]
    k = torch.arange(f2, device=device)[None, :, None]
    s = torch.arange(ipc, device=device)[None, None, :]
    source = (c * ipc + s).expand(classes, f2, ipc).reshape(-1)   # decoded order: c, k, s
    tile = k.expand(classes, f2, ipc).reshape(-1)
    decoded = (c * ipc * f2 + k * ipc + s)                         # [classes, f2, ipc]
    index = decoded.permute(0, 2, 1).reshape(classes * ipc, f2)
    return Partition(factor, source, tile, index)


def tiles(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, factor^2, C, H / factor, W / factor], tiles row-major."""
    n, c, h, w = x.shape
    return x.view(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5) \
        .reshape(n, factor * factor, c, h // factor, w // factor)


def decode(x: torch.Tensor, p: Partition) -> torch.Tensor:
    """The decoded images (differentiable): tile ``p.tile[n]`` of stored image ``p.source[n]``,
    upsampled to full size."""
    if p.factor == 1:
        return x[p.source]
    t = tiles(x, p.factor)[p.source, p.tile]
    return F.interpolate(t, scale_factor=p.factor, mode="bilinear", align_corners=False)


def decode_set(x: torch.Tensor, labels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole stored set (class-contiguous, equal ipc per class) decoded, with its labels."""
    if factor == 1:
        return x, labels
    classes = int(labels.unique().numel())
    ipc = x.shape[0] // classes
    p = partition(classes, ipc, factor, x.device)
    return decode(x, p), labels[p.source]


def encode_init(real: torch.Tensor, ipc: int, factor: int, resize: str = "nearest") -> torch.Tensor:
    """Stored images from ``real`` [classes * ipc * factor^2, C, H, W] (class-contiguous, each
    class's images in the order they fill tiles): each resized to the tile (``resize``: nearest
    as DANCE's and NCFM's init, or bilinear as IDM's ``downscale``) and placed so that tile k
    of stored image s holds image k * ipc + s."""
    if factor == 1:
        return real
    n, c, h, w = real.shape
    f2 = factor * factor
    small = F.interpolate(real, size=(h // factor, w // factor), mode=resize,
                          **({"align_corners": False} if resize == "bilinear" else {}))
    small = small.view(-1, f2, ipc, c, h // factor, w // factor).transpose(1, 2)  # [K, s, k, ...]
    small = small.reshape(-1, factor, factor, c, h // factor, w // factor)
    return small.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w).contiguous()
