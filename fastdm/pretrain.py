"""``fastdm pretrain``: a bank of networks trained on the real data, for ``--embedders bank:PATH``.

The recipe is DANCE's ``pretrain.py`` (NCFM's ``pretrain_script.py`` differs only in the batch
size, 128): per member, SGD lr 0.01, momentum 0.9, weight decay 5e-4, the learning rate x0.2 at
2/3 and 5/6 of the epochs ([40, 50] of 60), batches of 64, per-image DSA ``color_crop`` on the
normalised images, and CutMix with probability 0.5 (Beta(1, 1) area, a random partner in the
batch, the loss mixed by area). Each member's initial and final weights are kept.

Every draw is a function of (seed, member, ...), so a member trains the same alone or with
others. Members train in groups (``together``: one vmapped step for the group; auto: together
on CUDA, one at a time on the CPU, where grouped convolutions measured slower). After every
epoch the group's state goes to OUT/pretrain-state.pt, so an interrupted run continues where it
stopped. The result is OUT/bank.pt (stacked weights) and OUT/bank.json (settings, accuracies).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import rng
from .augment import DSAParams, parse_strategy, sample_per_sample
from .augment.cutmix import cutmix_
from .backend import backend_for
from .board import open_board
from .data import load_dataset
from .devices import resolve_device
from .embedders.bank import BANK_FORMAT, bank_file
from .embedders.stacked import single_forward, stacked_forward
from .errors import FastDMError
from .evaluation import accuracy
from .io import atomic_json_dump, atomic_torch_save
from .models import build_model, check_model_name, create_model
from .ops.dsa import dsa_augment

log = logging.getLogger("fastdm")
STATE = "pretrain-state.pt"


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    model: str | None = None        # None: the dataset's default embedder
    models: int = 20
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.2
    strategy: str = "color_crop"
    cutmix: float = 0.5             # probability of CutMix per batch
    images_per_class: int | None = None  # train on this many real images per class (a quick bank)
    seed: int = 0
    device: str = "auto"
    together: bool | None = None    # None: on CUDA yes, on the CPU no

    def check(self) -> None:
        for name in ("models", "epochs", "batch_size", "images_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FastDMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "gamma"):
            if not getattr(self, name) > 0:
                raise FastDMError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.cutmix <= 1:
            raise FastDMError(f"--cutmix must be a probability in [0, 1], got {self.cutmix}")
        parse_strategy(self.strategy)

    @property
    def milestones(self) -> tuple[int, int]:
        """DANCE's MultiStepLR milestones: [2E // 3, 5E // 6] ([40, 50] at 60 epochs)."""
        return 2 * self.epochs // 3, 5 * self.epochs // 6


def _new_group(cfg, data, members, device) -> dict:
    nets = [build_model(cfg.model, data.channels, data.num_classes, data.image_size, cfg.seed,
                        rng.PRETRAIN_INIT, k, device=device).train() for k in members]
    params = {k: torch.stack([dict(n.named_parameters())[k].detach() for n in nets])
              for k, _ in nets[0].named_parameters()}
    buffers = {k: torch.stack([dict(n.named_buffers())[k] for n in nets])
               for k, _ in nets[0].named_buffers()}
    return {"members": list(members), "epoch": 0, "init": {k: v.clone() for k, v in params.items()},
            "params": params, "buffers": buffers, "optimizer": None}


def state_record(cfg: PretrainConfig) -> dict:
    """The settings an unfinished bank's state must match to be continued (not ``together``:
    how members are grouped changes no member's training)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "together"}


def training_rows(cfg: PretrainConfig, data) -> torch.Tensor:
    """The rows of the training set the bank trains on: all, or images_per_class of each class
    drawn from the seed."""
    train = data.train
    if cfg.images_per_class is None:
        return torch.arange(len(train))
    pos, valid = rng.sample_without_replacement(train.counts, cfg.images_per_class, cfg.seed,
                                                rng.PRETRAIN_ORDER, 1 << 40,
                                                classes=torch.arange(data.num_classes))
    return (train.offsets[:, None] + pos)[valid]


def _train_epoch(group, cfg, data, rows, device, forward, progress_step) -> None:
    members, ep = group["members"], group["epoch"]
    params = {k: v.requires_grad_(True) for k, v in group["params"].items()}
    opt = torch.optim.SGD(list(params.values()), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    if group["optimizer"] is not None:
        opt.load_state_dict(group["optimizer"])
    for g in opt.param_groups:  # the step schedule, as MultiStepLR would have set it this epoch
        g["lr"] = cfg.lr * cfg.gamma ** sum(ep >= m for m in cfg.milestones)
    train = data.train
    n, m = len(rows), len(members)
    ops = parse_strategy(cfg.strategy)
    p = DSAParams(aug_mode="M")  # every listed op on each image (DANCE's per-image DiffAug)
    dsa_backend = backend_for("dsa", device)
    order = rows[torch.stack([rng.permutation(n, cfg.seed, rng.PRETRAIN_ORDER, k, ep) for k in members])]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = None
    for i in range(steps_per_epoch):
        step = ep * steps_per_epoch + i
        idx = order[:, i * cfg.batch_size:(i + 1) * cfg.batch_size]
        b = idx.shape[1]
        x = data.normalize(train.images[idx.reshape(-1).to(train.images.device)], device)
        y = train.labels[idx.reshape(-1)].to(device).view(m, b)
        if ops:
            x = x.view(m, b, *x.shape[1:])
            x = torch.cat([dsa_augment(x[j], sample_per_sample(ops, p, data.image_size, b, cfg.seed,
                                                                rng.PRETRAIN_AUG, k, step, device=device),
                                       backend=dsa_backend) for j, k in enumerate(members)])
        x = x.view(m, b, *x.shape[1:])
        mixes = [cutmix_(x[j], cfg.cutmix, cfg.seed, rng.PRETRAIN_MIX, k, step)
                 for j, k in enumerate(members)]
        logits = forward(params, group["buffers"], x).float()
        loss = 0.0
        for j, mix in enumerate(mixes):
            if mix is None:
                loss = loss + F.cross_entropy(logits[j], y[j])
            else:
                partner, lam = mix
                loss = loss + lam * F.cross_entropy(logits[j], y[j]) + \
                    (1 - lam) * F.cross_entropy(logits[j], y[j][partner])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress_step()
        total = loss.detach() if total is None else total + loss.detach()
    group["params"] = {k: v.detach() for k, v in params.items()}
    group["optimizer"] = opt.state_dict()
    group["epoch"] = ep + 1
    return float(total) / (steps_per_epoch * m)  # the members' mean training loss this epoch


def pretrain(cfg: PretrainConfig, out: str, progress: bool = True, overwrite: bool = False,
             data=None, tensorboard: str | None = None) -> dict:
    """Train the bank into ``out`` (continuing an interrupted run there); returns bank.json's
    dict. ``data``: an already loaded fastdm Dataset (default: load ``cfg.dataset``).
    ``tensorboard``: a folder for each group's training loss per epoch and each member's test
    accuracy."""
    from tqdm.auto import tqdm

    cfg.check()
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size,
                            progress=progress)
    cfg = dataclasses.replace(cfg, model=check_model_name(cfg.model or data.default_model))
    device = resolve_device(cfg.device)
    together = cfg.together if cfg.together is not None else device.type == "cuda"
    if os.path.exists(out) and not os.path.isdir(out):
        raise FastDMError(f"--out {out} is a file, not a folder")
    if os.path.isfile(bank_file(out)) and not overwrite:
        raise FastDMError(f"{out} already holds a bank; pass --overwrite to train a new one, or "
                          f"another --out")
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, STATE)
    record = state_record(cfg)
    state = {"config": record, "done": [], "group": None, "seconds": 0.0}
    if os.path.isfile(state_path) and not overwrite:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved["config"] != record:
            diff = [f"{k}: {saved['config'].get(k)!r} -> {v!r}" for k, v in record.items()
                    if saved["config"].get(k) != v]
            raise FastDMError(f"{out} holds an unfinished bank with other settings "
                              f"({'; '.join(diff)}); use them, --overwrite, or another --out")
        state = saved
        log.info("continuing the bank in %s: %d of %d members done", out, len(state["done"]), cfg.models)
    with torch.device("meta"):
        net = create_model(cfg.model, data.channels, data.num_classes, data.image_size)
    rows = training_rows(cfg, data)
    steps = math.ceil(len(rows) / cfg.batch_size)
    size = cfg.models if together else 1
    groups = [list(range(s, min(cfg.models, s + size))) for s in range(0, cfg.models, size)]
    done_members = {m["member"] for m in state["done"]}
    done_steps = len(done_members) * cfg.epochs * steps
    if state["group"] is not None:
        done_steps += len(state["group"]["members"]) * state["group"]["epoch"] * steps
    bar = tqdm(total=cfg.models * cfg.epochs * steps, initial=done_steps, unit="step",
               desc=f"pretrain {cfg.model} x{cfg.models} on {data.name}", disable=not progress or None,
               dynamic_ncols=True)
    board = open_board(tensorboard)
    for members in groups:
        if set(members) <= done_members:
            continue
        group = state["group"]
        if group is None or group["members"] != members:
            group = _new_group(cfg, data, members, device)
        else:
            group = _to(group, device)
        forward = (stacked_forward if len(members) > 1 else single_forward)(net)
        while group["epoch"] < cfg.epochs:
            t0 = time.perf_counter()
            loss = _train_epoch(group, cfg, data, rows, device, forward, lambda: bar.update(len(members)))
            if board is not None:
                tag = f"member{members[0]}" if len(members) == 1 else f"members{members[0]}-{members[-1]}"
                board.scalar(f"pretrain/{tag}/train_loss", loss, group["epoch"])
            state["seconds"] += time.perf_counter() - t0
            state["group"] = group
            atomic_torch_save(_to(state, "cpu"), state_path)
        for j, k in enumerate(members):
            trained = build_model(cfg.model, data.channels, data.num_classes, data.image_size, 0,
                                  device=device)
            with torch.no_grad():
                for name, t in trained.named_parameters():
                    t.copy_(group["params"][name][j])
                for name, t in trained.named_buffers():
                    t.copy_(group["buffers"][name][j])
            acc = accuracy(trained, data, device)
            state["done"].append({"member": k, "accuracy": acc,
                                  "init": {n: v[j].cpu() for n, v in group["init"].items()},
                                  "final": {n: v[j].detach().cpu() for n, v in group["params"].items()},
                                  "final_buffers": {n: v[j].cpu() for n, v in group["buffers"].items()}})
            log.info("bank member %d: test accuracy %.2f %%", k, 100 * acc)
            if board is not None:
                board.scalar("pretrain/test_accuracy", 100 * acc, k)
        state["group"] = None
        done_members |= set(members)
        atomic_torch_save(_to(state, "cpu"), state_path)
    bar.close()
    if board is not None:
        board.close()
    done = sorted(state["done"], key=lambda m: m["member"])
    stack = lambda key: {n: torch.stack([m[key][n] for m in done]) for n in done[0][key]}  # noqa: E731
    atomic_torch_save({"format": BANK_FORMAT, "version": 1, "model": cfg.model,
                       "channels": data.channels, "num_classes": data.num_classes,
                       "image_size": list(data.image_size), "dataset": data.name,
                       "members": len(done), "init": stack("init"), "final": stack("final"),
                       "final_buffers": stack("final_buffers")}, bank_file(out))
    accs = [m["accuracy"] for m in done]
    info = {"format": BANK_FORMAT, "config": record, "dataset": data.name, "model": cfg.model,
            "members": len(done), "accuracies": accs,
            "accuracy_mean": sum(accs) / len(accs), "train_seconds": round(state["seconds"], 3),
            "together": together, "device": str(device), "torch": torch.__version__}
    atomic_json_dump(info, os.path.join(out, "bank.json"))
    os.remove(state_path)
    return info


def _to(obj, device):
    """``obj`` with every tensor moved to ``device`` (the optimiser's state included)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj
