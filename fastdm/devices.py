"""Device selection for --device auto|cpu|cuda[:N]."""
from __future__ import annotations

import platform
import re

import torch

from .errors import FastDMError


def resolve_device(name: str | None) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):  # checked before CUDA, so a typo is named as such
        if not torch.cuda.is_available():
            raise FastDMError("--device cuda was asked for but torch sees no CUDA device; "
                              "use --device cpu (or auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FastDMError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise FastDMError(f"unknown --device '{name}'; choose auto, cpu, cuda or cuda:N")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (from /proc/cpuinfo on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
