"""FLOPs and activation sizes of an embedder, from the model's layers (shapes traced on the
meta device): the run plan's cost figures and the benchmarks' roofline.

Convention: a multiply-add is 2 FLOPs. ``matmul`` counts Conv2d and Linear multiply-adds (the
tensor-core work that sets the floor); ``elementwise`` counts everything else per output element
(bias add 1, ReLU 1, average pool k*k, GroupNorm/InstanceNorm/LayerNorm/BatchNorm 5 in training
mode: mean, variance, normalise, scale, shift). Only ``matmul`` enters the floor time: the rest
is memory-bound.

A DM iteration runs the embedder forward on every real and synthetic image and backward to the
synthetic images only (weights are frozen, so only input gradients: one more pass of the same
multiply-adds). Hence ``iteration_flops = F * (n_real + 2 * n_syn)`` with F the per-image
forward matmul FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fastdm.models import create_model

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)


@dataclass
class FlopCount:
    matmul: int = 0
    elementwise: int = 0
    per_layer: list = field(default_factory=list)  # (module name, kind, flops)
    outputs: int = 0       # elements of every leaf module's output (what autograd keeps, roughly)
    widest: int = 0        # the largest input + output elements of one leaf (a forward's peak)

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise


def _module_flops(m: nn.Module, out: torch.Tensor) -> tuple[int, int]:
    """(matmul, elementwise) FLOPs of one leaf module producing ``out``."""
    n_out = out.numel()
    bias = n_out if getattr(m, "bias", None) is not None else 0
    if isinstance(m, nn.Conv2d):
        per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        return 2 * per_out * n_out, bias
    if isinstance(m, nn.Linear):
        return 2 * m.in_features * n_out, bias
    if isinstance(m, _NORMS):
        return 0, 5 * n_out
    if isinstance(m, _ACTS):
        return 0, n_out
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        ks = m.kernel_size
        return 0, (ks * ks if isinstance(ks, int) else math.prod(ks)) * n_out
    return 0, 0


def count_flops(model: nn.Module, input_shape, method: str = "embed") -> FlopCount:
    """FLOPs of one call ``model.<method>(x)`` with x of ``input_shape`` (batch included)."""
    count = FlopCount()
    names = {m: n for n, m in model.named_modules()}

    def hook(m, args, out):
        count.outputs += out.numel()
        count.widest = max(count.widest, out.numel() + sum(a.numel() for a in args
                                                           if isinstance(a, torch.Tensor)))
        mm, ew = _module_flops(m, out)
        count.matmul += mm
        count.elementwise += ew
        if mm or ew:
            count.per_layer.append((names[m], type(m).__name__, mm + ew))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        dev = next(model.parameters()).device
        with torch.no_grad():
            getattr(model, method)(torch.empty(tuple(input_shape), device=dev))
    finally:
        for h in hooks:
            h.remove()
    return count


def embed_flops_per_image(model: str, channels: int, size: int, num_classes: int = 10) -> FlopCount:
    """Forward FLOPs of ``model.embed`` for one channels x size x size image."""
    with torch.device("meta"):
        net = create_model(model, channels, num_classes, (size, size))
    return count_flops(net, (1, channels, size, size))


def iteration_flops(per_image_matmul: int, n_real: int, n_syn: int) -> int:
    """Embedder matmul FLOPs of one DM iteration (module docstring)."""
    return per_image_matmul * (n_real + 2 * n_syn)
