"""Every setting of a condensation, declared once.

A ``Setting`` names its type, default, check, help, command-line group and kind. From the table
come the config (``fastdm.config.CondenseConfig``), the command line's flags (``fastdm.cli``),
the resume check (``fastdm.checkpoint``) and the settings table of docs/settings.md
(``python -m fastdm.config``). An objective declares its own settings in its own file
(``fastdm.objectives``); they join the table there.

Kinds:
* ``result``: shapes the synthetic set; a resumed run must keep the value.
* ``length``: the number of iterations; a resumed run may extend it.
* ``speed``: how the set is computed, not what (up to float rounding); a resumed run may
  change it (precision and convolutions are recorded when it does).
* ``run``: where data and outputs go, how often to log and save; never changes the set.
A default of None is resolved when the run plan is made (``auto`` says to what).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .checks import positive_floats
from .errors import FastDMError

KINDS = ("result", "length", "speed", "run")
GROUPS = {"data": "data", "method": "method", "schedule": "schedule",
          "output": "output and logging", "speed": "speed and placement (the result stays the same)"}


@dataclass(frozen=True)
class Setting:
    name: str                      # the Python name (config field); the flag is --name-with-dashes
    type: type                     # int, float, str, bool, or list (of floats)
    default: object
    help: str
    group: str                     # a key of GROUPS
    kind: str = "result"
    choices: tuple = ()
    minimum: float | None = None   # ints: inclusive lower bound
    check: Callable | None = None  # value -> value (normalised), or raises FastDMError
    auto: str = ""                 # what a None default becomes, for the help and the docs
    objective: str | None = None   # the objective that owns it (None: every run)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value):
        """``value`` checked (and normalised), or a one-line FastDMError naming the flag."""
        if value is None:
            if self.default is None:
                return None
            raise FastDMError(f"{self.flag} needs a value")
        if self.type is bool:
            if not isinstance(value, bool):
                raise FastDMError(f"{self.flag} must be true or false, got {value!r}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int) or \
                    (self.minimum is not None and value < self.minimum):
                low = f" >= {self.minimum:g}" if self.minimum is not None else ""
                raise FastDMError(f"{self.flag} must be an integer{low}, got {value}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FastDMError(f"{self.flag} must be a number, got {value!r}")
            value = float(value)
        elif self.type is list:
            value = positive_floats(value if isinstance(value, (list, tuple)) else [value], self.flag)
        elif self.type is str and not isinstance(value, str):
            raise FastDMError(f"{self.flag} must be text, got {value!r}")
        if self.choices and value not in self.choices:
            raise FastDMError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}, "
                              f"got '{value}'")
        return self.check(value) if self.check is not None else value

    def default_text(self) -> str:
        if self.default is None:
            return self.auto or "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)


def positive(what: str):
    def check(value):
        if not value > 0:
            raise FastDMError(f"{what} must be positive, got {value}")
        return value
    return check


def _non_negative(flag: str):
    def check(value):
        if not value >= 0:
            raise FastDMError(f"{flag} must be >= 0, got {value}")
        return value
    return check


def _momentum(value):
    if not 0 <= value < 1:
        raise FastDMError(f"--momentum must be in [0, 1), got {value}")
    return value


def _model(value):
    from .models import check_model_name
    return check_model_name(value)


def _embedders(value):
    from .embedders import parse_source
    parse_source(value)
    return value


def _strategy(value):
    from .augment import parse_strategy
    parse_strategy(value)
    return value


# the methods of fastdm.methods (their preset table lives there)
METHOD_NAMES = ("dm", "m3d", "datadam", "ncfm", "idm", "dance")
PRECISIONS = ("auto", "fp32", "bf16")
CONV_MODES = ("auto", "winograd", "direct")
TIERS = ("auto", "gpu", "pinned", "memory", "disk")
COMPILE_MODES = ("auto", "on", "off")

# The settings of every condensation (an objective's own ones live in its file).
CONDENSE = (
    Setting("dataset", str, "digits", "digits (embedded), mnist, fashionmnist, svhn, cifar10, "
            "cifar100, tinyimagenet, imagefolder, or store (a folder made by fastdm prepare)", "data"),
    Setting("data_root", str, None, "the folder holding the dataset (the store for --dataset store)",
            "data", kind="run", auto="none (digits needs none)"),
    Setting("download", bool, False, "let torchvision download the dataset into --data-root",
            "data", kind="run"),
    Setting("image_size", int, None, "side of folder datasets' images after resizing", "data",
            minimum=1, auto="the dataset's (64 for folders)"),
    Setting("method", str, "dm", "a DM-family method's published settings (objective, factor, "
            "image optimiser, learning rate, iterations, real batch, augmentation); explicit flags "
            "override them", "method", choices=METHOD_NAMES),
    Setting("objective", str, None, "the distance matched per class", "method",
            auto="the method's"),
    Setting("factor", int, None, "partition and expand: each stored image holds factor x factor "
            "sub-images, each upsampled to full size before augmentation (storage stays ipc "
            "images per class)", "method", minimum=1, auto="the method's (dm: 1)"),
    Setting("ipc", int, None, "synthetic images per class", "method", minimum=1,
            auto="10 (digits: 1)"),
    Setting("model", str, None, "the embedder, a fresh random network every iteration", "method",
            check=_model, auto="the method's (datadam: ConvNetBN), else the dataset's: ConvNet "
            "(ConvNetD4 at 64 px, D5 at 128, D6 at 256)"),
    Setting("embedders", str, None, "where each iteration's embedder comes from: random (fresh "
            "weights every iteration), queue (IDM: networks trained online on real batches) or "
            "bank:PATH (DANCE/NCFM: a member of a pretrained bank, its weights interpolated "
            "between initial and trained; make one with fastdm pretrain)", "method",
            check=_embedders, auto="the method's (dm: random)"),
    Setting("bank_members", int, None, "how many of the bank's members the run draws from (the "
            "first N; 0: all)", "method", minimum=0, auto="the method's (dance: 5; ncfm: all)"),
    Setting("calib_weight", float, None, "weight of the calibration step: after each iteration's "
            "matching, one more update per class on the cross-entropy of the bank member's "
            "trained network on the augmented synthetic images (DANCE, NCFM; 0: none)", "method",
            check=_non_negative("--calib-weight"), auto="the method's (dance, ncfm: 1; else 0)"),
    Setting("ce_weight", float, None, "IDM's class-aware term: this weight x the queue network's "
            "running training accuracy in percent x the cross-entropy of its logits on the "
            "augmented synthetic images, added to each class's loss (0: none)", "method",
            check=_non_negative("--ce-weight"), auto="the method's (idm: 0.5)"),
    Setting("queue_size", int, 100, "--embedders queue: the most networks the queue holds (the "
            "oldest leaves first)", "method", minimum=1),
    Setting("queue_interval", int, None, "--embedders queue: iterations between new random "
            "networks joining the queue", "method", minimum=1,
            auto="the method's (idm: 30; 5 at ipc 1)"),
    Setting("queue_train", int, 2, "--embedders queue: networks trained after each iteration",
            "method", minimum=0),
    Setting("queue_steps", int, None, "--embedders queue: SGD steps of each trained network per "
            "iteration", "method", minimum=1, auto="the method's (idm: 10; 50 for cifar100 ipc 10 "
            "and tinyimagenet ipc 50)"),
    Setting("queue_meter_reset", int, None, "--embedders queue: iterations between restarts of "
            "the networks' accuracy meters (IDM's evaluation interval)", "method", minimum=1,
            auto="the method's (idm: 100; 500 at ipc 50 and tinyimagenet ipc 10, 1000 at "
                 "tinyimagenet ipc 50)"),
    Setting("queue_batch", int, 256, "--embedders queue: real images (of all classes) per "
            "training step", "method", minimum=1),
    Setting("queue_lr", float, 0.01, "--embedders queue: the networks' SGD learning rate "
            "(momentum 0.9, weight decay 5e-4)", "method", check=positive("--queue-lr")),
    Setting("init", str, None, "initial synthetic images: real (real images of each class drawn "
            "at random), first (each class's first images in dataset order, as DANCE's and NCFM's "
            "code take them) or noise", "method", choices=("real", "first", "noise"),
            auto="the method's (dance, ncfm: first, ncfm at 1000 classes: real; else real)"),
    Setting("real_batches", str, None, "which real images each class matches per iteration: "
            "random (batch_real drawn afresh every iteration) or first (the class's first "
            "batch_real images in dataset order, the same every iteration, as NCFM's loader)",
            "method", choices=("random", "first"),
            auto="the method's (ncfm: first, at 1000 classes: random; else random)"),
    Setting("strategy", str, None, "DSA ops joined by _, or none", "method", check=_strategy,
            auto="the method's (dm: color_crop_cutout_flip_scale_rotate, no flip for digits)"),
    Setting("aug_mode", str, None, "DSA mode: S applies one op per class and iteration, M all",
            "method", choices=("S", "M"), auto="the method's (dm: S)"),
    Setting("init_resize", str, None, "how a real image shrinks to a tile at --factor > 1: "
            "nearest (DANCE, NCFM) or bilinear (IDM)", "method",
            choices=("nearest", "bilinear"), auto="the method's (dm: nearest)"),
    Setting("iterations", int, None, "iterations (a resumed run may extend them)", "schedule",
            kind="length", minimum=0, auto="the method's (dm: 20000; digits: 400)"),
    Setting("batch_real", int, None, "real images per class per iteration", "schedule", minimum=1,
            auto="the method's (dm: 256; digits: 64)"),
    Setting("optimizer", str, None, "the synthetic images' optimiser: sgd (with momentum) or adamw", "schedule",
            choices=("sgd", "adamw"), auto="the method's (dm: sgd)"),
    Setting("lr_plateau", int, None, "halve the images' learning rate when the iteration's loss "
            "(matching plus calibration, per class) has not improved for this many iterations "
            "(NCFM's ReduceLROnPlateau; 0: never). Reads the loss every iteration", "schedule",
            minimum=0, auto="the method's (ncfm: 500; else 0)"),
    Setting("image_space", str, None, "the space the image optimiser steps in: normalized (DM's "
            "reference) or pixels (values in [0, 1], as DANCE's and NCFM's code)", "schedule",
            choices=("normalized", "pixels"), auto="the method's (dm: normalized; pixels with adamw)"),
    Setting("lr_img", float, None, "learning rate of the synthetic images", "schedule",
            check=positive("--lr-img"), auto="the method's (dm: 1; 10 for cifar10 at ipc >= 100)"),
    Setting("momentum", float, None, "SGD momentum of the synthetic images (sgd only)", "schedule",
            check=_momentum, auto="the method's (dm: 0.5)"),
    Setting("weight_decay", float, None, "decoupled weight decay of the images (adamw only)",
            "schedule", check=_non_negative("--weight-decay"), auto="the method's (ncfm: 5e-4)"),
    Setting("step", str, None, "when the images are updated: iteration (one step on the sum "
            "over classes: DM, DataDAM) or class (one step after each class's loss, on the shared "
            "set: NCFM's, IDM's and DANCE's loops; one class per pass)", "schedule",
            choices=("iteration", "class"), auto="the method's (dm: iteration)"),
    Setting("clamp", bool, None, "keep every pixel in the valid range [0, 1] after each update",
            "schedule", auto="the method's (dm: off)"),
    Setting("seed", int, 0, "every random draw derives from it", "schedule", minimum=0),
    Setting("checkpoint_every", int, 500, "iterations between checkpoints (0: only at the end)",
            "output", kind="run", minimum=0),
    Setting("keep_checkpoint", bool, False, "keep the checkpoint after a finished run, so that a "
            "later --resume can extend it with more iterations (off: removed once the outputs "
            "are written)", "output", kind="run"),
    Setting("log_every", int, 10, "iterations between loss readings (and, under torchrun, the "
            "points where ranks meet)", "output", kind="run", minimum=1),
    Setting("device", str, "auto", "auto, cpu, cuda or cuda:N", "speed", kind="speed",
            auto="cuda when there is one"),
    Setting("class_chunk", int, None, "classes per pass through the embedder", "speed",
            kind="speed", minimum=1, auto="by a memory budget"),
    Setting("compile", str, "auto", "torch.compile the embedder (one graph for the run); auto: on "
            "CUDA, and on the CPU for images of 28 px or more", "speed", kind="speed",
            choices=COMPILE_MODES),
    Setting("precision", str, "auto", "the embedder's arithmetic: fp32 (the reference's) or bf16 "
            "autocast with fp32 sums; auto: bf16 on CUDA GPUs with native bf16, else fp32",
            "speed", kind="speed", choices=PRECISIONS),
    Setting("conv", str, "auto", "the embedder's convolutions: winograd (native CPU kernels: "
            "Winograd 3x3 layers, a fused first block for 1-4 channel images) or direct; auto: winograd for "
            "ConvNets on the CPU in fp32", "speed",
            kind="speed", choices=CONV_MODES),
    Setting("real_tier", str, "auto", "where the real uint8 images live: gpu, pinned (CUDA), "
            "memory (CPU), disk (a store through the page cache); auto: by size", "speed",
            kind="speed", choices=TIERS),
)


def python_names(message: str) -> str:
    """A check's message for Python callers: ``--batch-real`` becomes ``batch_real``."""
    return re.sub(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", lambda m: m.group(1).replace("-", "_"),
                  message)


def by_name(settings) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def markdown_table(settings) -> str:
    """The settings as a markdown table, grouped as the command line groups them."""
    lines = ["| flag | default | kind | meaning |", "|---|---|---|---|"]
    for group in GROUPS:
        for s in settings:
            if s.group != group:
                continue
            what = s.help + (f" (`--objective {s.objective}` only)" if s.objective else "")
            if s.choices:
                what += f"; one of {', '.join(f'`{c}`' for c in s.choices)}"
            lines.append(f"| `{s.flag}` | {s.default_text()} | {s.kind} | {what} |")
    return "\n".join(lines) + "\n"
