"""An evaluation protocol's optimisation schedule, shared by one-model and many-model training.

``cfg`` carries the protocol's fields (fastdm.protocols): the optimiser (SGD with momentum, or
AdamW), the learning rate, weight decay and the schedule:
- dm: epochs + 1 passes (the reference's range(epochs + 1)), and after pass epochs // 2 + 1
  the learning rate x0.1 with a new optimiser (momentum restarts), as evaluate_synset does;
- multistep: x gamma from each milestone epoch epochs * a // b on, optimiser state kept
  (torch's MultiStepLR; DANCE's milestones are 2E // 3 and 5E // 6);
- quarter-cosine: lr x (1 + cos(pi e / (2 epochs))) / 2 at epoch e, DD-Ranking's "cosine"
  (its LambdaLR, stepped per epoch: the rate ends at half, not at 0).
Each pass visits the n samples in its own order, in batches of cfg.batch_train.
"""
from __future__ import annotations

import math

import torch

from .protocols import passes


def _optimizer(cfg, parameters, lr):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg, epoch: int) -> float:
    """The learning rate of pass ``epoch`` (0-based)."""
    if cfg.schedule == "dm":
        return cfg.lr * (0.1 if epoch > cfg.epochs // 2 + 1 else 1.0)
    if cfg.schedule == "multistep":
        drops = sum(epoch >= cfg.epochs * a // b for a, b in cfg.milestones)
        return cfg.lr * cfg.gamma ** drops
    if cfg.schedule == "quarter-cosine":
        return cfg.lr * (1 + math.cos(math.pi * epoch / max(1, cfg.epochs) / 2)) / 2
    raise ValueError(f"unknown schedule {cfg.schedule}")


def run_schedule(cfg, parameters: list[torch.Tensor], n: int, order_for_epoch, loss_for_batch,
                 on_epoch=None) -> None:
    """order_for_epoch(ep) -> indices [..., n]; loss_for_batch(index [..., B], step) -> loss;
    on_epoch(ep, mean loss of the pass as a 0-d tensor) after each pass."""
    opt = _optimizer(cfg, parameters, lr_at(cfg, 0))
    step = 0
    for ep in range(passes(cfg.schedule, cfg.epochs)):
        lr = lr_at(cfg, ep)
        if cfg.schedule == "dm" and ep == cfg.epochs // 2 + 2:
            opt = _optimizer(cfg, parameters, lr)  # the reference re-creates it
        for group in opt.param_groups:
            group["lr"] = lr
        order = order_for_epoch(ep)
        total, batches = None, 0
        for i in range(0, n, cfg.batch_train):
            loss = loss_for_batch(order[..., i:i + cfg.batch_train], step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total = loss.detach() if total is None else total + loss.detach()
            batches += 1
        if on_epoch is not None:
            on_epoch(ep, total / max(1, batches))
