"""CutMix (Yun et al., 2019) as DANCE's and NCFM's training code applies it: with probability
``prob`` per batch, a box of area 1 - lam (lam ~ Beta(1, 1) = U(0, 1)) around a uniform centre,
clipped to the image, is pasted from a random partner in the batch; the loss is mixed by the
kept area. Every draw is a function of ``words`` (fastdm.rng), so training is reproducible."""
from __future__ import annotations

import math

import torch

from .. import rng


def cutmix_(x: torch.Tensor, prob: float, *words):
    """CutMix on a batch [n, C, H, W] in place: (partner order, kept-area weight) or None."""
    n, _, h, w = x.shape
    u = rng.uniform(*words, torch.arange(4), dtype=torch.float64)
    if float(u[0]) >= prob:
        return None
    lam = float(u[1])
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx, cy = int(u[2] * w), int(u[3] * h)
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    partner = rng.permutation(n, *words, 1, device=x.device)
    x[:, :, y1:y2, x1:x2] = x[partner, :, y1:y2, x1:x2]
    return partner, 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
