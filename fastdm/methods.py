"""DM-family methods as presets: each one's published condensation settings in one table.

``--method NAME`` fills every setting the user did not give from its row; explicit flags
override it. What the rows are taken from (each method's released code, which wins where it
disagrees with its paper):

* ``dm``: DatasetCondensation's ``main_DM.py`` (Zhao & Bilen, WACV 2023).
* ``m3d``: M3D (Zhang et al., AAAI 2024) publishes no code; the row is its paper's setting on
  fastdm's engine (IDC-style factor 2, DM's optimiser), not checked against an implementation.
* ``datadam``: DataDAM's ``main_DataDAM.py`` (Sajedi et al., ICCV 2023): 64 real images per
  class, SGD lr 1, momentum 0.5, and BatchNorm in the ConvNet (its ``get_network('ConvNet')``
  hard-codes it; its paper's table says instance norm): ConvNetBN where the dataset's default
  embedder is the depth-3 ConvNet.
* ``ncfm``: NCFM's CIFAR configs (Wang et al., CVPR 2025), random embedders only (its trained
  "middle" encoders and calibration are the trained-embedder pipeline's): factor 2, AdamW lr 1e-3
  and weight decay 5e-4 on [0, 1] pixels, clamped, one update after each class (its loop's
  order), 1024 real images per class, IDC-style augmentation (colour, crop and cutout on every
  batch).

Dataset-specific schedules (the embedded digits' short one) override the rows' schedule; the
rows override the generic defaults.
"""
from __future__ import annotations

from .settings import METHOD_NAMES

# None: the dataset's default (its DSA strategy, its embedder)
METHODS: dict[str, dict] = {
    "dm": dict(objective="dm", factor=1, optimizer="sgd", lr_img=1.0, momentum=0.5,
               weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=256, strategy=None,
               aug_mode="S", model=None),
    "m3d": dict(objective="m3d", factor=2, optimizer="sgd", lr_img=1.0, momentum=0.5,
                weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=256, strategy=None,
                aug_mode="S", model=None),
    "datadam": dict(objective="datadam", factor=1, optimizer="sgd", lr_img=1.0, momentum=0.5,
                    weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=64,
                    strategy=None, aug_mode="S", model="ConvNetBN"),
    "ncfm": dict(objective="ncfm", factor=2, optimizer="adamw", lr_img=1e-3, momentum=0.5,
                 weight_decay=5e-4, step="class", clamp=True, iterations=20000, batch_real=1024,
                 strategy="color_crop_cutout", aug_mode="M", model=None),
}
assert tuple(METHODS) == METHOD_NAMES

PRESET_KEYS = tuple(METHODS["dm"])


def preset(method: str, dataset: str, ipc: int, default_model: str) -> dict:
    """The method's settings for ``dataset`` (whose default embedder is ``default_model``) at
    ``ipc``."""
    row = dict(METHODS[method])
    if row["model"] is None or default_model != "ConvNet":
        row["model"] = default_model
    if method == "dm" and dataset == "cifar10" and ipc >= 100:  # the reference's rule
        row["lr_img"] = 10.0
    return row


def markdown_table() -> str:
    """The presets as the README shows them."""
    keys = ("objective", "factor", "optimizer", "lr_img", "momentum", "weight_decay", "step", "clamp",
            "iterations", "batch_real", "strategy", "aug_mode", "model")
    lines = ["| --method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in METHODS.items():
        cells = []
        for k in keys:
            v = row[k]
            cells.append("dataset's" if v is None else ("on" if v is True else "off" if v is False
                                                         else f"{v:g}" if isinstance(v, float) else str(v)))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
