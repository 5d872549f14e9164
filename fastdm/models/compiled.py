"""The embedder under torch.compile: one graph serves the whole run.

Every iteration draws fresh weights *in place* (fastdm.models.init_parameters_), and the
compiled graph reads the parameters as inputs, so new weights never trigger a recompilation;
only new input shapes do (a chunk's real batch, its synthetic batch, a smaller last chunk),
and dynamo turns those into one dynamic-shape graph after the second size.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch

from ..errors import FastDMError

log = logging.getLogger("fastdm")


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None."""
    try:
        import torch._dynamo as dynamo
        if not dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
    except Exception as e:  # pragma: no cover - depends on the installation
        return f"torch._dynamo does not import ({e})"
    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None \
            and shutil.which("c++") is None:
        return "the CPU backend of torch.compile needs a C++ compiler (g++), and none is on PATH"
    return None


def wants_compile(mode: str, device: torch.device, image_size) -> bool:
    """auto: on CUDA, and on the CPU for images of 32 px or more (there the compiled real
    forward was 1.76x faster; at 8 px the compile time, ~20 s per graph, outweighs a short run)."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    return device.type == "cuda" or min(image_size) >= 32


def compiled_embed(net: torch.nn.Module, device: torch.device, mode: str, image_size,
                   backend: str = "inductor"):
    """(embed function, compiled?): ``net.embed``, compiled when ``mode`` asks for it
    (auto|on|off) and it can run here. 'on' that cannot run is an error; 'auto' that cannot is
    a logged warning."""
    if not wants_compile(mode, device, image_size):
        return net.embed, False
    why = compile_unavailable(device)
    if why is not None:
        if mode == "on":
            raise FastDMError(f"--compile on: {why}; use --compile off")
        log.warning("not compiling the embedder: %s (eager PyTorch instead)", why)
        return net.embed, False
    return torch.compile(net.embed, backend=backend, fullgraph=True), True
