"""Condensation settings, their defaults (spec section 2) and their validation."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import torch

from .errors import FastDMError
from .data.stream import TIERS
from .precision import PRECISIONS
from .backend import CONV_MODES

DEFAULT_ITERATIONS = 20000
DEFAULT_BATCH_REAL = 256

# The embedded default dataset runs a short schedule so that `make run` finishes in about a
# minute on 2 CPU cores; pass --iterations to run longer.
QUICK_SCHEDULES = {"digits": {"iterations": 400, "batch_real": 64, "ipc": 1}}
# Gaussian MMD bandwidths, as multiples of each class's feature spread (the root mean squared
# distance between its real features; fastdm.ops.mmd.relative_bandwidths): narrow, typical, wide.
DEFAULT_BANDWIDTHS = (0.5, 1.0, 2.0)
# ... and its evaluation trains fewer epochs (the set is tiny; 300 epochs converge).
QUICK_EVAL = {"digits": {"models": 5, "epochs": 300}}


def positive_floats(values, what: str) -> list[float]:
    """``values`` as a non-empty list of positive, finite floats, or a FastDMError naming ``what``."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise FastDMError(f"{what} must be a list of positive numbers, got {values!r}") from None
    if not out or not all(0 < v < float("inf") for v in out):
        raise FastDMError(f"{what} must be a non-empty list of positive, finite numbers, got {out}")
    return out


@dataclass
class CondenseConfig:
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    ipc: int | None = None
    iterations: int | None = None
    batch_real: int | None = None
    image_size: int | None = None
    model: str | None = None
    init: str = "real"
    lr_img: float | None = None
    momentum: float = 0.5
    strategy: str | None = None
    aug_mode: str = "S"
    seed: int = 0
    device: str = "auto"
    class_chunk: int | None = None
    mmd: str = "linear"                  # linear (DM, the paper) or gaussian (multi-kernel)
    bandwidths: list | None = None       # Gaussian kernel bandwidths (default DEFAULT_BANDWIDTHS)
    bandwidth_scale: str = "relative"    # relative: multiples of each class's feature spread
    compile: str = "auto"                # torch.compile the embedder: auto (CUDA, or >= 32 px), on, off
    precision: str = "auto"              # embedder arithmetic: auto (bf16 on CUDA, else fp32), fp32, bf16
    channels_last: bool = False          # NHWC embedder (a GPU option; off until measured faster)
    conv: str = "auto"                   # real-branch 3x3 convolutions: auto (Winograd on the CPU), winograd, direct
    real_tier: str = "auto"              # where the real uint8 set lives (fastdm.data.stream.TIERS)
    checkpoint_every: int = 500
    log_every: int = 10
    data_fingerprint: str | None = None  # a store's identity (set by resolved): resume checks it

    # Settings that change the synthetic set; a resumed run must agree on all of them.
    RESULT_KEYS = ("dataset", "ipc", "batch_real", "image_size", "model", "init", "lr_img",
                   "momentum", "strategy", "aug_mode", "seed", "mmd", "bandwidths", "bandwidth_scale",
                   "data_fingerprint")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CondenseConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def resolved(self, dataset) -> "CondenseConfig":
        """Fill the defaults that depend on the dataset and check every value."""
        quick = QUICK_SCHEDULES.get(dataset.name, {})
        c = CondenseConfig(**self.to_dict())
        c.dataset = dataset.name
        if c.data_root is not None:  # so evaluate finds the data from any working directory
            c.data_root = os.path.abspath(c.data_root)
        c.ipc = c.ipc if c.ipc is not None else quick.get("ipc", 10)
        c.iterations = c.iterations if c.iterations is not None else quick.get("iterations", DEFAULT_ITERATIONS)
        c.batch_real = c.batch_real if c.batch_real is not None else quick.get("batch_real", DEFAULT_BATCH_REAL)
        c.image_size = dataset.image_size[0]
        c.data_fingerprint = dataset.fingerprint
        c.model = c.model or dataset.default_model
        c.strategy = c.strategy if c.strategy is not None else dataset.default_strategy
        if c.lr_img is None:  # spec: CIFAR10 at ipc >= 100 uses 10
            c.lr_img = 10.0 if dataset.name == "cifar10" and c.ipc >= 100 else 1.0
        for name, low in (("ipc", 1), ("iterations", 0), ("batch_real", 1), ("seed", 0),
                          ("checkpoint_every", 0), ("log_every", 1)):
            v = getattr(c, name)
            if not isinstance(v, int) or v < low:
                raise FastDMError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {v}")
        if c.class_chunk is not None and c.class_chunk < 1:
            raise FastDMError(f"--class-chunk must be >= 1, got {c.class_chunk}")
        if not c.lr_img > 0:
            raise FastDMError(f"--lr-img must be positive, got {c.lr_img}")
        if not 0 <= c.momentum < 1:
            raise FastDMError(f"--momentum must be in [0, 1), got {c.momentum}")
        if c.init not in ("real", "noise"):
            raise FastDMError(f"--init must be 'real' or 'noise', got '{c.init}'")
        if c.mmd not in ("linear", "gaussian"):
            raise FastDMError(f"--mmd must be 'linear' or 'gaussian', got '{c.mmd}'")
        if c.bandwidth_scale not in ("relative", "absolute"):
            raise FastDMError(f"--bandwidth-scale must be 'relative' or 'absolute', got '{c.bandwidth_scale}'")
        if c.mmd == "linear":
            if c.bandwidths is not None:
                raise FastDMError("--bandwidths applies to --mmd gaussian only (the linear loss has none)")
        else:
            c.bandwidths = positive_floats(list(DEFAULT_BANDWIDTHS) if c.bandwidths is None
                                           else c.bandwidths, "--bandwidths")
        if c.compile not in ("auto", "on", "off"):
            raise FastDMError(f"--compile must be auto, on or off, got '{c.compile}'")
        if c.precision not in PRECISIONS:
            raise FastDMError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{c.precision}'")
        if c.conv not in CONV_MODES:
            raise FastDMError(f"--conv must be one of {', '.join(CONV_MODES)}, got '{c.conv}'")
        if not isinstance(c.channels_last, bool):
            raise FastDMError(f"channels_last must be true or false, got {c.channels_last!r}")
        if c.real_tier not in TIERS:
            raise FastDMError(f"--real-tier must be one of {', '.join(TIERS)}, got '{c.real_tier}'")
        if c.aug_mode not in ("S", "M"):
            raise FastDMError(f"--aug-mode must be S or M, got '{c.aug_mode}'")
        smallest = int(dataset.train.counts.min())
        if smallest == 0:
            empty = [dataset.classes[i] for i in torch.nonzero(dataset.train.counts == 0).flatten().tolist()]
            raise FastDMError(f"class(es) {empty[:5]} of {dataset.name} have no training images; DM "
                              f"needs real images of every class")
        if c.init == "real" and c.ipc > smallest:
            worst = int(dataset.train.counts.argmin())
            raise FastDMError(f"--ipc {c.ipc} is larger than the smallest class of {dataset.name} "
                              f"(class {dataset.classes[worst]} has {smallest} training images); use "
                              f"--ipc {smallest} or less, or --init noise")
        return c
