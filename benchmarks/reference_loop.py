"""BASELINE: the reference DM iteration, written here from the spec (not fastdm's engine).

It does the work the reference implementation (VICO-UoE/DatasetCondensation, main_DM.py) does
per iteration, the way it does it: a newly constructed nn.Module embedder every iteration
(default initialisation from the global RNG), a Python loop over classes, for each class a
random real batch by ``np.random.permutation`` of the class's indices into a float image tensor
held on the device, two DiffAugment calls sharing a clock-derived seed, two ``embed`` calls,
the per-class loss summed, ``loss.backward()``, an SGD step with momentum and ``loss.item()``.
Models with BatchNorm concatenate all classes and embed them in one batch, as the reference.

The DiffAugment/ParamDiffAug/get_network it calls come from ``fastdm.compat`` (same numbers as
the reference), or from the upstream code itself: ``upstream_impl(path)`` imports them from a
checkout of VICO-UoE/DatasetCondensation at run time (nothing of it is copied here).
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fastdm.errors import FastDMError


@dataclass
class Impl:
    """The three reference entry points the loop calls, and where they came from."""

    DiffAugment: Callable
    ParamDiffAug: Callable
    get_network: Callable
    source: str


def fastdm_impl() -> Impl:
    from fastdm import compat
    from fastdm.models import create_model

    def get_network(model, channel, num_classes, im_size=(32, 32)):
        # compat.get_network moves the net to CUDA when present, as the reference does; the
        # loop moves it to its own device, so build it where it is made (no detour via CUDA
        # when a GPU host benchmarks the CPU)
        return create_model(model, channel, num_classes, im_size)

    def diff_augment(x, strategy, seed=-1, param=None):
        # the torch ops, as the reference has: never the fused kernels fastdm picks on CUDA
        return compat.DiffAugment(x, strategy, seed, param, backend="torch")

    return Impl(diff_augment, compat.ParamDiffAug, get_network, "fastdm.compat (torch ops)")


def upstream_impl(path: str) -> Impl:
    """The upstream utils.py entry points, imported from a checkout at ``path``."""
    path = os.path.abspath(path)
    for name in ("utils.py", "networks.py"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FastDMError(f"--reference-repo {path} has no {name}; pass the root of a "
                              f"VICO-UoE/DatasetCondensation checkout")
    # its modules are named 'utils' and 'networks': import them from there and nowhere else,
    # then restore whatever held those names before
    saved = {m: sys.modules.pop(m) for m in ("utils", "networks") if m in sys.modules}
    sys.path.insert(0, path)
    try:
        utils = importlib.import_module("utils")
    except Exception as e:
        raise FastDMError(f"importing the upstream utils.py from {path} failed "
                          f"({type(e).__name__}: {e}); it needs numpy, scipy and torchvision") from e
    finally:
        sys.path.remove(path)
        for m in ("utils", "networks"):
            sys.modules.pop(m, None)
        sys.modules.update(saved)
    where = os.path.abspath(getattr(utils, "__file__", "") or "")
    if os.path.dirname(where) != path:
        raise FastDMError(f"a different module named 'utils' was imported ({where})")
    for name in ("DiffAugment", "ParamDiffAug", "get_network"):
        if not hasattr(utils, name):
            raise FastDMError(f"{path}/utils.py has no {name}; is it a DatasetCondensation checkout?")
    return Impl(utils.DiffAugment, utils.ParamDiffAug, utils.get_network, f"upstream:{path}")


class ReferenceLoop:
    """One reference DM run in memory: ``step()`` is one iteration.

    ``images``: normalised float32 [N, C, H, W] (moved to ``device``, as the reference holds
    the whole training set there); ``labels``: int [N].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int,
                 batch_real: int, model: str, strategy: str, device="cpu", lr_img: float = 1.0,
                 impl: Impl | None = None):
        self.device = torch.device(device)
        self.impl = impl or fastdm_impl()
        self.images_all = images.to(self.device, torch.float32)
        labels = labels.tolist()
        self.indices_class = [[] for _ in range(num_classes)]
        for i, lab in enumerate(labels):  # Python lists of indices, as the reference
            self.indices_class[lab].append(i)
        self.num_classes, self.ipc, self.batch_real = num_classes, ipc, batch_real
        self.channel = images.shape[1]
        self.im_size = tuple(images.shape[2:])
        self.model, self.strategy = model, strategy
        self.param = self.impl.ParamDiffAug()
        # init 'real': ipc random real images per class
        self.image_syn = torch.cat([self.get_images(c, ipc) for c in range(num_classes)]).detach()
        self.image_syn.requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.image_syn], lr=lr_img, momentum=0.5)
        self.optimizer.zero_grad()
        self.loss_avg = 0.0

    # The three hooks below are what the harness tests replace to feed fixed draws.
    def get_images(self, c: int, n: int) -> torch.Tensor:
        idx_shuffle = np.random.permutation(self.indices_class[c])[:n]
        return self.images_all[idx_shuffle]

    def new_network(self) -> torch.nn.Module:
        net = self.impl.get_network(self.model, self.channel, self.num_classes, self.im_size)
        net = net.to(self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        return net

    def seed(self, c: int) -> int:
        # The reference uses int(time.time() * 1000) % 100000, so classes handled within the
        # same millisecond share a seed (and an op): which ops a timed iteration runs would
        # depend on the clock. A fresh uniform seed per class keeps one seed per class, shared
        # by its real and synthetic calls, with the op mix the strategy intends.
        return int(np.random.randint(0, 100000))

    def augment(self, x: torch.Tensor, seed: int, c: int) -> torch.Tensor:
        return self.impl.DiffAugment(x, self.strategy, seed=seed, param=self.param)

    # -- the iteration --------------------------------------------------------------------------
    def loss(self, net: torch.nn.Module) -> torch.Tensor:
        embed = net.module.embed if hasattr(net, "module") else net.embed  # DataParallel (upstream)
        loss = torch.tensor(0.0).to(self.device)
        if "BN" not in self.model:
            for c in range(self.num_classes):
                img_real = self.get_images(c, self.batch_real)
                img_syn = self.image_syn[c * self.ipc:(c + 1) * self.ipc]
                seed = self.seed(c)
                img_real = self.augment(img_real, seed, c)
                img_syn = self.augment(img_syn, seed, c)
                output_real = embed(img_real).detach()
                output_syn = embed(img_syn)
                loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
            return loss
        real_all, syn_all = [], []
        for c in range(self.num_classes):
            img_real = self.get_images(c, self.batch_real)
            img_syn = self.image_syn[c * self.ipc:(c + 1) * self.ipc]
            seed = self.seed(c)
            real_all.append(self.augment(img_real, seed, c))
            syn_all.append(self.augment(img_syn, seed, c))
        output_real = embed(torch.cat(real_all)).detach()
        output_syn = embed(torch.cat(syn_all))
        d = output_real.shape[1]
        loss += torch.sum((output_real.reshape(self.num_classes, -1, d).mean(1)
                           - output_syn.reshape(self.num_classes, self.ipc, d).mean(1)) ** 2)
        return loss

    def step(self) -> float:
        net = self.new_network()
        loss = self.loss(net)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        value = loss.item()
        self.loss_avg += value
        return value
