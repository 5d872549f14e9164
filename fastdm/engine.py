"""The DM engine: one iteration of Distribution Matching over all classes at once.

Per iteration t (Zhao & Bilen, WACV 2023, Algorithm 1, with every draw a function of the seed):

    psi       <- the iteration's embedder: randomly initialised   weights from (seed, t)
                 (--embedders queue|bank: IDM's trained queue, DANCE's interpolated bank member)
    omega_c   <- a DSA draw, shared by class c's two sides    from (seed, t, c)
    R_c       <- batch_real real images of class c            from (seed, t, c)
                 (--real-batches first: its first batch_real, NCFM's fixed set)
    loss      =  sum_c objective(psi(A(R_c; omega_c)), psi(A(D(S_c); omega_c)))
                 (+ the source's class term: IDM's accuracy-weighted cross-entropy)
    S         <- one step of the images' optimiser on d loss / d S    (SGD or AdamW)
                 (--step class: one step after each class's loss instead, as NCFM's loop)
    S         <- with a calibrating source (DANCE, NCFM): one more step per class on
                 calib_weight * CE(expert(A(D(S_c))), c), sharing the optimiser's state
    the source updates itself (the queue trains some of its networks on real batches)

D decodes partitioned images (--factor: each stored image's tiles upsampled to full size; the
identity at factor 1), inside the DSA kernels' read on the fused path.

Classes go through the embedder in chunks (the plan's ``class_chunk``): a chunk's real images are
augmented, embedded forward only (inference mode) and reduced to what the objective keeps of
them; its synthetic images are augmented and embedded with autograd, and the gradient of the
chunk's loss lands in the rows of one gradient buffer; after the last chunk, one update. Classes
are independent, so peak memory follows the chunk, not the number of classes. Everything the
engine builds (embedder, compilation, convolutions, real-image tier, objective) is what the run
plan (fastdm.plan) decided.
"""
from __future__ import annotations

import math
import time

import torch

import torch.nn.functional as F

from . import host_memory, objectives, rng
from .augment import DSAParams, parse_strategy, sample_siamese
from .augment.partition import Partition, encode_init, partition
from .checkpoint import RunState
from .data import Dataset
from .data.sampler import RealSampler
from .data.stream import RealStream
from .embedders import build_source
from .models import build_model
from .models.compiled import compile_fn
from .models.fast_embed import tapped_embed
from .objectives.base import Counts
from .ops.dsa import dsa_augment
from .plan import RunPlan
from .optim import ImageOptimizer, Plateau
from .precision import autocast


class DMEngine:
    def __init__(self, plan: RunPlan, data: Dataset, compile_backend: str = "inductor"):
        """``compile_backend``: torch.compile's backend when the plan compiles (tests use
        cheaper ones)."""
        cfg = self.cfg = plan.config
        self.plan, self.data = plan, data
        self.device = torch.device(plan.device)
        self.lo, self.hi = plan.classes
        self.ipc = cfg.ipc
        self.hw = data.image_size
        if plan.host_memory == "kept":
            host_memory.keep_freed_memory()
        self.ops = parse_strategy(cfg.strategy)
        self.dsa = DSAParams(aug_mode=cfg.aug_mode)
        self.dsa_backend = plan.backends["dsa"]
        # the embedder: its weights are redrawn in place every iteration, so one compiled graph
        # serves the run; the real branch (forward only) may take Winograd convolutions
        self.net = build_model(cfg.model, data.channels, data.num_classes, self.hw, cfg.seed,
                               rng.NET, device=self.device)
        self.net.requires_grad_(False)
        self.net.train()
        compiled = (lambda fn: compile_fn(fn, backend=compile_backend)) if plan.compiled else (lambda fn: fn)
        self.objective = objectives.get(plan.objective)(cfg, plan.backends, self.device)
        # the intermediate outputs the objective matches besides the embedding (if any)
        taps, tap = self.objective.taps(self.net), self.objective.tap
        # the synthetic branch: Winograd with gradients; the real branch (forward only) may also
        # take the first-block kernel
        wino, first = plan.winograd_layers, plan.first_block_layers
        self.embed = compiled(tapped_embed(self.net, wino, taps, tap, grad=True)
                              if taps or wino else self.net.embed)
        self.real_embed = compiled(tapped_embed(self.net, wino, taps, tap, first,
                                                tap_sums=self.objective.tap_sums())) \
            if wino or first else self.embed
        self.optimizer = ImageOptimizer(cfg, data.mean, data.std, self.device)
        self.plateau = Plateau(self.optimizer, cfg.lr_plateau) if cfg.lr_plateau else None
        self._partitions: dict[int, Partition] = {}
        # this process's classes' rows of the class-sorted training set, where the tier keeps them
        train = data.train
        base = int(train.offsets[self.lo])
        end = int(train.offsets[self.hi - 1] + train.counts[self.hi - 1])
        images = train.images if (base, end) == (0, len(train)) else train.images[base:end]
        self.sampler = RealSampler(train.counts, train.offsets - base, cfg.batch_real, cfg.seed,
                                   first=cfg.real_batches == "first")
        self.stream = RealStream(images, self.device, plan.real_tier, self.sampler, mapped=train.mapped)
        # where each iteration's weights come from; a calibrating source's trained network
        self.source = build_source(cfg, self.net, data, self.device, self.stream.images)
        self.expert = compiled(self.source.expert) if self.source.expert is not None else None
        # host time in the source's begin/end (queue training, bank copies; on CUDA only what
        # the host waits for: the work itself is queued asynchronously)
        self.source_seconds = 0.0
        # image updates per iteration: the matching's (one, or one per class), the calibration's
        k = data.num_classes
        self.updates = (k if cfg.step == "class" else 1) + (k if self.expert is not None else 0)

    def close(self) -> None:
        """Stop the real-image stream's worker threads (the engine cannot take batches after)."""
        self.stream.close()

    def initial_state(self) -> RunState:
        """ipc real images of each class, drawn at random (``init real``) or its first ones in
        dataset order (``init first``), or standard normal noise."""
        cfg, dev = self.cfg, self.device
        shape = ((self.hi - self.lo) * self.ipc, self.data.channels, *self.hw)
        if cfg.init == "noise":  # element indices of the whole set: the same noise in any shard
            start = self.lo * self.ipc * math.prod(shape[1:])
            idx = torch.arange(start, start + math.prod(shape), device=dev)
            images = rng.normal(cfg.seed, rng.NOISE, idx, device=dev).view(shape)
        else:
            lo, hi = self.lo, self.hi
            tiles = self.ipc * cfg.factor ** 2
            # one real image per tile (factor 1: per image); the config's check guarantees
            # every class has enough
            assert int(self.sampler.counts[lo:hi].min()) >= tiles
            if cfg.init == "first":
                pos = torch.arange(tiles, device=dev).expand(hi - lo, tiles)
            else:
                pos, _ = rng.sample_without_replacement(self.sampler.counts[lo:hi].to(dev), tiles,
                                                        cfg.seed, rng.INIT,
                                                        classes=torch.arange(lo, hi, device=dev))
            idx = (self.sampler.offsets[lo:hi].to(dev)[:, None] + pos).reshape(-1)
            real = self.stream.images
            images = encode_init(self.data.normalize(real[idx.to(real.device)], dev), self.ipc,
                                 cfg.factor, cfg.init_resize)
        return RunState(images=images.contiguous(), momentum=None)

    # -- one iteration ----------------------------------------------------------------------------
    def step(self, state: RunState, value: bool = True) -> torch.Tensor:
        """Run iteration ``state.iteration`` in place; returns the summed loss (a 0-dim tensor;
        with ``value=False`` and a ``partial`` objective, without its constant terms)."""
        it = state.iteration
        if self.plateau is not None:  # the schedule reads every iteration's whole loss
            self.plateau.load_state_dict(state.lr_schedule)
            value = True
        if self.cfg.step == "class":
            loss = self.class_steps(state, value)
        else:  # one update on the sum over classes
            loss, grad = self.loss_and_grad(state.images, it, value)
            self.optimizer.step(state, grad, it * self.updates + 1)
        calib = self.calibrate(state, it) if self.expert is not None else 0.0
        if self.plateau is not None:  # NCFM's (matching + calibration) / classes; one sync
            self.plateau.step(float(loss + calib) / self.data.num_classes)
            state.lr_schedule = self.plateau.state_dict()
        t0 = time.perf_counter()
        self.source.end(it)
        self.source_seconds += time.perf_counter() - t0
        state.iteration += 1
        return loss

    def class_steps(self, state: RunState, value: bool = True) -> torch.Tensor:
        """``--step class``: one update after each class (NCFM's, IDM's and DANCE's loops), each
        class's loss taken at the images the previous classes' updates left. Every class of the
        set takes its turn in order; a class another process owns is a zero-gradient update
        here (its momentum still moves this process's rows, as on one shared tensor)."""
        it, k = state.iteration, self.data.num_classes
        table = self.draw(it)
        chunks = self.chunks()  # one class each (the plan's rule for --step class)
        self.plan_stream(it, chunks)
        total = torch.zeros((), device=self.device)
        for c in range(k):
            grad = torch.zeros_like(state.images)
            if self.lo <= c < self.hi:
                rows = slice((c - self.lo) * self.ipc, (c + 1 - self.lo) * self.ipc)
                loss, grad[rows] = self.chunk_loss(state.images[rows], table, it, c, c + 1, value)
                total += loss
            self.optimizer.step(state, grad, it * self.updates + c + 1)
        return total

    def calibrate(self, state: RunState, it: int) -> torch.Tensor:
        """DANCE's and NCFM's calibration: after the matching, one update per class on the
        cross-entropy of the source's trained network on class c's augmented synthetic images
        (one DSA draw per class, from (seed, t, c) on its own stream), with the optimiser's
        state. Returns the summed calibration loss."""
        k, dev, cfg = self.data.num_classes, self.device, self.cfg
        total = torch.zeros((), device=dev)
        owned = torch.arange(self.hi - self.lo, device=dev)
        table = sample_siamese(self.ops, self.dsa, self.hw, cfg.seed, rng.CALIB, it,
                               keys=torch.arange(self.lo, self.hi, device=dev))
        first = it * self.updates + (k if cfg.step == "class" else 1)
        per = self.ipc * cfg.factor ** 2
        for c in range(k):
            grad = torch.zeros_like(state.images)
            if self.lo <= c < self.hi:
                rows = slice((c - self.lo) * self.ipc, (c + 1 - self.lo) * self.ipc)
                syn = state.images[rows].detach().requires_grad_(True)
                with torch.enable_grad():
                    x = dsa_augment(syn, table.rows(owned[c - self.lo:c - self.lo + 1]),
                                    torch.zeros(per, dtype=torch.int64, device=dev),
                                    partition=self.partition(1), backend=self.dsa_backend)
                    with autocast(self.plan.precision, dev):
                        logits = self.expert(x)
                    labels = torch.full((per,), c, dtype=torch.int64, device=dev)
                    loss = cfg.calib_weight * F.cross_entropy(logits.float(), labels)
                    (grad[rows],) = torch.autograd.grad(loss, syn)
                total += loss.detach()
            self.optimizer.step(state, grad, first + c + 1)
        return total

    def draw(self, it: int):
        """Iteration ``it``'s draws: the embedder's weights (in place), the objective's own, and
        the DSA table of every class of this process."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.source.begin(it)
        self.source_seconds += time.perf_counter() - t0
        self.objective.begin(it)
        return sample_siamese(self.ops, self.dsa, self.hw, cfg.seed, rng.AUG, it,
                              keys=torch.arange(self.lo, self.hi, device=self.device))

    def plan_stream(self, it: int, chunks) -> None:
        """This iteration's real batches, then the next one's first: gathered ahead on host tiers."""
        ahead = chunks[:self.stream.depth] if it + 1 < self.cfg.iterations else []
        self.stream.plan([(it, c0, c1) for c0, c1 in chunks] + [(it + 1, c0, c1) for c0, c1 in ahead])

    def loss_and_grad(self, images: torch.Tensor, it: int,
                      value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss of iteration ``it``'s draws at ``images`` and its gradient (no update)."""
        table = self.draw(it)
        grad = torch.empty_like(images)
        total = torch.zeros((), device=self.device)
        chunks = self.chunks()
        self.plan_stream(it, chunks)
        for c0, c1 in chunks:
            rows = slice((c0 - self.lo) * self.ipc, (c1 - self.lo) * self.ipc)
            loss, grad[rows] = self.chunk_loss(images[rows], table, it, c0, c1, value)
            total += loss
        return total, grad

    def chunks(self) -> list[tuple[int, int]]:
        """The class chunks, in the order one iteration runs them (the plan's)."""
        return self.plan.chunks

    def chunk_loss(self, syn: torch.Tensor, table, it: int, c0: int, c1: int, value: bool = True):
        """The loss of classes [c0, c1) (summed) and its gradient w.r.t. their synthetic images."""
        k, dev = c1 - c0, self.device
        rows = table.rows(torch.arange(c0 - self.lo, c1 - self.lo, device=dev))
        real, n_real = self.stream.take((it, c0, c1))
        real_counts = Counts(n_real, self.sampler.counts_host(c0, c1))
        per = self.ipc * self.cfg.factor ** 2  # synthetic images per class the embedder sees
        syn_counts = Counts(torch.full((k,), per, device=dev), torch.full((k,), per))
        g_real = torch.repeat_interleave(torch.arange(k, device=dev), n_real,
                                         output_size=int(real_counts.host.sum()))  # no sync
        g_syn = torch.arange(k, device=dev).repeat_interleave(per)
        # the real branch needs no autograd: inference mode (no version counters, no views
        # tracked); what the objective keeps of it is cloned out as ordinary tensors below
        with torch.inference_mode():  # uint8 -> normalised, augmented floats in one pass on Triton
            real = dsa_augment(real, rows, g_real, mean=self.data.mean, std=self.data.std,
                               backend=self.dsa_backend)
            f_real = self.features(real, real=True)
            del real
            kept = self.objective.reduce_real(f_real, real_counts)
            del f_real
        kept = tuple(t.clone() for t in kept)
        syn = syn.detach().requires_grad_(True)
        with torch.enable_grad():
            f_syn = self.features(dsa_augment(syn, rows, g_syn, partition=self.partition(k),
                                              backend=self.dsa_backend))
            loss = self.objective.loss(kept, real_counts, f_syn, syn_counts, value).sum()
            extra = self.source.class_term(f_syn[0] if isinstance(f_syn, tuple) else f_syn,
                                           torch.arange(c0, c1, device=dev), per)
            if extra is not None:
                loss = loss + extra
            (g,) = torch.autograd.grad(loss, syn)
        return loss.detach(), g

    def partition(self, k: int) -> Partition | None:
        """The decode maps of a chunk of k classes (None without partitioning)."""
        if self.cfg.factor == 1:
            return None
        if k not in self._partitions:
            self._partitions[k] = partition(k, self.ipc, self.cfg.factor, self.device)
        return self._partitions[k]

    def features(self, x: torch.Tensor, real: bool = False) -> torch.Tensor:
        """The embedder's features of ``x`` in the plan's precision (``real``: the forward-only
        real branch, which may take Winograd convolutions)."""
        with autocast(self.plan.precision, self.device):
            return (self.real_embed if real else self.embed)(x)
