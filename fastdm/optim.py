"""The synthetic images' optimisers, as the methods' code steps them (one step per iteration, or
one per class with --step class).

* ``sgd``: torch.optim.SGD with momentum (no dampening, no weight decay). The state is the
  momentum buffer.
* ``adamw``: torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, bias-corrected, decoupled decay).
  The state is [exp_avg, exp_avg_sq] stacked on dim 1 (rows stay the images' rows, so
  checkpoints shard as the images do); the step count follows from the iteration (and, with
  --step class or calibration, the update within it).

``image_space``: fastdm stores normalised images x = (u - mean) / std. ``normalized`` steps x
(DM's reference, IDM); ``pixels`` steps the pixel values u in [0, 1] as DANCE's and NCFM's code
keep their images: the gradient maps to u (g / std), u steps and maps back. ``clamp`` then keeps
u in [0, 1].
"""
from __future__ import annotations

import torch

from .checkpoint import RunState

BETAS, EPS = (0.9, 0.999), 1e-8


class ImageOptimizer:
    def __init__(self, cfg, mean, std, device):
        self.cfg = cfg
        self.lr = cfg.lr_img  # --lr-plateau lowers it (Plateau)
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(shape)

    def step(self, state: RunState, grad: torch.Tensor, t: int) -> None:
        """Update ``state.images`` (and its optimiser state) in place with ``grad``; ``t``: the
        number of this step, from 1 (AdamW's bias correction)."""
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            self._adamw(state, grad, t)
        elif cfg.image_space == "pixels":
            self._sgd_pixels(state, grad)
        elif state.momentum is None:
            state.momentum = grad  # a fresh tensor each iteration: no copy needed
            state.images.add_(state.momentum, alpha=-self.lr)
        else:
            state.momentum.mul_(cfg.momentum).add_(grad)
            state.images.add_(state.momentum, alpha=-self.lr)
        if cfg.clamp:
            lo, hi = -self.mean / self.std, (1 - self.mean) / self.std
            torch.maximum(state.images, lo, out=state.images)
            torch.minimum(state.images, hi, out=state.images)

    def _sgd_pixels(self, state: RunState, grad: torch.Tensor) -> None:
        cfg, x = self.cfg, state.images
        g = grad / self.std
        if state.momentum is None:  # torch's first step: the buffer is the gradient
            state.momentum = g
        else:
            state.momentum.mul_(cfg.momentum).add_(g)
        u = x * self.std + self.mean
        u.add_(state.momentum, alpha=-self.lr)
        x.copy_((u - self.mean) / self.std)

    def _adamw(self, state: RunState, grad: torch.Tensor, t: int) -> None:
        cfg, x = self.cfg, state.images
        if state.momentum is None:
            state.momentum = torch.zeros((x.shape[0], 2, *x.shape[1:]), dtype=torch.float32,
                                         device=x.device)
        m, v = state.momentum[:, 0], state.momentum[:, 1]
        pixels = cfg.image_space == "pixels"
        g = grad / self.std if pixels else grad
        u = x * self.std + self.mean if pixels else x.clone()
        u.mul_(1 - self.lr * cfg.weight_decay)
        m.lerp_(g, 1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        step = self.lr / (1 - BETAS[0] ** t)
        denom = (v.sqrt() / (1 - BETAS[1] ** t) ** 0.5).add_(EPS)
        u.addcdiv_(m, denom, value=-step)
        x.copy_((u - self.mean) / self.std if pixels else u)


class Plateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau as NCFM configures it (mode min, factor 0.5,
    relative threshold 1e-4, no cooldown), stepped once per iteration on its loss; its state
    goes into checkpoints (``state_dict``)."""

    FACTOR, THRESHOLD, EPS = 0.5, 1e-4, 1e-8

    def __init__(self, optimizer: ImageOptimizer, patience: int):
        self.optimizer, self.patience = optimizer, patience
        self.best, self.bad = float("inf"), 0

    def step(self, loss: float) -> None:
        if loss < self.best * (1 - self.THRESHOLD):
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            new = self.optimizer.lr * self.FACTOR
            if self.optimizer.lr - new > self.EPS:
                self.optimizer.lr = new
            self.bad = 0

    def state_dict(self) -> dict:
        return {"lr": self.optimizer.lr, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.optimizer.lr, self.best, self.bad = state["lr"], state["best"], state["bad"]
