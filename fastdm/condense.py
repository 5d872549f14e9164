"""The DM engine: all classes per iteration, processed in class chunks.

Per iteration: a freshly initialised embedder (weights drawn from (seed, iteration)), one DSA
row per class (from (seed, iteration, class)), a real batch per class (from (seed, iteration,
class)); classes go through the network chunk by chunk, each chunk's synthetic-image
gradients are written into one gradient buffer, then one SGD-with-momentum step. Classes are
independent, so peak memory follows the chunk size, not the number of classes; models with
BatchNorm see all classes in one batch (their statistics mix classes, spec section 2).
The distance (fastdm.ops.mmd) is DM's linear loss (the real side reduced to per-class sums
right after the embedder) or the Gaussian multi-kernel MMD (its real-real term only when the
loss value is logged).
"""
from __future__ import annotations

import glob
import logging
import math
import os
import platform
import signal
import time

import torch

from . import __version__, rng
from .augment import DSAParams, parse_strategy, sample_siamese
from .backend import backend_for, conv_for
from . import distributed
from .checkpoint import RunState, has_checkpoint, load_checkpoint, save_checkpoint
from .config import CondenseConfig
from .data import Dataset, load_dataset
from .data.stream import RealStream, choose_tier
from .devices import resolve_device, synchronize
from .errors import FastDMError
from .io import SYNSET_FORMAT, SYNSET_VERSION, atomic_json_dump, atomic_torch_save
from .models import build_model, init_parameters_, uses_batchnorm
from .models.compiled import compile_fn, compiled_embed
from .models.fast_embed import winograd_embed, winograd_layers
from .ops.dsa import dsa_augment
from .ops.mmd import gaussian_mmd, linear_mmd, relative_bandwidths, segment_sum
from .precision import autocast, resolve_precision, warn_if_slow
from .viz import save_run_pictures

log = logging.getLogger("fastdm")

# Images (at 32x32) per class chunk when --class-chunk is not given: large enough to keep
# the device busy, small enough to bound activation memory. On the CPU smaller is faster:
# cifar10-ipc10 (266 images per class) ran 1.5x faster per iteration with one class per chunk
# than with five (benchmarks/RESULTS.md): large activations cost page faults and cache misses.
CHUNK_BUDGET = {"cpu": 512, "cuda": 16384}


class DMEngine:
    def __init__(self, config: CondenseConfig, data: Dataset, device: torch.device | str = "cpu",
                 compile_backend: str = "inductor", classes: tuple[int, int] | None = None):
        """``classes``: the range [lo, hi) this engine condenses (a rank's shard, see
        fastdm.distributed); default all. Its images are that range's, in class order."""
        self.cfg = config
        self.data = data
        self.device = torch.device(device)
        self.ops = parse_strategy(config.strategy)
        # Triton kernels where they exist and apply (logged when Triton was wanted but cannot run)
        self.backends = {op: backend_for(op, self.device) for op in ("dsa", "mmd")}
        self.dsa = DSAParams(aug_mode=config.aug_mode)
        self.C = data.num_classes
        self.lo, self.hi = classes if classes is not None else (0, self.C)
        self.K = self.hi - self.lo  # classes owned
        self.ipc = config.ipc
        self.hw = data.image_size
        self.net = build_model(config.model, data.channels, self.C, self.hw, config.seed, rng.NET,
                               device=self.device)
        self.net.requires_grad_(False)
        self.net.train()
        self.precision = resolve_precision(config.precision, self.device)
        if config.channels_last:  # NHWC convolutions (the embedder's inputs are converted too)
            self.net.to(memory_format=torch.channels_last)
            if self.device.type == "cpu":
                log.warning("--channels-last on the CPU: PyTorch's NHWC CPU kernels lost accuracy in "
                            "our measurement (gradient error 1e-3 vs 8e-7 in NCHW, both against "
                            "float64); it is meant for GPUs")
        self.batchnorm = uses_batchnorm(config.model)
        # the embedder: compiled once, fresh weights drawn into it in place every iteration
        self.embed, self.compiled = compiled_embed(self.net, self.device, config.compile, self.hw,
                                                   backend=compile_backend)
        warn_if_slow(self.precision, self.device, "the embedder runs")
        # the real branch (forward only, 93 % of the multiply-adds at cifar10 ipc 10) may take
        # Winograd convolutions on the CPU; the synthetic branch keeps the direct ones
        layers = winograd_layers(self.net, self.hw)
        self.conv = conv_for(config.conv, self.device, self.precision,
                             None if layers else f"{config.model} has no Winograd-eligible layers")
        self.winograd_layers = layers if self.conv == "winograd" else ()
        self.real_embed = self.embed
        if self.winograd_layers:
            fn = winograd_embed(self.net, self.winograd_layers)
            self.real_embed = compile_fn(fn, backend=compile_backend) if self.compiled else fn
        self.chunk = self._chunk_size()
        # only the owned classes' rows (contiguous: the set is class-sorted): a rank of several
        # holds and streams its shard alone; offsets are rows within that slice
        train = data.train
        base = int(train.offsets[self.lo])
        end = int(train.offsets[self.hi - 1] + train.counts[self.hi - 1])
        images = train.images if (base, end) == (0, len(train)) else train.images[base:end]
        self.host_counts, self.host_offsets = train.counts, train.offsets - base
        self.counts = self.host_counts.to(self.device)
        self.offsets = self.host_offsets.to(self.device)
        # where the uint8 training set lives (GPU, pinned/plain RAM, or the mapped store) and
        # how batches reach the device (fastdm.data.stream); ranks on one node share its RAM
        self.real_tier = choose_tier(images.numel(), self.device, config.real_tier, train.mapped,
                                     host_sharers=distributed.local_world() if classes else 1)
        self.stream = RealStream(images, self.device, self.real_tier,
                                 lambda key: self._indices(*key, device=self.stream.index_device),
                                 mapped=train.mapped)
        if train.mapped or self.real_tier != "memory":
            log.info("real images: %.2f GB uint8, tier %s", images.numel() / 1e9, self.real_tier)
        # real images per class each iteration, known on the host (no device sync to size the
        # Gaussian MMD's buffers): sample_without_replacement takes min(batch_real, count)
        self.n_real_host = data.train.counts.clamp(max=config.batch_real)
        # the Gaussian loss leaves out its real-real term unless the value is wanted
        self.partial_loss = config.mmd == "gaussian"
        if config.mmd == "gaussian" and config.bandwidth_scale == "absolute":
            self.bandwidths = torch.tensor(config.bandwidths, dtype=torch.float32, device=self.device)

    # -- set-up -----------------------------------------------------------------------------
    def _chunk_size(self) -> int:
        if self.batchnorm:
            if self.K != self.C:
                raise FastDMError(f"model {self.cfg.model} has BatchNorm, whose statistics mix all "
                                  f"classes: it cannot be sharded over processes; run one process")
            if self.cfg.class_chunk not in (None, self.C):
                log.warning("model %s has BatchNorm: all %d classes go through it in one batch "
                            "(--class-chunk ignored)", self.cfg.model, self.C)
            return self.C
        if self.cfg.class_chunk:
            return min(self.cfg.class_chunk, self.K)
        per_class = (min(self.cfg.batch_real, int(self.data.train.counts.max())) + self.ipc)
        pixels = per_class * self.hw[0] * self.hw[1] / 1024.0
        budget = CHUNK_BUDGET["cuda" if self.device.type == "cuda" else "cpu"]
        return max(1, min(self.K, int(budget // max(pixels, 1e-9))))

    def close(self) -> None:
        """Stop the real-image stream's worker threads (the engine cannot take batches after)."""
        self.stream.close()

    @property
    def real(self) -> torch.Tensor:
        """The uint8 training set where the real tier keeps it."""
        return self.stream.images

    def initial_state(self) -> RunState:
        cfg, dev = self.cfg, self.device
        shape = (self.K * self.ipc, self.data.channels, *self.hw)
        if cfg.init == "noise":  # element indices of the whole set: the same noise in any shard
            start = self.lo * self.ipc * math.prod(shape[1:])
            idx = torch.arange(start, start + math.prod(shape), device=dev)
            images = rng.normal(cfg.seed, rng.NOISE, idx, device=dev).view(shape)
        else:
            lo, hi = self.lo, self.hi
            classes = torch.arange(lo, hi, device=dev)
            pos, valid = rng.sample_without_replacement(self.counts[lo:hi], self.ipc, cfg.seed,
                                                        rng.INIT, classes=classes)
            assert bool(valid.all())  # config validation guarantees ipc <= smallest class
            idx = (self.offsets[lo:hi, None] + pos).reshape(-1)
            images = self.data.normalize(self.real[idx.to(self.real.device)], dev)
        return RunState(images=images.contiguous(), momentum=None)

    # -- one iteration ----------------------------------------------------------------------
    def chunks(self) -> list[tuple[int, int]]:
        return [(c0, min(self.hi, c0 + self.chunk)) for c0 in range(self.lo, self.hi, self.chunk)]

    def loss_and_grad(self, images: torch.Tensor, it: int,
                      value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss of iteration ``it``'s draws at ``images`` and its gradient (no update).
        ``value=False`` lets the Gaussian MMD skip its real-real term (same gradient; the
        returned loss then lacks that term)."""
        cfg, dev = self.cfg, self.device
        init_parameters_(self.net, cfg.seed, rng.NET, it)
        classes = torch.arange(self.lo, self.hi, device=dev)
        table = sample_siamese(self.ops, self.dsa, self.hw, cfg.seed, rng.AUG, it, keys=classes)
        grad = torch.empty_like(images)
        total = torch.zeros((), device=dev)
        chunks = self.chunks()
        # this iteration's real batches, then the next one's first: gathered ahead on host tiers
        ahead = chunks[:self.stream.depth] if it + 1 < cfg.iterations else []
        self.stream.plan([(it, c0, c1) for c0, c1 in chunks] + [(it + 1, c0, c1) for c0, c1 in ahead])
        for c0, c1 in chunks:
            rows = slice((c0 - self.lo) * self.ipc, (c1 - self.lo) * self.ipc)
            loss, grad[rows] = self.chunk_loss(images[rows], table, it, c0, c1, value)
            total += loss
        return total, grad

    def step(self, state: RunState, value: bool = True) -> torch.Tensor:
        """Run iteration ``state.iteration`` in place; returns the summed loss (a 0-dim tensor;
        with ``value=False`` and the Gaussian MMD, without its real-real term)."""
        loss, grad = self.loss_and_grad(state.images, state.iteration, value)
        # SGD with momentum on the images, as torch.optim.SGD (no dampening, no weight decay).
        if state.momentum is None:
            state.momentum = grad  # a fresh tensor each iteration: no copy needed
        else:
            state.momentum.mul_(self.cfg.momentum).add_(grad)
        state.images.add_(state.momentum, alpha=-self.cfg.lr_img)
        state.iteration += 1
        return loss

    def real_indices(self, it: int, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store indices of iteration ``it``'s real images of classes [c0, c1) and their counts:
        batch_real per class (all of a smaller class), without replacement within the class,
        a function of (seed, iteration, class) alone."""
        return self._indices(it, c0, c1, self.device)

    def _indices(self, it: int, c0: int, c1: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        counts, offsets = (self.counts, self.offsets) if device == self.device else \
            (self.host_counts.to(device), self.host_offsets.to(device))
        classes = torch.arange(c0, c1, device=device)
        pos, valid = rng.sample_without_replacement(counts[c0:c1], self.cfg.batch_real,
                                                    self.cfg.seed, rng.REAL, it, classes=classes,
                                                    max_count=int(self.host_counts[c0:c1].max()))
        # the valid positions are each row's first min(batch_real, count): pick them by index
        # arithmetic with the total known on the host (a boolean mask would wait for the GPU)
        n = valid.sum(1)
        total = int(self.n_real_host[c0:c1].sum())
        row = torch.repeat_interleave(torch.arange(c1 - c0, device=device), n, output_size=total)
        col = torch.arange(total, device=device) - (torch.cumsum(n, 0) - n)[row]
        return (offsets[c0:c1, None] + pos)[row, col], n

    def real_batch(self, it: int, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised real images of classes [c0, c1) for iteration ``it`` and their counts."""
        images, counts = self.stream.take((it, c0, c1))
        return self.data.normalize(images, self.device), counts

    def features(self, x: torch.Tensor, real: bool = False) -> torch.Tensor:
        """The embedder's features of ``x`` in the run's precision and memory format (``real``:
        the forward-only real branch, which may use Winograd convolutions)."""
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            return (self.real_embed if real else self.embed)(x)

    def chunk_loss(self, syn: torch.Tensor, table, it: int, c0: int, c1: int, value: bool = True):
        """Loss of classes [c0, c1) (summed) and d loss / d syn for their synthetic images."""
        cfg = self.cfg
        k = c1 - c0
        rows = table.rows(torch.arange(c0 - self.lo, c1 - self.lo, device=self.device))
        real, n_real = self.stream.take((it, c0, c1))
        g_real = torch.repeat_interleave(torch.arange(k, device=self.device), n_real,
                                         output_size=int(self.n_real_host[c0:c1].sum()))  # no sync
        g_syn = torch.arange(k, device=self.device).repeat_interleave(self.ipc)
        dsa, mmd = self.backends["dsa"], self.backends["mmd"]
        # the real branch needs no autograd at all: inference mode (no version counters, no
        # views tracked); what the loss keeps of it is cloned out as ordinary tensors below
        with torch.inference_mode():  # uint8 -> normalised, augmented floats in one pass on Triton
            real = dsa_augment(real, rows, g_real, mean=self.data.mean, std=self.data.std, backend=dsa)
            f_real = self.features(real, real=True)
            del real
            if cfg.mmd == "linear":  # the real side is [k, D] sums from here on
                real_sums = segment_sum(f_real, n_real, backend=mmd)
                del f_real
            else:
                bw = self.bandwidths if cfg.bandwidth_scale == "absolute" else \
                    relative_bandwidths(f_real, n_real, cfg.bandwidths, backend=mmd)
        if cfg.mmd == "linear":
            real_sums = real_sums.clone()
        else:
            f_real, bw = f_real.clone(), bw.clone()
        syn = syn.detach().requires_grad_(True)
        # Gaussian: counts on the host size its pair buffers without a device sync
        syn_counts = torch.full((k,), self.ipc, device=self.device if cfg.mmd == "linear" else "cpu")
        with torch.enable_grad():
            f_syn = self.features(dsa_augment(syn, rows, g_syn, backend=dsa))
            if cfg.mmd == "linear":
                per_class = linear_mmd(real_sums, n_real, f_syn, syn_counts, backend=mmd)
            else:
                per_class = gaussian_mmd(f_real, self.n_real_host[c0:c1], f_syn, syn_counts, bw,
                                         real_term=value, backend=mmd)
            loss = per_class.sum()
            (g,) = torch.autograd.grad(loss, syn)
        return loss.detach(), g


# -- the iteration loop -------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run: stopped after ``iteration`` completed iterations; the
    checkpoint in ``out`` is at iteration ``saved`` (None: no checkpoint was written)."""

    def __init__(self, out: str | None, iteration: int, saved: int | None):
        super().__init__(out, iteration, saved)
        self.out, self.iteration, self.saved = out, iteration, saved


def run(engine: DMEngine, state: RunState, out: str | None = None, progress: bool = True,
        on_iteration=None, dist=None) -> RunState:
    """Iterate up to cfg.iterations, checkpointing every cfg.checkpoint_every iterations and at
    the end. Ctrl-C (or SIGTERM) finishes the current iteration, saves a checkpoint and raises
    Interrupted; a second Ctrl-C stops at once, keeping the last checkpoint (if any).
    With ``dist`` (this rank of several): losses are summed over ranks at log points, and the
    ranks agree on stopping there too (they are in step only at log points): Ctrl-C/SIGTERM
    runs on to the next log point, where every rank saves; a second one stops at once,
    keeping the last complete checkpoint."""
    from tqdm import tqdm

    cfg = engine.cfg
    total = cfg.iterations
    bar = tqdm(total=total, initial=state.iteration, desc=f"DM {cfg.dataset} ipc{cfg.ipc}",
               unit="it", disable=not progress or None, dynamic_ncols=True)
    pending = []  # loss tensors not yet copied to the host (one sync per log interval)
    stop = []
    agreed = False  # dist: every rank has agreed to stop at this log point
    in_step = False
    # the iteration of the checkpoint on disk (a resumed run starts from it)
    saved = [state.iteration if out and has_checkpoint(out) else None]

    def save():
        flush()
        save_checkpoint(out, cfg, state, dist, (engine.lo, engine.hi))
        saved[0] = state.iteration

    def flush():  # None: an iteration whose loss value was not computed (see DMEngine.step)
        if pending:
            done = [v for v in pending if v is not None]
            total = torch.stack(done) if done else None
            if dist is not None and total is not None:  # every rank flushes at the same points
                distributed.all_sum(total)
            values = iter((total / engine.C).tolist() if done else [])
            state.losses.extend(None if v is None else next(values) for v in pending)
            pending.clear()

    def on_signal(signum, frame):
        # under torchrun one Ctrl-C arrives twice (from the terminal and forwarded by the
        # launcher): a signal within 2 s of the first is the same request
        if dist is not None and stop and time.monotonic() - stop[0] < 2:
            return
        if stop or (not in_step and dist is None):
            raise KeyboardInterrupt
        stop.append(time.monotonic())
        if dist is None:
            log.warning("interrupted: finishing iteration %d, then saving a checkpoint "
                        "(Ctrl-C again to stop at once)", state.iteration + 1)
        else:
            log.warning("rank %d interrupted: running on to the next log point (every %d "
                        "iterations), where all ranks save a checkpoint (again to stop at once)",
                        dist.rank, cfg.log_every)

    handlers = {}
    if _main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        while state.iteration < total:
            t0 = time.perf_counter()
            if dist is not None:
                distributed.fault_injection(dist.rank, state.iteration)
            in_step = True
            nxt = state.iteration + 1
            want = nxt % cfg.log_every == 0 or nxt == total
            loss = engine.step(state, value=want)
            pending.append(loss if want or not engine.partial_loss else None)
            in_step = False
            if want:
                flush()
                bar.set_postfix(loss=f"{state.losses[-1]:.4f}")
                if dist is not None:  # any rank asked to stop: all stop here, in step
                    flag = torch.tensor([float(bool(stop))], device=engine.device)
                    agreed = bool(distributed.all_sum(flag).item() > 0)
            if want:  # the device's queue drains at log points only (no per-iteration sync);
                synchronize(engine.device)  # elapsed is exact there and at the end
            state.elapsed += time.perf_counter() - t0
            bar.update(1)
            if out and cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
                save()
            if on_iteration is not None:
                on_iteration(state)
            if (stop and dist is None) or agreed:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if dist is not None and not agreed:
            log.warning("rank %d stopped at iteration %d; the last complete checkpoint stays",
                        dist.rank, state.iteration)
        elif in_step:  # stopped inside an update: the state may be half-written, keep the last save
            log.warning("stopped inside iteration %d without saving", state.iteration + 1)
        else:
            flush()
            if out:
                save()
        raise Interrupted(out, state.iteration, saved[0]) from None
    finally:
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)
    flush()
    if out:
        save()
    return state


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def synset_dict(cfg: CondenseConfig, data: Dataset, state: RunState) -> dict:
    images = state.images.detach().cpu().contiguous()
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
    return {
        "format": SYNSET_FORMAT, "version": SYNSET_VERSION, "fastdm": __version__,
        "images": images, "labels": labels, "config": cfg.to_dict(),
        "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std),
        "iterations": state.iteration,
        "data": [[images, labels]],  # what the reference's evaluation code reads
    }


# -- the whole job: data, engine, resume, outputs --------------------------------------------
OUTPUT_FILES = ("synset.pt", "grid.png", "loss.png", "metrics.json")


def condense_dataset(config: CondenseConfig, out: str | None = None, resume: bool = False,
                     overwrite: bool = False, progress: bool = True) -> dict:
    """Run DM for ``config`` and write OUT/synset.pt, grid.png, loss.png, metrics.json.

    Returns ``{"out", "synset", "metrics"}``. Raises FastDMError for bad input and
    Interrupted (see run) on Ctrl-C. Started by torchrun with several processes, each condenses
    its shard of the classes (fastdm.distributed) and rank 0 writes the outputs; the other
    ranks return synset and metrics None.
    """
    if resume and overwrite:
        raise FastDMError("--resume and --overwrite contradict each other; pass one")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise FastDMError(f"--out {out} is a file, not a folder; choose another --out")
    dist, dev_name = None, None
    if distributed.launched():  # torchrun: this process condenses its shard of the classes
        # the rank's own device (cuda:LOCAL_RANK) is not a setting: the config keeps the user's
        dist, dev_name = distributed.init(config.device)
        if not dist.main:
            log.setLevel(logging.WARNING)
            progress = False
    try:
        return _condense(config, out, resume, overwrite, progress, dist, dev_name)
    finally:
        if dist is not None:
            distributed.shutdown()


def _load(config: CondenseConfig, progress: bool, dist) -> Dataset:
    """The dataset; under torchrun a --download happens once per node (local rank 0 first)."""
    def load():
        return load_dataset(config.dataset, config.data_root, bool(config.download),
                            config.image_size, progress=progress)
    if dist is None or not config.download:
        return load()
    data = load() if dist.local_rank == 0 else None
    distributed.barrier()
    return data if data is not None else load()


def _session_setting(saved: str | None, now: str, iteration: int, ran: str, runs: str,
                     flag: str) -> str:
    """The run's record of a speed setting after this session: ``now``, or ``saved+now`` with
    a warning when the checkpoint's iterations ran with another one."""
    if iteration == 0 or saved is None:
        return now
    if now in saved.split("+"):
        return saved
    log.warning("the checkpoint's %d iterations ran %s; this session runs %s (%s %s to keep it)",
                iteration, ran.format(saved), runs.format(now), flag, saved.split("+")[-1])
    return f"{saved}+{now}"


def _condense(config: CondenseConfig, out, resume: bool, overwrite: bool, progress: bool, dist,
              dev_name: str | None = None) -> dict:
    t_start = time.perf_counter()
    data = _load(config, progress, dist)
    t_data = time.perf_counter() - t_start
    cfg = config.resolved(data)
    device = resolve_device(dev_name or cfg.device)
    out = out or os.path.join("runs", f"{cfg.dataset}_ipc{cfg.ipc}")
    if has_checkpoint(out) and not (resume or overwrite):
        raise FastDMError(f"{out} already holds a run (a checkpoint); pass --resume to continue it, "
                          f"--overwrite to start afresh, or another --out")
    classes = distributed.shard(data.num_classes, dist.rank, dist.world) if dist else None
    engine = DMEngine(cfg, data, device, classes=classes)
    state = load_checkpoint(out, cfg, device, classes) if resume else engine.initial_state()
    if state.iteration > cfg.iterations:
        raise FastDMError(f"the checkpoint in {out} is at iteration {state.iteration}, past "
                          f"--iterations {cfg.iterations}; pass --iterations {state.iteration} or more")
    started = state.iteration
    # precision and the real branch's convolutions are speed settings (auto picks them by device,
    # and falls back to direct convolutions without the native build), so a run may resume in
    # others: allowed, but said, and recorded (rounding differs: no longer bit-identical)
    state.precision = _session_setting(state.precision, engine.precision, state.iteration,
                                       "in {}", "in {}", "--precision")
    state.conv = _session_setting(state.conv, engine.conv, state.iteration,
                                  "with {} real-branch convolutions", "{}", "--conv")
    if dist is None or dist.main:
        # no file of the old run may survive next to the new one; a resumed run's outputs are
        # written anew at its end (until then only its checkpoint stands for it)
        stale = []
        if resume or overwrite:
            stale = [os.path.join(out, name) for name in OUTPUT_FILES]
        if overwrite:
            stale += [os.path.join(out, name) for name in ("checkpoint.pt", "checkpoint.json")]
            stale += glob.glob(os.path.join(out, "checkpoint-it*-rank*-of*.pt"))
        for path in stale:
            if os.path.exists(path):
                os.remove(path)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise FastDMError(f"cannot create --out {out}: {e.strerror or e}") from None
    if dist is not None:
        distributed.barrier()  # the folder is ready for every rank's checkpoints
    log.info("condensing %s: %d classes x ipc %d, %s%s%s%s on %s, iterations %d..%d, class chunk %d, out %s",
             cfg.dataset, data.num_classes, cfg.ipc, cfg.model, " (compiled)" if engine.compiled else "",
             # precision shown only when it is not the reference's fp32
             "" if engine.precision == "fp32" else f" in {engine.precision}",
             " with Winograd real-branch convolutions" if engine.winograd_layers else "",
             device, state.iteration, cfg.iterations, engine.chunk, out)
    if dist is not None:
        log.info("%d processes; rank 0 condenses classes %d..%d", dist.world, engine.lo, engine.hi - 1)
    t_run = time.perf_counter()
    try:
        run(engine, state, out, progress=progress, dist=dist)
    finally:
        engine.close()
    mine = {"rank": 0 if dist is None else dist.rank, "classes": [engine.lo, engine.hi],
            "class_chunk": engine.chunk, "real_tier": engine.real_tier,
            "real_batches": dict(engine.stream.stats), "iterations_s": round(state.elapsed, 3)}
    ranks = [mine]
    if dist is not None:  # rank 0 assembles the whole set (rank order = class order)
        images = distributed.gather_rows(state.images, dist)
        ranks = distributed.gather_objects(mine, dist)
        if not dist.main:
            return {"out": out, "synset": None, "metrics": None}
        state = RunState(images=images, momentum=None, iteration=state.iteration,
                         losses=state.losses, elapsed=state.elapsed, precision=state.precision,
                         conv=state.conv)
    synset = synset_dict(cfg, data, state)
    save_run_pictures(out, state.images, data.denormalize, data.num_classes, cfg.ipc, state.losses,
                      title="DM loss" if cfg.mmd == "linear" else "Gaussian MMD^2")
    done = state.iteration
    metrics = {
        "config": cfg.to_dict(), "fastdm": __version__, "torch": torch.__version__,
        "device": str(device), "device_name": device_name(device), "cpu_threads": torch.get_num_threads(),
        "class_chunk": engine.chunk, "backends": engine.backends, "compiled": engine.compiled,
        # this session's arithmetic, and the whole run's ("fp32+bf16": resumed in another)
        "precision": engine.precision, "run_precision": state.precision,
        "channels_last": cfg.channels_last,
        # the real branch's convolutions, and which of net.features took Winograd
        "conv": engine.conv, "winograd_layers": list(engine.winograd_layers), "run_conv": state.conv,
        "real_tier": engine.real_tier, "real_batches": dict(engine.stream.stats),
        "processes": 1 if dist is None else dist.world,
        # class_chunk, real_tier, real_batches above are rank 0's; each rank's are here
        "ranks": ranks,
        "resumed_from": started, "iterations": done,
        "timings": {"load_data_s": round(t_data, 3), "this_session_s": round(time.perf_counter() - t_run, 3),
                    "iterations_s": round(state.elapsed, 3),
                    "per_iteration_s": round(state.elapsed / done, 5) if done else None,
                    "total_s": round(time.perf_counter() - t_start, 3)},
        "final_loss": next((v for v in reversed(state.losses) if v is not None), None),
        "loss_history": state.losses,
    }
    atomic_json_dump(metrics, os.path.join(out, "metrics.json"))
    # last: a synset.pt beside a checkpoint means the run finished and every output is its own
    atomic_torch_save(synset, os.path.join(out, "synset.pt"))
    return {"out": out, "synset": synset, "metrics": metrics}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (from /proc/cpuinfo on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
