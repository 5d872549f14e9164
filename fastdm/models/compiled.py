"""The embedder under torch.compile: one graph serves the whole run.

Every iteration draws fresh weights *in place* (fastdm.models.init_parameters_), and the
compiled graph reads the parameters as inputs, so new weights never trigger a recompilation;
only new input shapes do (a chunk's real batch, its synthetic batch, a smaller last chunk),
and dynamo turns those into one dynamic-shape graph after the second size.
Evaluation compiles its training step the same way: one model (SharedCompiled) or one vmapped
stack of models per evaluation, whatever the number of models trained.
"""
from __future__ import annotations

import copy
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


# The smallest side from which auto compiles on the CPU (28 px: MNIST's shape; compiled 1.4-1.5x
# faster per iteration, benchmarks/RESULTS.md "Issue 23"). At 8 px the compile time (~20 s per
# graph) outweighs a short run.
CPU_COMPILE_FROM = 28
# Evaluation's training step on the CPU compiles only when it trains on at least this many
# images in all (models x passes x images): compiled it saved 0.5-0.65 ms per image trained
# against a cold compile of 16-21 s (ConvNet, native convolutions, 28 and 32 px, ipc 1-50;
# RESULTS.md "Issue 23, continued").
CPU_COMPILE_MIN_IMAGES = 40_000


def wants_compile(mode: str, device: torch.device, image_size, work: int | None = None) -> bool:
    """auto: on CUDA, and on the CPU for images from CPU_COMPILE_FROM's side on and, where
    ``work`` (images trained in all) is given, at least CPU_COMPILE_MIN_IMAGES of them."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    if device.type == "cuda":
        return True
    return min(image_size) >= CPU_COMPILE_FROM and (work is None or work >= CPU_COMPILE_MIN_IMAGES)


# Graphs dynamo may keep per code object. Every engine and every evaluation shares one code
# object (ConvNet.embed, the vmapped step), each adds a few graphs (grad and inference mode,
# new image sizes, a last smaller batch), and past torch's default of 8 a fullgraph compile
# fails outright: a process that condenses or evaluates several sets would crash.
RECOMPILE_LIMIT = 256


def compile_fn(fn, backend: str = "inductor", **options):
    """torch.compile(fn, fullgraph=True) with room for the graphs of many runs per process."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit"):  # the name differs between versions
        if getattr(dynamo_config, name, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            setattr(dynamo_config, name, RECOMPILE_LIMIT)
    if getattr(dynamo_config, "accumulated_recompile_limit", RECOMPILE_LIMIT) < 4 * RECOMPILE_LIMIT:
        dynamo_config.accumulated_recompile_limit = 4 * RECOMPILE_LIMIT
    return torch.compile(fn, backend=backend, fullgraph=True, **options)


def resolve_compile(mode: str, device: torch.device, image_size, what: str = "the embedder",
                    work: int | None = None) -> bool:
    """Whether to compile for ``mode`` (auto|on|off): wants_compile, and able to ('on' that
    cannot is a FastDMError, 'auto' that cannot a logged warning)."""
    if mode not in ("auto", "on", "off"):
        raise FastDMError(f"--compile must be auto, on or off, got '{mode}'")
    if not wants_compile(mode, device, image_size, work):
        return False
    why = compile_unavailable(device)
    if why is not None:
        if mode == "on":
            raise FastDMError(f"--compile on: {why}; use --compile off")
        log.warning("not compiling %s: %s (eager PyTorch instead)", what, why)
        return False
    return True


class SharedCompiled:
    """One compiled copy of a model that models of the same architecture, trained one after
    another, take turns in: ``load`` copies a model's weights into it in place, ``store``
    copies them back. A compiled module per model would compile again for each (dynamo guards
    on the module), and fall back to eager after its cache limit."""

    def __init__(self, net: torch.nn.Module, backend: str = "inductor", forward=None):
        """``forward(net)``: the function of the copy to compile (default: the copy itself)."""
        self.net = copy.deepcopy(net)
        self.fn = compile_fn(self.net if forward is None else forward(self.net), backend=backend)

    @torch.no_grad()
    def load(self, net: torch.nn.Module) -> None:
        for mine, theirs in zip(self.net.state_dict().values(), net.state_dict().values()):
            mine.copy_(theirs)
        self.net.train(net.training)

    @torch.no_grad()
    def store(self, net: torch.nn.Module) -> None:
        for mine, theirs in zip(self.net.state_dict().values(), net.state_dict().values()):
            theirs.copy_(mine)
