"""Default PyTorch initialisation, drawn from fastdm.rng instead of the global RNG.

A new nn.Module gets Conv2d/Linear weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(kaiming_uniform with a=sqrt(5) reduces to that bound) and norm layers get weight 1, bias 0.
Drawing the same distributions in place from counter-based words lets one module (and later
one compiled graph) serve every iteration, reproducibly and without touching torch's RNG.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import rng

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


@torch.no_grad()
def init_parameters_(model: nn.Module, *words) -> nn.Module:
    """Re-draw every parameter of ``model`` in place; the draw is a function of ``words``."""
    for mi, m in enumerate(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            for pi, p in enumerate((m.weight, m.bias)):
                if p is None:
                    continue
                idx = torch.arange(p.numel(), device=p.device)
                u = rng.uniform(*words, mi, pi, idx, device=p.device, dtype=torch.float32)
                p.copy_(((u * 2.0 - 1.0) * bound).view_as(p))
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            raise TypeError(f"init_parameters_ does not know how to initialise {type(m).__name__}")
    return model
