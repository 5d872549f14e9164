"""``--embedders queue``: IDM's queue of networks trained online (``IDM_cifar10.py``).

The queue starts with 3 random networks; at every iteration t with t % queue_interval == 0 a new
random one joins (the oldest leaves beyond queue_size). Each iteration matches with one queue
network drawn from (seed, t), whose weights are copied into the engine's embedder; its running
training accuracy (in percent, as IDM's torchnet meter reports it) weighs IDM's class-aware
cross-entropy term. After the iteration's updates, queue_train networks drawn from (seed, t)
take queue_steps SGD steps (momentum 0.9, weight decay 5e-4) each on queue_batch real images of
all classes (no augmentation), together in one vmapped step on CUDA; the meter counts each
step's accuracy before the step. Meters restart every queue_meter_reset iterations (IDM resets
them at its evaluation interval). A meter whose accuracy is exactly 0 reads 100, as the
summary of IDM's code we follow states (torchnet's ``accuracy and (1 - err) or err`` form; a
port with a plain if/else would read 0; it matters only for a network at exactly 0 %). The queue's networks, momenta and meters are the checkpoint's.

It cannot be sharded over processes: its networks train on real images of every class, and a
process holds only its own classes' rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import rng
from ..errors import FastDMError
from ..models import build_model
from .base import EmbedderSource
from .stacked import sgd_, single_forward, stacked_forward

INITIAL = 3          # networks in the queue before the first iteration (IDM's code)
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # IDM's --net_decay


class QueueSource(EmbedderSource):
    kind = "queue"
    shardable = False

    def __init__(self, cfg, net, data, device, real_images):
        super().__init__(cfg, net, data, device)
        if real_images is None or real_images.shape[0] != len(data.train):
            raise FastDMError("--embedders queue needs every class's real images in one process")
        head = getattr(net, "classifier", None)
        if cfg.ce_weight > 0 and not isinstance(head, torch.nn.Linear):
            raise FastDMError(f"--ce-weight: model {cfg.model} has no linear classifier on its "
                              f"embedding (the ConvNet family has); use --ce-weight 0")
        self.images = real_images
        self.labels = data.train.labels.to(real_images.device)
        # the trained networks in one vmapped step on CUDA; on the CPU one after another
        # (grouped convolutions measured 1.7x slower there: benchmarks/RESULTS.md)
        self.together = self.device.type == "cuda"
        self.forward = stacked_forward(net) if self.together else single_forward(net)
        self.nets = [self._new(i) for i in range(INITIAL)]
        self.weight = torch.zeros((), device=self.device)

    def _new(self, ident: int) -> dict:
        cfg, d = self.cfg, self.data
        net = build_model(cfg.model, d.channels, d.num_classes, d.image_size, cfg.seed,
                          rng.QUEUE_INIT, ident, device=self.device)
        params = {k: p.detach() for k, p in net.named_parameters()}
        return {"id": ident, "params": params,
                "momentum": {k: torch.zeros_like(p) for k, p in params.items()},
                "correct": torch.zeros((), device=self.device),
                "count": torch.zeros((), device=self.device)}

    @staticmethod
    def accuracy_percent(net: dict) -> torch.Tensor:
        """The meter's value as IDM weighs with it: 0 before any step; an accuracy of exactly 0
        reads 100 (torchnet's ``accuracy and (1 - err) * 100 or err * 100``)."""
        acc = 100.0 * net["correct"] / net["count"].clamp(min=1)
        return torch.where(net["count"] == 0, torch.zeros_like(acc),
                           torch.where(acc == 0, torch.full_like(acc, 100.0), acc))

    def begin(self, iteration: int) -> None:
        cfg = self.cfg
        if iteration > 0 and iteration % cfg.queue_meter_reset == 0:
            for net in self.nets:
                net["correct"].zero_()
                net["count"].zero_()
        if iteration % cfg.queue_interval == 0:
            if len(self.nets) == cfg.queue_size:
                self.nets.pop(0)
            self.nets.append(self._new(INITIAL + iteration // cfg.queue_interval))
        j = int(rng.randint(0, len(self.nets), cfg.seed, rng.QUEUE_PICK, iteration))
        picked = self.nets[j]
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                p.copy_(picked["params"][name])
        self.weight = self.accuracy_percent(picked)

    def class_term(self, embedding, classes, per):
        if self.cfg.ce_weight == 0:
            return None
        logits = self.net.classifier(embedding.float())
        labels = classes.repeat_interleave(per)
        ce = F.cross_entropy(logits, labels, reduction="none").view(-1, per).mean(1).sum()
        return self.cfg.ce_weight * self.weight * ce

    def end(self, iteration: int) -> None:
        cfg = self.cfg
        q = min(cfg.queue_train, len(self.nets))
        if q == 0:
            return
        order = rng.permutation(len(self.nets), cfg.seed, rng.QUEUE_TRAIN, iteration, 0)
        nets = [self.nets[i] for i in order[:q].tolist()]
        total = self.images.shape[0]
        batch = min(cfg.queue_batch, total)
        # every step's batch of every network at once, drawn where the images are read:
        # [q * steps, batch] rows of the whole set
        draws, where = q * cfg.queue_steps, self.images.device
        rows, _ = rng.sample_without_replacement(
            torch.full((draws,), total, dtype=torch.int64, device=where), batch, cfg.seed,
            rng.QUEUE_TRAIN, iteration, 1, classes=torch.arange(draws, device=where),
            max_count=total)
        rows = rows.view(q, cfg.queue_steps, batch)
        labels = self.labels[rows].to(self.device, non_blocking=True)
        params = {k: torch.stack([n["params"][k] for n in nets]) for k in nets[0]["params"]}
        moms = {k: torch.stack([n["momentum"][k] for n in nets]) for k in params}
        for s in range(cfg.queue_steps):
            x = self.data.normalize(self.images[rows[:, s].reshape(-1)], self.device)
            x = x.view(q, batch, *x.shape[1:])
            y = labels[:, s]
            prm = {k: v.requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():
                logits = self.forward(prm, {}, x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                       reduction="none").view(q, batch).mean(1).sum()
                grads = dict(zip(prm, torch.autograd.grad(loss, list(prm.values()))))
            params = {k: v.detach() for k, v in prm.items()}
            hits = (logits.detach().argmax(-1) == y).sum(1).float()
            for i, n in enumerate(nets):  # the meter sees the accuracy before the step
                n["correct"] += hits[i]
                n["count"] += batch
            sgd_(params, grads, moms, cfg.queue_lr, MOMENTUM, WEIGHT_DECAY)
        for i, n in enumerate(nets):
            n["params"] = {k: v[i].clone() for k, v in params.items()}
            n["momentum"] = {k: v[i].clone() for k, v in moms.items()}

    def state_dict(self) -> dict:
        return {"nets": [{"id": n["id"], "params": {k: v.cpu() for k, v in n["params"].items()},
                          "momentum": {k: v.cpu() for k, v in n["momentum"].items()},
                          "correct": n["correct"].cpu(), "count": n["count"].cpu()}
                         for n in self.nets]}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise FastDMError("--resume: the checkpoint holds no queue (written by another "
                              "--embedders); use the original settings or another --out")
        dev = self.device
        self.nets = [{"id": int(n["id"]),
                      "params": {k: v.to(dev) for k, v in n["params"].items()},
                      "momentum": {k: v.to(dev) for k, v in n["momentum"].items()},
                      "correct": n["correct"].to(dev), "count": n["count"].to(dev)}
                     for n in state["nets"]]
