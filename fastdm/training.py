"""The evaluation protocol's optimisation schedule, shared by one-model and many-model training.

epochs + 1 passes (as the reference's range(epochs + 1)) over n samples in batches of
batch_train, each pass in its own order; SGD with momentum and weight decay, restarted with
the learning rate x0.1 after pass epochs // 2 + 1 (a new optimiser: momentum restarts).
"""
from __future__ import annotations

import torch


def run_schedule(cfg, parameters: list[torch.Tensor], n: int, order_for_epoch, loss_for_batch,
                 on_epoch=None) -> None:
    """order_for_epoch(ep) -> indices [..., n]; loss_for_batch(index [..., B], step) -> loss."""
    def optimizer(lr):
        return torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    lr = cfg.lr
    opt = optimizer(lr)
    step = 0
    for ep in range(cfg.epochs + 1):
        order = order_for_epoch(ep)
        for i in range(0, n, cfg.batch_train):
            loss = loss_for_batch(order[..., i:i + cfg.batch_train], step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if ep == cfg.epochs // 2 + 1:
            lr *= 0.1
            opt = optimizer(lr)
        if on_epoch is not None:
            on_epoch()
