"""Numeric precision of the embedder's forward passes.

fp32 is the reference's arithmetic (and the default on the CPU, where fastdm reproduces the
reference up to the rounding of its Winograd real-branch convolutions; --conv direct for the
reference's own). bf16 runs the embedder under torch.autocast (convolutions and linear layers in
bf16; the per-class sums and the MMD accumulate in fp32 whatever the feature dtype, and the
loss is fp32; on CUDA autocast also runs GroupNorm in fp32, on the CPU it stays bf16).
auto: bf16 on CUDA GPUs that compute it natively, fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from .errors import FastDMError
from .settings import PRECISIONS

log = logging.getLogger("fastdm")

def resolve_precision(mode: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for ``mode`` (auto|fp32|bf16) on ``device``."""
    if mode not in PRECISIONS:
        raise FastDMError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{mode}'")
    device = torch.device(device)
    bf16_ok = device.type == "cpu" or (device.type == "cuda" and native_bf16(device))
    if mode == "auto":
        if device.type == "cuda" and not bf16_ok:
            log.warning("this GPU has no bf16 support: the embedder runs in fp32")
        return "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    if mode == "bf16" and not bf16_ok:
        raise FastDMError(f"--precision bf16: {device} does not support bf16; use --precision fp32")
    return mode


def native_bf16(device: torch.device) -> bool:
    """Whether this CUDA device computes bf16 natively (compute capability 8.0 on: A100, H100;
    V100 and T4 would emulate it, slower than fp32)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def cpu_native_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16; Linux /proc/cpuinfo;
    None where that cannot be read). Without them oneDNN emulates bf16: measured on a 2-core
    AVX2-only EPYC, compiled bf16 3.7-7x and eager bf16 15x slower than fp32."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return None


def warn_if_slow(precision: str, device: torch.device, what: str) -> None:
    """A logged warning for bf16 on a CPU that emulates it."""
    if precision == "bf16" and torch.device(device).type == "cpu" and cpu_native_bf16() is False:
        log.warning("%s in bf16 on a CPU without bf16 instructions (no avx512_bf16/amx_bf16): "
                    "emulated, measured 4-15x slower than fp32 here; --precision fp32 is faster", what)


def autocast(precision: str, device: torch.device):
    """The context the embedder's forward runs in."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
