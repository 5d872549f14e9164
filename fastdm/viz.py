"""PNG pictures of a run, drawn with PIL (no plotting dependency)."""
from __future__ import annotations

import logging

import torch
from PIL import Image, ImageDraw

from .io import atomic_save_png

log = logging.getLogger("fastdm")

MAX_GRID_CLASSES = 100
MAX_GRID_IPC = 20


def synset_grid(images01: torch.Tensor, classes: int, ipc: int, pad: int = 2, min_cell: int = 32) -> Image.Image:
    """ipc rows x classes columns of de-normalised images in [0, 1] (class-sorted input).

    Small images are enlarged (nearest neighbour) to at least ``min_cell`` pixels so 8 px
    digits stay visible. Large sets show the first MAX_GRID_CLASSES x MAX_GRID_IPC.
    """
    n_c, n_i = min(classes, MAX_GRID_CLASSES), min(ipc, MAX_GRID_IPC)
    if (n_c, n_i) != (classes, ipc):
        log.info("grid.png shows %d of %d classes and %d of %d images per class", n_c, classes, n_i, ipc)
    x = images01.view(classes, ipc, *images01.shape[1:])[:n_c, :n_i]
    c, h, w = x.shape[2:]
    zoom = max(1, -(-min_cell // max(h, w)))
    x = x.repeat_interleave(zoom, 3).repeat_interleave(zoom, 4)
    h, w = h * zoom, w * zoom
    canvas = torch.ones(c, n_i * (h + pad) + pad, n_c * (w + pad) + pad)
    for ci in range(n_c):
        for ii in range(n_i):
            top, left = pad + ii * (h + pad), pad + ci * (w + pad)
            canvas[:, top:top + h, left:left + w] = x[ci, ii]
    arr = (canvas.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if c == 1 else arr, "L" if c == 1 else "RGB")


def loss_plot(losses: list, width: int = 640, height: int = 360, title: str = "DM loss") -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 70, 15, 30, 40
    d.text((left, 8), f"{title} (per class, mean over classes) vs iteration", fill="black")
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    # None marks an iteration whose value was not computed (Gaussian MMD between log points)
    points = [(i, v) for i, v in enumerate(losses) if v is not None]
    if not points:
        d.text((left + 10, top + 10), "no iterations run", fill="black")
        return img
    values = [v for _, v in points]
    lo, hi = min(values), max(values)
    span = (hi - lo) or max(abs(hi), 1e-12)
    n = len(losses)
    pw, ph = width - left - right, height - top - bottom

    def xy(i, v):
        return left + (pw * i / max(1, n - 1)), top + ph * (1 - (v - lo) / span)

    # Thin raw curve plus a moving average, so the trend shows through per-iteration noise.
    d.line([xy(i, v) for i, v in points], fill=(170, 190, 230), width=1)
    m = len(points)
    win = max(1, m // 20)
    csum = [0.0]
    for v in values:
        csum.append(csum[-1] + v)
    smooth = [(csum[j + 1] - csum[max(0, j + 1 - win)]) / (j + 1 - max(0, j + 1 - win)) for j in range(m)]
    d.line([xy(i, v) for (i, _), v in zip(points, smooth)], fill=(20, 60, 160), width=2)
    for v in (lo, (lo + hi) / 2, hi):
        d.text((4, xy(0, v)[1] - 6), f"{v:.4g}", fill="black")
    d.text((left, height - bottom + 6), "1", fill="black")
    d.text((width - right - 40, height - bottom + 6), str(n), fill="black")
    return img


def save_run_pictures(out_dir: str, images: torch.Tensor, denormalize, classes: int, ipc: int,
                      losses: list, title: str = "DM loss") -> None:
    import os
    atomic_save_png(synset_grid(denormalize(images.detach().cpu().float()), classes, ipc),
                    os.path.join(out_dir, "grid.png"))
    atomic_save_png(loss_plot(losses, title=title), os.path.join(out_dir, "loss.png"))
