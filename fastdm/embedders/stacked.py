"""Several networks of one architecture as stacked tensors ([M, ...] per parameter), run by one
vmapped forward (convolutions become one grouped convolution) and stepped by one elementwise
SGD: IDM's queue training and ``fastdm pretrain`` train their networks together this way."""
from __future__ import annotations

import copy

import torch


def skeleton(net: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy of ``net`` for functional calls."""
    return copy.deepcopy(net).to("meta")


def stacked_forward(net: torch.nn.Module):
    """f(params, buffers, x [M, B, ...]) -> logits [M, B, classes], each network on its rows."""
    meta = skeleton(net)

    def one(prm, buf, x):
        return torch.func.functional_call(meta, (prm, buf), (x,))

    return torch.func.vmap(one)


def sgd_(params: dict, grads: dict, momentum: dict, lr: float, mom: float, wd: float) -> None:
    """torch.optim.SGD's step (no dampening, not Nesterov) on each network's rows, in place.
    A momentum buffer of zeros gives exactly torch's first step (buffer = gradient)."""
    with torch.no_grad():
        for name, p in params.items():
            d = grads[name].add(p, alpha=wd) if wd else grads[name]
            momentum[name].mul_(mom).add_(d)
            p.add_(momentum[name], alpha=-lr)


def single_forward(net: torch.nn.Module):
    """The same contract as ``stacked_forward``, one network after another (no vmap)."""
    meta = skeleton(net)

    def run(params, buffers, x):
        return torch.stack([torch.func.functional_call(
            meta, ({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()}),
            (x[i],)) for i in range(x.shape[0])])

    return run
