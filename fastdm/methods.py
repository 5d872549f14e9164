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
* ``ncfm``: NCFM's CIFAR configs and loop (Wang et al., CVPR 2025) on DANCE's pipeline, as its
  code runs it: a pretrained bank (all members), factor 2, AdamW lr 1e-3 and weight decay 5e-4
  on [0, 1] pixels, clamped, one update after each class, then a calibration update per class
  (weight 1), each class's first 1024 real images every iteration (its loader's
  ``class_sample``; its ImageNet-1K loader draws at random, and so does the preset at 1000
  classes), the tiles initialised from each class's first images, IDC-style augmentation
  (colour, crop and cutout on every batch). ``--embedders random`` gives part 1's
  random-embedder variant.
* ``idm``: IDM's ``IDM_cifar10.py`` with its ``command.txt`` flags (Zhao et al., CVPR 2023): a
  queue of networks trained online (a new one every 30 iterations, 5 at ipc 1; up to 100; two
  trained 10 SGD steps per iteration on 256 real images), the class-aware cross-entropy term
  (weight 0.5 x the network's running accuracy in percent), factor 2 with bilinear-halved
  initial tiles, SGD lr 0.2 and momentum 0.5 on the normalised images, one update per class,
  the full DSA in mode S, 256 real images per class (5000 at ipc 1).
* ``dance``: DANCE's ``reproduce_condense.py`` (Zhang et al., IJCAI 2024): the first 5 members
  of a pretrained bank, interpolated, plus the calibration step (weight 1); factor 2; SGD lr
  0.01 x ipc, momentum 0.5, on [0, 1] pixels, clamped; one update per class; 128 random real
  images per class; the tiles initialised from each class's first images (its 'mix' init);
  10000 iterations; IDC-style augmentation.

Dataset-specific schedules (the embedded digits' short one) override the rows' schedule; the
rows override the generic defaults.
"""
from __future__ import annotations

from .settings import METHOD_NAMES

# None: the dataset's default (its DSA strategy, its embedder)
_RANDOM = dict(embedders="random", bank_members=0, calib_weight=0.0, ce_weight=0.0,
               queue_interval=30, queue_steps=10, queue_meter_reset=100, init="real",
               init_resize="nearest", real_batches="random", image_space=None, lr_plateau=0)
METHODS: dict[str, dict] = {
    "dm": dict(objective="dm", factor=1, optimizer="sgd", lr_img=1.0, momentum=0.5,
               weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=256,
               strategy=None, aug_mode="S", model=None, **_RANDOM),
    "m3d": dict(objective="m3d", factor=2, optimizer="sgd", lr_img=1.0, momentum=0.5,
                weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=256,
                strategy=None, aug_mode="S", model=None, **_RANDOM),
    "datadam": dict(objective="datadam", factor=1, optimizer="sgd", lr_img=1.0, momentum=0.5,
                    weight_decay=0.0, step="iteration", clamp=False, iterations=20000, batch_real=64,
                    strategy=None, aug_mode="S", model="ConvNetBN", **_RANDOM),
    "ncfm": dict(objective="ncfm", factor=2, optimizer="adamw", lr_img=1e-3, momentum=0.5,
                 weight_decay=5e-4, step="class", clamp=True, iterations=20000, batch_real=1024,
                 strategy="color_crop_cutout", aug_mode="M", model=None,
                 **{**_RANDOM, "embedders": "bank", "calib_weight": 1.0, "lr_plateau": 500,
                    "init": "first", "real_batches": "first"}),
    "idm": dict(objective="dm", factor=2, optimizer="sgd", lr_img=0.2, momentum=0.5,
                weight_decay=0.0, step="class", clamp=False, iterations=20000, batch_real=256,
                strategy=None, aug_mode="S", model=None,
                **{**_RANDOM, "embedders": "queue", "ce_weight": 0.5, "init_resize": "bilinear"}),
    "dance": dict(objective="dm", factor=2, optimizer="sgd", lr_img=0.01, momentum=0.5,
                  weight_decay=0.0, step="class", clamp=True, iterations=10000, batch_real=128,
                  strategy="color_crop_cutout", aug_mode="M", model=None,
                  **{**_RANDOM, "embedders": "bank", "bank_members": 5, "calib_weight": 1.0,
                     "image_space": "pixels", "init": "first"}),
}
assert tuple(METHODS) == METHOD_NAMES

PRESET_KEYS = tuple(METHODS["dm"])


# what preset() changes by setting, as the table shows it
RULES = {("dm", "lr_img"): "1 (cifar10 ipc >= 100: 10)", ("dance", "lr_img"): "0.01 x ipc",
         ("idm", "batch_real"): "256 (ipc 1: 5000)",
         ("idm", "ce_weight"): "0.5 (cifar10 ipc >= 50, cifar100 ipc >= 10: 0.1; tinyimagenet "
                               "ipc 50: 0.8)",
         ("ncfm", "optimizer"): "adamw (cifar100 ipc 10: sgd, lr 0.01)",
         ("ncfm", "init"): "first (1000 classes: real)",
         ("ncfm", "real_batches"): "first (1000 classes: random)"}


def preset(method: str, dataset: str, ipc: int, default_model: str, classes: int = 10) -> dict:
    """The method's settings for ``dataset`` (whose default embedder is ``default_model``, with
    ``classes`` classes) at ``ipc``."""
    row = dict(METHODS[method])
    if row["model"] is None or default_model != "ConvNet":
        row["model"] = default_model
    if method == "dm" and dataset == "cifar10" and ipc >= 100:  # the reference's rule
        row["lr_img"] = 10.0
    if method == "dance":  # reproduce_condense.py: lr_img = 0.01 * ipc, depth 3 below ImageNet
        row["lr_img"] = 0.01 * ipc
        if dataset == "tinyimagenet":
            row["model"] = "ConvNet"
    if method == "ncfm" and dataset == "cifar100" and ipc == 10:  # config/ipc10/cifar100.yaml
        row.update(optimizer="sgd", lr_img=0.01, momentum=0.5, weight_decay=0.0)
    if method == "ncfm" and classes >= 1000:  # ImageNetMemoryDataLoader.class_sample: randperm
        row.update(init="real", real_batches="random")
    if method == "idm":  # command.txt's per-setting flags
        if ipc == 1:
            row.update(batch_real=5000, queue_interval=5)
        if (dataset == "cifar10" and ipc >= 50) or (dataset == "cifar100" and ipc >= 10):
            row["ce_weight"] = 0.1
        if dataset in ("cifar10", "cifar100") and ipc >= 50:
            row["queue_meter_reset"] = 500
        if dataset == "cifar100" and ipc == 10:
            row["queue_steps"] = 50
        if dataset == "tinyimagenet" and ipc >= 10:
            row["queue_meter_reset"] = 500 if ipc < 50 else 1000
        if dataset == "tinyimagenet" and ipc >= 50:
            row.update(queue_steps=50, ce_weight=0.8)
    return row


def markdown_table() -> str:
    """The presets as the README shows them."""
    keys = ("objective", "embedders", "factor", "optimizer", "image_space", "lr_img", "momentum",
            "weight_decay", "step", "clamp", "iterations", "batch_real", "strategy", "aug_mode",
            "model", "ce_weight", "calib_weight", "bank_members", "lr_plateau", "init",
            "real_batches")
    lines = ["| --method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in METHODS.items():
        cells = []
        for k in keys:
            v = row[k]
            if k == "image_space" and v is None:
                v = "pixels" if row["optimizer"] == "adamw" else "normalized"
            if k == "bank_members" and row["embedders"] != "bank":
                v = "-"
            elif k == "bank_members" and v == 0:
                v = "all"
            note = RULES.get((name, k))
            if note:
                v = note
            cells.append("dataset's" if v is None else ("on" if v is True else "off" if v is False
                                                         else f"{v:g}" if isinstance(v, float) else str(v)))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
