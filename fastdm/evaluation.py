"""Training and testing models on a set: the evaluation protocols (fastdm.protocols), and the
random-real-subset baseline.

The default protocol is the paper's (spec section 5): train a freshly initialised model on
the (small) training set only: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
cross-entropy, DSA on every batch without a seed (one op per batch, per-sample parameters, as
the reference's mode S). As in the reference's evaluate_synset, ``epochs`` means epochs + 1
passes (range(epochs + 1)) and after pass epochs // 2 + 1 the learning rate drops x0.1 with a
new optimiser (momentum restarts). Then accuracy on the whole test split, no augmentation.
Other protocols change the optimiser, schedule, augmentation, CutMix and labels (soft: a
teacher's logits on each augmented batch). Every random draw (weights, order, augmentation,
CutMix, subsets) comes from fastdm.rng words, so evaluation is reproducible.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import host_memory, rng
from .augment import DSAParams, parse_strategy, sample_per_sample
from .augment.cutmix import cutmix_
from .backend import backend_for
from .ops.dsa import dsa_augment
from .data import Dataset
from .errors import FastDMError
from .models import build_model, check_model_name, create_model
from .models.compiled import SharedCompiled, resolve_compile
from .models.fast_embed import native_forward, first_block_layers, winograd_embed, winograd_layers
from .precision import PRECISIONS, autocast, resolve_precision, warn_if_slow
from .protocols import get_protocol, passes
from .train_batched import can_batch, train_models_batched
from .training import run_schedule

log = logging.getLogger("fastdm")


@dataclass
class EvalConfig:
    """One evaluation's settings. The defaults are the ``dm`` protocol's; ``for_protocol``
    starts from another protocol's."""
    model: str | None = None          # default: the dataset's (or the synset's) model
    models: int = 5                   # models trained, each from its own initialisation
    epochs: int = 1000
    batch_train: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    strategy: str | None = None       # default: the dataset's DM strategy
    aug_mode: str = "S"
    seed: int = 0
    test_batch: int = 1024
    # train the models together (vmap) or one at a time; None: together on CUDA, one at a time
    # on the CPU, where together measured 2x slower (benchmarks/RESULTS.md)
    batched: bool | None = None
    # torch.compile the training forward/backward: auto (CUDA; on the CPU from 28 px when the
    # evaluation trains on enough images to repay the compile: compiled.wants_compile), on, off
    compile: str = "auto"
    # the training forward's arithmetic (fastdm.precision): auto = bf16 autocast on CUDA GPUs
    # that compute it natively, fp32 (the reference's) elsewhere; testing always runs in fp32
    precision: str = "auto"
    # the native CPU convolutions (fastdm.evaluation.test_conv): auto = on the CPU for ConvNets,
    # as condensation's: the 3x3 layers by Winograd (training step and test pass), a first
    # block of 1-4 input channels by its native kernel (both); direct elsewhere
    conv: str = "auto"
    # the protocol's recipe (fastdm.protocols.Protocol's fields)
    protocol: str = "dm"
    optimizer: str = "sgd"
    schedule: str = "dm"
    milestones: tuple = ()
    gamma: float = 0.1
    cutmix: float = 0.0
    labels: str = "hard"
    temperature: float = 1.0
    validate_every: int = 0

    @classmethod
    def for_protocol(cls, name: str | None, **given) -> "EvalConfig":
        """The protocol's recipe, with the ``given`` (non-None) settings over it."""
        p = get_protocol(name)
        recipe = dict(protocol=p.name, epochs=p.epochs, batch_train=p.batch, lr=p.lr,
                      momentum=p.momentum, weight_decay=p.weight_decay, optimizer=p.optimizer,
                      schedule=p.schedule, milestones=p.milestones, gamma=p.gamma,
                      cutmix=p.cutmix, labels=p.labels, temperature=p.temperature,
                      validate_every=p.validate_every)
        if p.strategy is not None:
            recipe["strategy"] = p.strategy
        if p.aug_mode is not None:
            recipe["aug_mode"] = p.aug_mode
        return cls(**{**recipe, **{k: v for k, v in given.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if not isinstance(self.models, int) or self.models < 1:
            raise FastDMError(f"--models must be an integer >= 1, got {self.models}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise FastDMError(f"--epochs must be an integer >= 0, got {self.epochs}")
        if self.batch_train < 1:
            raise FastDMError(f"--batch-train must be >= 1, got {self.batch_train}")
        if self.seed < 0:
            raise FastDMError(f"--seed must be >= 0, got {self.seed}")
        if not self.lr > 0:
            raise FastDMError(f"the learning rate must be positive, got {self.lr}")
        if self.compile not in ("auto", "on", "off"):
            raise FastDMError(f"--compile must be auto, on or off, got '{self.compile}'")
        if self.conv not in ("auto", "winograd", "direct"):
            raise FastDMError(f"--conv must be one of auto, winograd, direct, got '{self.conv}'")
        if self.precision not in PRECISIONS:
            raise FastDMError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.optimizer not in ("sgd", "adamw") or self.schedule not in ("dm", "multistep", "quarter-cosine"):
            raise FastDMError(f"unknown optimiser/schedule {self.optimizer}/{self.schedule}")
        if self.labels not in ("hard", "soft"):
            raise FastDMError(f"labels must be hard or soft, got '{self.labels}'")
        if not 0 <= self.cutmix <= 1:
            raise FastDMError(f"the CutMix probability must be in [0, 1], got {self.cutmix}")
        if not self.temperature > 0:
            raise FastDMError(f"the soft labels' temperature must be positive, got {self.temperature}")
        parse_strategy(self.strategy)
        check_model_name(self.model)


def test_conv(mode: str, model: str, data: Dataset, device) -> str:
    """Evaluation's convolutions: 'winograd' (the native CPU kernels, as condensation's: the
    training step's and the test pass's Winograd layers and first block)
    or 'direct', by fastdm.backend.conv_for's rule."""
    from .backend import conv_for
    with torch.device("meta"):
        net = create_model(model, data.channels, data.num_classes, data.image_size)
    layers = winograd_layers(net, data.image_size) + first_block_layers(net)
    return conv_for(mode, torch.device(device), "fp32",
                    None if layers else f"{model} has no layers for the native kernels")


def train_forward(net: torch.nn.Module, image_size, conv: str, precision: str = "fp32"):
    """The training step's forward: with the native kernels (conv 'winograd') in fp32, the
    3x3 layers by Winograd with gradients and the first block natively; else the
    module."""
    native = conv == "winograd" and precision == "fp32"
    layers = winograd_layers(net, image_size) if native else ()
    first = first_block_layers(net) if native else ()
    return native_forward(net, layers, first) if layers or first else net


@torch.no_grad()
def accuracy(net: torch.nn.Module, data: Dataset, device, batch: int = 1024,
             conv: str = "direct") -> float:
    net.eval()
    correct = 0
    test = data.test
    embed = winograd_embed(net, winograd_layers(net, data.image_size), first_block_layers(net)) \
        if conv == "winograd" else None

    def forward(x):  # the test pass is inference only: it may take the forward-only kernels
        return net(x) if embed is None else net.classifier(embed(x))
    for i in range(0, len(test), batch):
        x = data.normalize(test.images[i:i + batch], device)
        pred = forward(x).argmax(1)
        correct += int((pred == test.labels[i:i + batch].to(device)).sum())
    return correct / max(1, len(test))


def train_model(images: torch.Tensor, labels: torch.Tensor, data: Dataset, cfg: EvalConfig, k: int,
                device, on_epoch=None, compiled: SharedCompiled | None = None,
                precision: str = "fp32", teacher: torch.nn.Module | None = None,
                curve: dict | None = None, conv: str = "direct") -> torch.nn.Module:
    """Train model ``k`` (its own weights, order, augmentation and CutMix words) on
    images/labels by cfg's protocol; with ``compiled``, inside that compiled copy of the
    architecture (the same steps). Soft labels (cfg.labels == "soft") need ``teacher``: its
    logits on each augmented batch are the targets. ``curve``, if given, receives the
    training loss per epoch ("loss") and the test accuracy at validation points ("acc");
    ``conv``: the test passes' convolutions (test_conv)."""
    ops = parse_strategy(cfg.strategy)
    dsa_backend = backend_for("dsa", device) if ops else "torch"
    p = DSAParams(aug_mode=cfg.aug_mode)
    hw = tuple(images.shape[2:])
    soft = cfg.labels == "soft"
    if soft and teacher is None:
        raise FastDMError(f"the {cfg.protocol} protocol trains on a teacher's soft labels: pass "
                          f"--teacher PATH (a bank from fastdm pretrain) or let fastdm train one")
    net = build_model(cfg.model, images.shape[1], data.num_classes, hw, cfg.seed, rng.EVAL_INIT, k,
                      device=device)
    net.train()
    trained, forward = net, train_forward(net, hw, conv, precision)
    if compiled is not None:
        compiled.load(net)
        trained, forward = compiled.net, compiled.fn
    images, labels = images.to(device), labels.to(device)
    n = images.shape[0]
    t = cfg.temperature

    def loss_for_batch(b, step):
        x, y = images[b], labels[b]
        if ops:
            table = sample_per_sample(ops, p, hw, x.shape[0], cfg.seed, rng.EVAL_AUG, k, step,
                                      device=device)
            x = dsa_augment(x, table, backend=dsa_backend)
        mix = None
        if cfg.cutmix > 0:
            x = x.clone()
            mix = cutmix_(x, cfg.cutmix, cfg.seed, rng.EVAL_MIX, k, step)
        with autocast(precision, device):  # the loss itself in fp32 (autocast's rule for it)
            logits = forward(x).float()
        if soft:  # the teacher labels the batch the student sees (CutMix included)
            with torch.no_grad():
                target = teacher(x).float()
            return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1),
                            log_target=True, reduction="batchmean")
        if mix is None:
            return F.cross_entropy(logits, y)
        partner, kept = mix
        return kept * F.cross_entropy(logits, y) + (1 - kept) * F.cross_entropy(logits, y[partner])

    def epoch_done(ep, loss):
        if curve is not None:
            curve.setdefault("loss", []).append(float(loss))
            if cfg.validate_every and (ep + 1) % cfg.validate_every == 0:
                curve.setdefault("acc", []).append((ep + 1, accuracy(trained, data, device, cfg.test_batch, conv)))
                trained.train()
        if on_epoch is not None:
            on_epoch()

    run_schedule(cfg, list(trained.parameters()), n,
                 lambda ep: rng.permutation(n, cfg.seed, rng.EVAL_ORDER, k, ep, device=device),
                 loss_for_batch, epoch_done)
    if compiled is not None:
        compiled.store(net)
    return net


def evaluate_images(images: torch.Tensor, labels: torch.Tensor, data: Dataset, cfg: EvalConfig,
                    device, progress: bool = True, desc: str = "evaluate", subset_ipc: int | None = None,
                    teacher: torch.nn.Module | None = None, board=None,
                    board_prefix: str = "evaluate") -> dict:
    """Train cfg.models models on the given set (or, with ``subset_ipc``, each on its own random
    real subset of that many images per class) and test each. Returns accuracies in [0, 1],
    each model's curves, and with validation points the best accuracy of each model too.
    ``board``: a fastdm.board.Board receiving the curves live, under ``board_prefix``."""
    from tqdm.auto import tqdm

    cfg.check()
    memory = host_memory.apply(torch.device(device))
    accs, curves, t0 = [], [], time.perf_counter()
    n_passes = passes(cfg.schedule, cfg.epochs)
    bar = tqdm(total=cfg.models * n_passes, desc=desc, unit="epoch",
               disable=not progress or None, dynamic_ncols=True)
    wanted = cfg.batched if cfg.batched is not None else torch.device(device).type == "cuda"
    together = wanted and cfg.models > 1
    plain = cfg.labels == "hard" and cfg.cutmix == 0 and not cfg.validate_every
    if together and not plain:
        log.info("the %s protocol's models are trained one at a time (soft labels, CutMix and "
                 "validation points are not batched)", cfg.protocol)
        together = False
    if together and not can_batch(cfg.model):
        log.info("%s has BatchNorm (running statistics updated in place): its %d models are "
                 "trained one at a time", cfg.model, cfg.models)
        together = False
    trained = cfg.models * n_passes * (images.shape[0] if subset_ipc is None
                                       else subset_ipc * data.num_classes)
    compile_step = resolve_compile(cfg.compile, torch.device(device), data.image_size,
                                   "the training step", work=trained)
    precision = resolve_precision(cfg.precision, torch.device(device))
    warn_if_slow(precision, device, "the evaluation trains")
    conv = test_conv(cfg.conv, cfg.model, data, device)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    try:
        if together:
            ks = list(range(cfg.models))
            if subset_ipc is not None:
                sets = [random_subset(data, subset_ipc, cfg.seed, k) for k in ks]
                x, y = torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets])
            else:
                x, y = images[None].expand(len(ks), *images.shape), labels[None].expand(len(ks), -1)
            curves = [{"loss": []} for _ in ks]
            logged = [{} for _ in ks]

            def pass_done(losses):
                bar.update(len(ks))
                for k, v in enumerate(losses):
                    curves[k]["loss"].append(v)
                    if board is not None:
                        board.curve(board_prefix, k, curves[k], logged[k])
            nets = train_models_batched(x, y, data.num_classes, cfg, ks, device, on_epoch=pass_done,
                                        compile_backend="inductor" if compile_step else None,
                                        precision=precision)
            for k, net in enumerate(nets):
                accs.append(accuracy(net, data, device, cfg.test_batch, conv))
                curves[k]["acc"] = [(n_passes, accs[-1])]  # the final test only
                if board is not None:
                    board.curve(board_prefix, k, curves[k], logged[k])
            bar.set_postfix(acc=f"{np.mean(accs):.4f}")
        shared = None
        for k in range(cfg.models if not together else 0):
            if subset_ipc is not None:
                images, labels = random_subset(data, subset_ipc, cfg.seed, k)
            if compile_step and shared is None:
                shared = SharedCompiled(build_model(cfg.model, data.channels, data.num_classes,
                                                    data.image_size, device=device),
                                        forward=lambda m: train_forward(m, data.image_size, conv, precision))
            curve, logged = {}, {}

            def epoch_done():
                bar.update(1)
                if board is not None:  # live: TensorBoard shows the training as it goes
                    board.curve(board_prefix, k, curve, logged)
            net = train_model(images, labels, data, cfg, k, device, on_epoch=epoch_done,
                              compiled=shared, precision=precision, teacher=teacher, curve=curve,
                              conv=conv)
            accs.append(accuracy(net, data, device, cfg.test_batch, conv))
            curve.setdefault("acc", [])
            if not curve["acc"] or curve["acc"][-1][0] != len(curve.get("loss", [])):
                curve["acc"].append((len(curve.get("loss", [])), accs[-1]))
            curves.append(curve)
            if board is not None:
                board.curve(board_prefix, k, curve, logged)
            bar.set_postfix(acc=f"{np.mean(accs):.4f}")
    finally:
        bar.close()
    res = {"acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)), "accs": accs,
           "seconds": round(time.perf_counter() - t0, 3), "trained_together": together,
           "compiled": compile_step, "precision": precision, "test_conv": conv,
           "host_memory": memory,
           "protocol": cfg.protocol,
           "curves": curves}
    if cfg.validate_every:
        best = [max(a for _, a in c["acc"]) for c in curves]
        res.update(acc_best_mean=float(np.mean(best)), acc_best_std=float(np.std(best)), accs_best=best)
    return res


def random_subset(data: Dataset, ipc: int, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real training images per class (normalised), drawn for model ``k``."""
    train = data.train
    if ipc > int(train.counts.min()):
        raise FastDMError(f"--ipc {ipc} is larger than the smallest class of {data.name} "
                          f"({int(train.counts.min())} training images)")
    classes = torch.arange(data.num_classes)
    pos, _ = rng.sample_without_replacement(train.counts, ipc, seed, rng.SUBSET, k, classes=classes)
    idx = (train.offsets[:, None] + pos).reshape(-1)
    return data.normalize(train.images[idx]), classes.repeat_interleave(ipc)


def check_synset_shape(images: torch.Tensor, labels: torch.Tensor, data: Dataset, path: str) -> int:
    """Check a synthetic set fits the dataset; returns its images per class."""
    if tuple(images.shape[1:]) != (data.channels, *data.image_size):
        raise FastDMError(f"{path}: images are {tuple(images.shape[1:])} but {data.name} images are "
                          f"{(data.channels, *data.image_size)}; pass the --dataset (and --image-size) "
                          f"the synset was made from")
    if labels.numel() == 0:
        raise FastDMError(f"{path} holds no images")
    if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        raise FastDMError(f"{path}: labels outside 0..{data.num_classes - 1} for {data.name}")
    per_class = torch.bincount(labels, minlength=data.num_classes)
    return int(per_class.max())


def evaluate_synset(*args, **kwargs) -> dict:
    """The ``fastdm evaluate`` job (fastdm.evaluate_job.evaluate_synset), here for callers of
    earlier versions."""
    from .evaluate_job import evaluate_synset as job
    return job(*args, **kwargs)
