"""The paper's evaluation protocol (spec section 5), and the random-real-subset baseline.

Train a freshly initialised model on the (small) training set only: SGD lr 0.01, momentum
0.9, weight decay 5e-4, batch 256, cross-entropy, DSA on every batch without a seed (one op
per batch, per-sample parameters, as the reference's mode S). As in the reference's
evaluate_synset, ``epochs`` means epochs + 1 passes (range(epochs + 1)) and after pass
epochs // 2 + 1 the learning rate drops x0.1 with a new optimiser (momentum restarts).
Then accuracy on the whole test split, no augmentation. Every random draw (weights, order,
augmentation, subsets) comes from fastdm.rng words, so evaluation is reproducible.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import rng
from .augment import DSAParams, parse_strategy, sample_per_sample
from .backend import backend_for
from .ops.dsa import dsa_augment
from .config import QUICK_EVAL
from .data import Dataset, load_dataset
from .devices import resolve_device
from .io import load_synset
from .errors import FastDMError
from .models import build_model, check_model_name
from .models.compiled import SharedCompiled, resolve_compile
from .precision import PRECISIONS, autocast, resolve_precision, warn_if_slow
from .train_batched import can_batch, train_models_batched
from .training import run_schedule

log = logging.getLogger("fastdm")


@dataclass
class EvalConfig:
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
    # torch.compile the training forward/backward: auto (CUDA, or >= 32 px on the CPU), on, off
    compile: str = "auto"
    # the training forward's arithmetic (fastdm.precision): auto = bf16 autocast on CUDA GPUs
    # that compute it natively, fp32 (the reference's) elsewhere; testing always runs in fp32
    precision: str = "auto"

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
        if self.compile not in ("auto", "on", "off"):
            raise FastDMError(f"--compile must be auto, on or off, got '{self.compile}'")
        if self.precision not in PRECISIONS:
            raise FastDMError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        parse_strategy(self.strategy)
        check_model_name(self.model)


@torch.no_grad()
def accuracy(net: torch.nn.Module, data: Dataset, device, batch: int = 1024) -> float:
    net.eval()
    correct = 0
    test = data.test
    for i in range(0, len(test), batch):
        x = data.normalize(test.images[i:i + batch], device)
        pred = net(x).argmax(1)
        correct += int((pred == test.labels[i:i + batch].to(device)).sum())
    return correct / max(1, len(test))


def train_model(images: torch.Tensor, labels: torch.Tensor, data: Dataset, cfg: EvalConfig, k: int,
                device, on_epoch=None, compiled: SharedCompiled | None = None,
                precision: str = "fp32") -> torch.nn.Module:
    """Train model ``k`` (its own weights, order and augmentation words) on images/labels;
    with ``compiled``, inside that compiled copy of the architecture (the same steps)."""
    ops = parse_strategy(cfg.strategy)
    dsa_backend = backend_for("dsa", device) if ops else "torch"
    p = DSAParams(aug_mode=cfg.aug_mode)
    hw = tuple(images.shape[2:])
    net = build_model(cfg.model, images.shape[1], data.num_classes, hw, cfg.seed, rng.EVAL_INIT, k,
                      device=device)
    net.train()
    trained, forward = net, net
    if compiled is not None:
        compiled.load(net)
        trained, forward = compiled.net, compiled.fn
    images, labels = images.to(device), labels.to(device)
    n = images.shape[0]

    def loss_for_batch(b, step):
        x = images[b]
        if ops:
            table = sample_per_sample(ops, p, hw, x.shape[0], cfg.seed, rng.EVAL_AUG, k, step,
                                      device=device)
            x = dsa_augment(x, table, backend=dsa_backend)
        with autocast(precision, device):  # the loss itself in fp32 (autocast's rule for it)
            logits = forward(x)
        return F.cross_entropy(logits.float(), labels[b])

    run_schedule(cfg, list(trained.parameters()), n,
                 lambda ep: rng.permutation(n, cfg.seed, rng.EVAL_ORDER, k, ep, device=device),
                 loss_for_batch, on_epoch)
    if compiled is not None:
        compiled.store(net)
    return net


def evaluate_images(images: torch.Tensor, labels: torch.Tensor, data: Dataset, cfg: EvalConfig,
                    device, progress: bool = True, desc: str = "evaluate", subset_ipc: int | None = None
                    ) -> dict:
    """Train cfg.models models on the given set (or, with ``subset_ipc``, each on its own random
    real subset of that many images per class) and test each. Returns accuracies in [0, 1]."""
    from tqdm import tqdm

    cfg.check()
    accs, t0 = [], time.perf_counter()
    bar = tqdm(total=cfg.models * (cfg.epochs + 1), desc=desc, unit="epoch",
               disable=not progress or None, dynamic_ncols=True)
    wanted = cfg.batched if cfg.batched is not None else torch.device(device).type == "cuda"
    together = wanted and cfg.models > 1
    if together and not can_batch(cfg.model):
        log.info("%s has BatchNorm (running statistics updated in place): its %d models are "
                 "trained one at a time", cfg.model, cfg.models)
        together = False
    compile_step = resolve_compile(cfg.compile, torch.device(device), data.image_size,
                                   "the training step")
    precision = resolve_precision(cfg.precision, torch.device(device))
    warn_if_slow(precision, device, "the evaluation trains")
    try:
        if together:
            ks = list(range(cfg.models))
            if subset_ipc is not None:
                sets = [random_subset(data, subset_ipc, cfg.seed, k) for k in ks]
                x, y = torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets])
            else:
                x, y = images[None].expand(len(ks), *images.shape), labels[None].expand(len(ks), -1)
            nets = train_models_batched(x, y, data.num_classes, cfg, ks, device, on_epoch=bar.update,
                                        compile_backend="inductor" if compile_step else None,
                                        precision=precision)
            for net in nets:
                accs.append(accuracy(net, data, device, cfg.test_batch))
            bar.set_postfix(acc=f"{np.mean(accs):.4f}")
        shared = None
        for k in range(cfg.models if not together else 0):
            if subset_ipc is not None:
                images, labels = random_subset(data, subset_ipc, cfg.seed, k)
            if compile_step and shared is None:
                shared = SharedCompiled(build_model(cfg.model, data.channels, data.num_classes,
                                                    data.image_size, device=device))
            net = train_model(images, labels, data, cfg, k, device, on_epoch=lambda: bar.update(1),
                              compiled=shared, precision=precision)
            accs.append(accuracy(net, data, device, cfg.test_batch))
            bar.set_postfix(acc=f"{np.mean(accs):.4f}")
    finally:
        bar.close()
    return {"acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)), "accs": accs,
            "seconds": round(time.perf_counter() - t0, 3), "trained_together": together,
            "compiled": compile_step, "precision": precision}


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


def evaluate_synset(synset: str | None = None, *, baseline: str | None = None, dataset: str | None = None,
             data_root: str | None = None, download: bool = False, image_size: int | None = None,
             ipc: int | None = None, model: str | None = None, models: int | None = None,
             epochs: int | None = None, batch_train: int | None = None, strategy: str | None = None,
             seed: int | None = None, device: str | None = None, exp: int | None = None,
             compare_random: bool = False, progress: bool = True, batched: bool | None = None,
             compile: str = "auto", precision: str = "auto", aug_mode: str | None = None) -> dict:
    """Evaluate a synset file (or, with baseline='random', random real subsets) by the paper's
    protocol. Returns the summary the CLI prints as JSON."""
    if synset and baseline:
        raise FastDMError("pass either a SYNSET.pt or --baseline random, not both")
    if not synset and not baseline:
        raise FastDMError("evaluate needs a SYNSET.pt (from fastdm condense) or --baseline random "
                          "--dataset NAME --ipc N")
    syn, saved = None, {}
    if synset:
        syn = load_synset(synset, exp)
        saved = syn["config"]
        if syn["kind"] == "reference" and not dataset:
            raise FastDMError(f"{synset} is a reference synset, which does not record its dataset; "
                              f"pass --dataset NAME (and --data-root DIR)")
    dataset = dataset or saved.get("dataset")
    if not dataset:
        raise FastDMError("--baseline random needs --dataset NAME")
    if not syn:
        if ipc is None:
            raise FastDMError("--baseline random needs --ipc N (images per class)")
        if ipc < 1:
            raise FastDMError(f"--ipc must be >= 1, got {ipc}")
    data = load_dataset(dataset, data_root if data_root is not None else saved.get("data_root"),
                        download, image_size or saved.get("image_size"), progress=progress)
    quick = QUICK_EVAL.get(data.name, {})
    cfg = EvalConfig(
        model=model or saved.get("model") or data.default_model,
        models=models if models is not None else quick.get("models", 5),
        epochs=epochs if epochs is not None else quick.get("epochs", 1000),
        batch_train=batch_train if batch_train is not None else 256,
        strategy=strategy if strategy is not None else saved.get("strategy", data.default_strategy),
        # one DSA setting for condensing and evaluating, unless given
        aug_mode=aug_mode or saved.get("aug_mode") or "S",
        seed=seed if seed is not None else 0,
        batched=batched,
        compile=compile,
        precision=precision,
    )
    cfg.check()
    dev = resolve_device(device)
    results = {}
    trained_ipc = None
    if syn is not None:
        trained_ipc = check_synset_shape(syn["images"], syn["labels"], data, synset)
        # a partitioned set stores ipc images per class and trains on ipc x factor^2: random
        # real subsets get the storage budget
        ipc = max(1, trained_ipc // int(saved.get("factor") or 1) ** 2)
        results["synset"] = evaluate_images(syn["images"], syn["labels"], data, cfg, dev, progress,
                                            desc=f"evaluate synset ({cfg.model})")
    if baseline or compare_random:
        results["random"] = evaluate_images(None, None, data, cfg, dev, progress, subset_ipc=ipc,
                                            desc=f"evaluate random subsets ({cfg.model})")
    main = results.get("synset", results.get("random"))
    summary = {"dataset": data.name, "ipc": ipc, "trained_per_class": trained_ipc or ipc,
               "model": cfg.model,
               "kind": "synset" if syn is not None else "random",
               "acc_mean": main["acc_mean"], "acc_std": main["acc_std"], "accs": main["accs"],
               "models": cfg.models, "epochs": cfg.epochs, "seed": cfg.seed, "device": str(dev),
               "seconds": main["seconds"], "trained_together": main["trained_together"],
               "compiled": main["compiled"], "precision": main["precision"]}
    if syn is not None:
        summary["synset"] = synset
        if "random" in results:
            summary["random"] = results["random"]
    return summary
