"""Pictures of runs, drawn with the ecosystem's libraries: image grids by torchvision.utils,
plots by matplotlib (its Agg backend through a Figure of our own: no pyplot state, no display
needed). Every picture is written atomically (fastdm.io)."""
from __future__ import annotations

import logging
import os

import torch

from .io import _atomic

log = logging.getLogger("fastdm")

MAX_GRID_CLASSES = 100
MAX_GRID_IPC = 20


def _figure(width: float, height: float):
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache notes are not ours
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str) -> None:
    _atomic(path, lambda fh: fig.savefig(fh, format="png"))


def grid_image(images01: torch.Tensor, classes: int, ipc: int, pad: int = 2) -> tuple[torch.Tensor, int, int]:
    """torchvision's grid of a class-sorted set: ipc rows x classes columns (at most
    MAX_GRID_IPC x MAX_GRID_CLASSES). Returns (grid [C, H, W] in [0, 1], columns, rows)."""
    from torchvision.utils import make_grid

    n_c, n_i = min(classes, MAX_GRID_CLASSES), min(ipc, MAX_GRID_IPC)
    if (n_c, n_i) != (classes, ipc):
        log.info("grid.png shows %d of %d classes and %d of %d images per class", n_c, classes, n_i, ipc)
    x = images01.reshape(classes, ipc, *images01.shape[1:])[:n_c, :n_i]
    rows = x.transpose(0, 1).reshape(n_i * n_c, *x.shape[2:])   # row-major: one row per image index
    grid = make_grid(rows.clamp(0, 1), nrow=n_c, padding=pad, pad_value=1.0)
    return grid, n_c, n_i


def synset_figure(images01: torch.Tensor, classes: int, ipc: int, class_names=None, title: str = ""):
    """The set as a grid, each column labelled with its class's name."""
    grid, n_c, n_i = grid_image(images01, classes, ipc)
    h, w = images01.shape[2:]
    pad = 2
    cell = 0.45 if max(h, w) <= 32 else 0.7
    fig = _figure(max(4.0, n_c * cell + 0.8), max(2.0, n_i * cell + 1.2))
    ax = fig.add_subplot()
    img = grid.permute(1, 2, 0).numpy()
    ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    names = [str(n) for n in (class_names or range(classes))][:n_c]
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(n_c)], names,
                  rotation=90 if max(map(len, names)) > 3 or n_c > 20 else 0,
                  fontsize=8 if n_c <= 20 else 5)
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for j, v in enumerate(values):
        total += v
        if j >= window:
            total -= values[j - window]
        out.append(total / min(j + 1, window))
    return out


def loss_figure(losses: list, title: str = "DM loss"):
    """The condensation loss (per class, mean over classes) against the iteration, with a
    moving average so the trend shows through per-iteration noise; None marks iterations whose
    value was not computed."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    points = [(i + 1, v) for i, v in enumerate(losses) if v is not None]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, color="#aabee6", linewidth=0.8, label="per iteration")
        ax.plot(xs, _moving_average(list(ys), max(1, len(ys) // 20)), color="#143ca0",
                linewidth=1.8, label="moving average")
        if min(ys) > 0 and max(ys) / min(ys) > 50:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no iterations run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss per class")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def training_figure(curves: list[dict], title: str):
    """Evaluation: each model's training loss per epoch (left) and its test accuracy at the
    validation points (right; the final test at least). ``curves``: per model
    {"loss": [per epoch], "acc": [(epoch, accuracy in [0, 1]), ...]}."""
    fig = _figure(9.0, 3.4)
    left, right = fig.subplots(1, 2)
    over_time = any(len(c.get("acc", [])) > 1 for c in curves)
    for k, c in enumerate(curves):
        if c.get("loss"):
            left.plot(range(1, len(c["loss"]) + 1), c["loss"], linewidth=1, label=f"model {k + 1}")
        if c.get("acc") and over_time:
            ep, acc = zip(*c["acc"])
            right.plot(ep, [100 * a for a in acc], marker="o", markersize=3, linewidth=1,
                       label=f"model {k + 1}")
    if not over_time:  # the final test only: one bar per model and their mean
        finals = [100 * c["acc"][-1][1] for c in curves if c.get("acc")]
        right.bar(range(1, len(finals) + 1), finals, color="#143ca0", width=0.6)
        if finals:
            mean = sum(finals) / len(finals)
            right.axhline(mean, color="#a04614", linewidth=1, label=f"mean {mean:.2f} %")
            right.set_ylim(max(0.0, min(finals) - 10), min(100.0, max(finals) + 5))
            right.legend(fontsize=7)
        right.set_xticks(range(1, len(finals) + 1))
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.set_yscale("log")
    right.set_xlabel("epoch" if over_time else "model")
    right.set_ylabel("test accuracy (%)")
    for ax in (left, right) if over_time else (left,):
        if len(curves) <= 10 and curves:
            ax.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def reproduction_figure(rows: list[dict], paper):
    """Measured against published accuracy per cell: DM and random subsets side by side.
    ``paper(dataset, ipc, 0 | 1)``: the paper's DM (0) or random (1) number, or None."""
    fig = _figure(max(5.0, 1.4 * len(rows) + 1.5), 3.6)
    ax = fig.add_subplot()
    width = 0.2
    series = (("DM, paper", "#9db4e0", lambda r: paper(r["dataset"], r["ipc"], 0)),
              ("DM, measured", "#143ca0", lambda r: 100 * r["acc_mean"]),
              ("random, paper", "#e0b49d", lambda r: paper(r["dataset"], r["ipc"], 1)),
              ("random, measured", "#a04614", lambda r: 100 * r["random_mean"]))
    for j, (label, color, value) in enumerate(series):
        xs = [i + (j - 1.5) * width for i, r in enumerate(rows) if value(r) is not None]
        ys = [value(r) for r in rows if value(r) is not None]
        if ys:
            ax.bar(xs, ys, width, label=label, color=color)
    ax.set_xticks(range(len(rows)), [f"{r['dataset']}\nipc {r['ipc']}" for r in rows], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("DM paper's table: published and measured", fontsize=10)
    return fig


def save_run_pictures(out_dir: str, images: torch.Tensor, denormalize, classes: int, ipc: int,
                      losses: list, title: str = "DM loss", class_names=None) -> None:
    """grid.png (the stored images, class names under the columns) and loss.png."""
    images01 = denormalize(images.detach().cpu().float())
    save_figure(synset_figure(images01, classes, ipc, class_names,
                              title=f"{ipc} image(s) per class"), os.path.join(out_dir, "grid.png"))
    save_figure(loss_figure(losses, title=title), os.path.join(out_dir, "loss.png"))
