"""Named benchmark settings and the two sides that run them (fastdm's engine, the baseline).

Speed does not depend on pixel values, so the data are random images of the setting's shape.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from fastdm.config import CondenseConfig
from fastdm.data import ClassImages, Dataset
from fastdm.data.images import normalize
from fastdm.engine import DMEngine
from fastdm.errors import FastDMError
from fastdm.footprint import embed_flops_per_image, iteration_flops
from fastdm.plan import make_plan

from .measure import host_available
from .reference_loop import Impl, ReferenceLoop

STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class Setting:
    classes: int
    per_class: int      # real training images per class (the dataset's)
    channels: int
    size: int
    ipc: int
    model: str
    batch_real: int = 256

    def images(self, per_class: int | None = None) -> int:
        return self.classes * (per_class or self.per_class)

    def flops(self, per_class: int | None = None) -> dict:
        f = embed_flops_per_image(self.model, self.channels, self.size, self.classes)
        n_real = self.classes * min(self.batch_real, per_class or self.per_class)
        n_syn = self.classes * self.ipc
        return {"per_image_forward": f.matmul, "per_image_forward_elementwise": f.elementwise,
                "per_iteration": iteration_flops(f.matmul, n_real, n_syn)}

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS = {
    "cifar10-ipc1": Setting(10, 5000, 3, 32, 1, "ConvNet"),
    "cifar10-ipc10": Setting(10, 5000, 3, 32, 10, "ConvNet"),
    "cifar10-ipc50": Setting(10, 5000, 3, 32, 50, "ConvNet"),
    "cifar100-ipc10": Setting(100, 500, 3, 32, 10, "ConvNet"),
    "cifar100-ipc50": Setting(100, 500, 3, 32, 50, "ConvNet"),
    "tinyimagenet-ipc10": Setting(200, 500, 3, 64, 10, "ConvNetD4"),
    "tinyimagenet-ipc50": Setting(200, 500, 3, 64, 50, "ConvNetD4"),
    "imagenet64-ipc10": Setting(1000, 1300, 3, 64, 10, "ConvNetD4"),
    "cifar10-ipc10-b64": Setting(10, 5000, 3, 32, 10, "ConvNet", batch_real=64),
    # the paper's MNIST shape (1x28x28) at the quick schedules' real batch and the paper's
    "mnist-ipc1": Setting(10, 6000, 1, 28, 1, "ConvNet", batch_real=64),
    "mnist-ipc10": Setting(10, 6000, 1, 28, 10, "ConvNet", batch_real=64),
    "mnist-ipc50": Setting(10, 6000, 1, 28, 50, "ConvNet", batch_real=64),
    "mnist-ipc1-b256": Setting(10, 6000, 1, 28, 1, "ConvNet"),
    "mnist-ipc10-b256": Setting(10, 6000, 1, 28, 10, "ConvNet"),
    "mnist-ipc50-b256": Setting(10, 6000, 1, 28, 50, "ConvNet"),
    # a seconds-long smoke setting (tests, CI)
    "toy-ipc2": Setting(4, 40, 3, 16, 2, "ConvNetD2", batch_real=16),
}


def parse_settings(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad or not names:
        raise FastDMError(f"unknown setting '{bad[0] if bad else text}'; choose from "
                          f"{', '.join(SETTINGS)} (comma-separated)")
    return names


def random_uint8(s: Setting, per_class: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (s.images(per_class), s.channels, s.size, s.size),
                           dtype=torch.uint8, device=device, generator=g)
    labels = torch.arange(s.classes, device=device).repeat_interleave(per_class)
    return images, labels


MEAN, STD = 0.5, 0.25  # normalisation constants of the synthetic data


def fastdm_side(s: Setting, per_class: int, device: torch.device, class_chunk=None,
                compile: str = "auto", precision: str = "auto", conv: str = "auto",
                **settings) -> DMEngine:
    """fastdm's engine on a uint8 store of the setting's shape (on the device where it fits,
    as ``fastdm condense`` would place it); ``settings``: more condensation settings
    (objective, factor, ...)."""
    images, labels = random_uint8(s, per_class, "cpu")
    split = ClassImages(images, labels, s.classes)
    data = Dataset("synthetic", split, split, [str(c) for c in range(s.classes)],
                   (MEAN,) * s.channels, (STD,) * s.channels, s.model, STRATEGY)
    cfg = CondenseConfig(dataset="synthetic", ipc=s.ipc, iterations=10 ** 9,
                         batch_real=s.batch_real, model=s.model, device=str(device),
                         class_chunk=class_chunk, compile=compile, precision=precision, conv=conv,
                         **settings)
    return DMEngine(make_plan(cfg, data), data)


def uint8_bytes(s: Setting, per_class: int) -> int:
    return s.images(per_class) * s.channels * s.size * s.size


def baseline_fits(s: Setting, per_class: int, device: torch.device, other_host: int = 0) -> str | None:
    """None if the baseline's float32 copy of the training set fits, else the reason.

    Building it briefly holds the uint8 images too (1.25x); on the CPU ``other_host`` bytes
    (the fastdm side's store) must fit beside it."""
    need = int(uint8_bytes(s, per_class) * 5)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        avail, where = free, "free GPU memory"
    else:
        avail, where = host_available(), "available host memory"
        need += other_host
    if avail is not None and need > 0.6 * avail:
        return (f"the reference holds the training set as float32 on the device: "
                f"{need / 1e9:.1f} GB needed, more than 60 % of the {avail / 1e9:.1f} GB {where}")
    return None


def baseline_side(s: Setting, per_class: int, device: torch.device, impl: Impl | None = None
                  ) -> ReferenceLoop:
    """The reference-style loop on the same shape: normalised float32 images on the device."""
    images, labels = random_uint8(s, per_class, device)
    images = normalize(images, (MEAN,) * s.channels, (STD,) * s.channels)
    return ReferenceLoop(images, labels.cpu(), s.classes, s.ipc, s.batch_real, s.model, STRATEGY,
                         device=device, impl=impl)
