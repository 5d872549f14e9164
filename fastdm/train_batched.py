"""The evaluation protocol's models trained together: one vmapped forward/backward and one SGD
step per batch for all of them, instead of one model after another.

Model k keeps everything it would have alone: its initial weights (rng words (seed, EVAL_INIT,
k)), its batch order (EVAL_ORDER, k, epoch) and its augmentation draws (EVAL_AUG, k, step).
The models' parameters are stacked ([M, ...]); torch.func.vmap runs the forward (convolutions
become one grouped convolution), the loss is the sum of each model's mean cross-entropy (so
each model gets its own gradient), and torch.optim.SGD on the stacked tensors is elementwise,
i.e. each model's own SGD with momentum and weight decay. The DSA of all models' batches is one
fused call (one table row per sample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import rng
from .augment import DSAParams, DSATable, parse_strategy, sample_per_sample
from .backend import backend_for
from .embedders.stacked import stacked_forward
from .models import build_model, uses_batchnorm
from .ops.dsa import dsa_augment
from .precision import autocast
from .training import run_schedule


def can_batch(model: str) -> bool:
    """BatchNorm's running statistics are updated in place, which vmap cannot batch."""
    return not uses_batchnorm(model)


def train_models_batched(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg,
                         ks: list[int], device, on_epoch=None,
                         compile_backend: str | None = None, precision: str = "fp32") -> list[torch.nn.Module]:
    """Train models ``ks`` together. images: [M, n, C, H, W] (model k's training set at
    position k; a shared set may be an expanded view), labels [M, n]. Returns the M trained
    models (as train_model would, one by one). ``compile_backend``: torch.compile the
    vmapped forward (and its backward) with that backend. ``on_epoch(losses)`` after each
    pass: each model's mean training loss over it."""
    m, n = images.shape[:2]
    hw = tuple(images.shape[3:])
    ops = parse_strategy(cfg.strategy)
    dsa_backend = backend_for("dsa", device) if ops else "torch"
    p = DSAParams(aug_mode=cfg.aug_mode)
    nets = [build_model(cfg.model, images.shape[2], num_classes, hw, cfg.seed, rng.EVAL_INIT, k,
                        device=device).train() for k in ks]
    params, buffers = torch.func.stack_module_state(nets)
    batched = stacked_forward(nets[0])
    if compile_backend is not None:
        # static shapes: with dynamic ones (dynamo's choice from the second size on) vmapped
        # group_norm fails to trace (symbolic sizes of batched tensors; torch 2.14)
        from .models.compiled import compile_fn  # room for many evaluations' shapes
        batched = compile_fn(batched, backend=compile_backend, dynamic=False)
    images, labels = images.to(device), labels.to(device)
    models = torch.arange(m, device=device)[:, None]

    def order_for_epoch(ep):  # [M, n]: each model's own order
        return torch.stack([rng.permutation(n, cfg.seed, rng.EVAL_ORDER, k, ep, device=device)
                            for k in ks])

    seen = []  # this pass's per-model mean losses, one [M] tensor per batch

    def loss_for_batch(b, step):
        x = images[models, b]                           # [M, B, C, H, W]
        if ops:
            table = DSATable.cat([sample_per_sample(ops, p, hw, b.shape[1], cfg.seed, rng.EVAL_AUG,
                                                    k, step, device=device) for k in ks])
            x = dsa_augment(x.flatten(0, 1), table, backend=dsa_backend).view(x.shape)
        with autocast(precision, device):
            logits = batched(params, buffers, x)        # [M, B, classes]
        ce = F.cross_entropy(logits.float().flatten(0, 1), labels[models, b].flatten(), reduction="none")
        per_model = ce.view(b.shape).mean(1)
        seen.append(per_model.detach())
        return per_model.sum()                          # each model's own mean loss

    def pass_done(ep, _loss):
        if on_epoch is not None:  # each model's mean loss over the pass's batches
            on_epoch(torch.stack(seen).mean(0).tolist())
        seen.clear()

    run_schedule(cfg, list(params.values()), n, order_for_epoch, loss_for_batch, pass_done)
    with torch.no_grad():  # the trained weights back into ordinary modules
        for j, net in enumerate(nets):
            for name, t in net.named_parameters():
                t.copy_(params[name][j])
            for name, t in net.named_buffers():
                t.copy_(buffers[name][j])
    return nets
