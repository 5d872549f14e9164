"""The run plan: every "auto" of a condensation resolved once, checked once, and frozen.

``make_plan`` takes the user's config and the dataset and decides the settings the dataset
implies (fastdm.config.resolve_config), the device, the backend of every fused op, the
embedder's precision, whether it is compiled, the real branch's convolutions, where the real
images live (the tier) and how many classes go through the embedder at once (the chunk). The
engine builds what the plan says and decides nothing; metrics.json records the plan, and
``fastdm condense --dry-run`` prints it without condensing.

Choice rules (measurements in benchmarks/RESULTS.md):
* chunk: one class with --step class (each class's update precedes the next class's loss);
  else a budget of images x pixels per pass (CHUNK_BUDGET); on the CPU small chunks measured
  faster (cifar10 ipc 10: one class per chunk 1.5x faster than five; rechecked with freed
  memory reused: 1.2x, and auto within 3.5 % of the fastest chunk at four paper settings,
  RESULTS.md "Issue 23, third session"), on CUDA large ones fill the GPU. BatchNorm models take all classes in one pass (their statistics mix classes).
* compile: on CUDA, and on the CPU from 28 px (fastdm.models.compiled.wants_compile; MNIST's
  28 px measured 1.2-1.5x faster compiled, benchmarks/RESULTS.md "Issue 23"); evaluation's
  training step also needs enough images trained to repay the compile.
* host memory: kept for reuse on the CPU (fastdm.host_memory; page faults cost 0.7 s of a 1.4 s
  MNIST ipc-50 iteration).
* precision: bf16 on CUDA GPUs that compute it natively, fp32 elsewhere (fastdm.precision).
* conv: the native kernels for ConvNets on the CPU in fp32 (fastdm.backend.conv_for): Winograd
  3x3 layers in both branches, the fused first block (1 to 4 input channels) in the real branch.
* tier: by the set's size against the memory budgets (fastdm.data.stream.choose_tier).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from . import distributed, host_memory, objectives
from .backend import backend_for, conv_for
from .config import CondenseConfig, resolve_config
from .data.stream import choose_tier
from .embedders import source_shardable
from .devices import device_name, resolve_device
from .errors import FastDMError
from .footprint import count_flops
from .models import create_model, uses_batchnorm
from .models.compiled import resolve_compile
from .models.fast_embed import first_block_layers, winograd_layers
from .precision import resolve_precision, warn_if_slow

log = logging.getLogger("fastdm")

# Images x (pixels / 1024) per class chunk when --class-chunk is not given: large enough to
# keep the device busy, small enough to bound activation memory (see the module docstring).
CHUNK_BUDGET = {"cpu": 512, "cuda": 16384}


@dataclass(frozen=True)
class RunPlan:
    """What one process of a condensation runs (``classes``: its shard under torchrun)."""

    config: CondenseConfig         # every setting, the dataset's defaults filled in
    data_fingerprint: str | None   # the dataset's identity (stores); a resume checks it
    num_classes: int
    channels: int
    image_size: tuple
    classes: tuple                 # [lo, hi): the classes this process condenses
    device: str
    device_name: str
    threads: int
    backends: dict                 # fused op -> 'torch' | 'triton'
    precision: str                 # 'fp32' | 'bf16'
    compiled: bool
    conv: str                      # 'winograd' | 'direct' (the real branch's 3x3 convolutions)
    winograd_layers: tuple         # indices in the embedder's features that take Winograd
    first_block_layers: tuple      # ... that take the native first-block kernel (conv winograd)
    host_memory: str               # 'kept' (freed host memory reused: fastdm.host_memory) or 'system: why'
    real_tier: str
    real_bytes: int                # the uint8 training rows this process holds
    class_chunk: int
    batchnorm: bool
    objective: str
    flops_per_iteration: int       # embedder multiply-add FLOPs of one iteration (x2 per MAC)
    estimated_peak_bytes: int      # the run's working memory on its device (an estimate; not
    #                                the runtime's own: libraries, allocator caches)
    memory: dict = field(default_factory=dict)  # the estimate's parts
    notes: tuple = ()              # what the plan could not settle without running

    @property
    def chunks(self) -> list[tuple[int, int]]:
        lo, hi = self.classes
        return [(c0, min(hi, c0 + self.class_chunk)) for c0 in range(lo, hi, self.class_chunk)]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["config"] = self.config.to_dict()
        d["image_size"], d["classes"] = list(self.image_size), list(self.classes)
        d["winograd_layers"], d["notes"] = list(self.winograd_layers), list(self.notes)
        d["first_block_layers"] = list(self.first_block_layers)
        d["chunks"] = len(self.chunks)
        return d


def make_plan(config: CondenseConfig, data, device: str | torch.device | None = None,
              classes: tuple[int, int] | None = None, dry_run: bool = False) -> RunPlan:
    """Resolve ``config`` on ``data`` for this process (``device``: a torchrun rank's own,
    overriding the config's; ``classes``: its shard). ``dry_run``: decide without building
    anything (the native kernels are checked for, not compiled)."""
    cfg = resolve_config(config, data)
    dev = resolve_device(device if device is not None else cfg.device)
    lo, hi = classes if classes is not None else (0, data.num_classes)
    objective = objectives.get(cfg.objective)
    backends = {op: backend_for(op, dev) for op in ("dsa", *objective.ops)}
    precision = resolve_precision(cfg.precision, dev)
    warn_if_slow(precision, dev, "the embedder runs")
    compiled = resolve_compile(cfg.compile, dev, data.image_size)
    with torch.device("meta"):
        net = create_model(cfg.model, data.channels, data.num_classes, data.image_size)
    layers, single = winograd_layers(net, data.image_size), first_block_layers(net)
    conv = conv_for(cfg.conv, dev, precision, None if layers or single else
                    f"{cfg.model} has no layers for the native kernels", build=not dry_run)
    notes = []
    if dry_run and conv == "winograd":
        from . import native
        if not native.built("winograd"):
            notes.append("the native Winograd kernels are built on the first run (about a minute)")
    if not source_shardable(cfg.embedders) and hi - lo != data.num_classes:
        raise FastDMError("--embedders queue cannot be sharded over processes: its networks train "
                          "on real images of every class, and a process holds only its own "
                          "classes' rows; run one process (or --embedders random or bank:PATH)")
    if cfg.lr_plateau and hi - lo != data.num_classes:
        raise FastDMError("--lr-plateau steps on the loss of every class each iteration, which a "
                          "process holding some classes does not have; run one process or "
                          "--lr-plateau 0")
    batchnorm = uses_batchnorm(cfg.model)
    chunk = _chunk(cfg, data, dev, hi - lo, batchnorm)
    train = data.train
    rows = int(train.counts[lo:hi].sum())
    real_bytes = rows * train.images[0].numel()
    tier = choose_tier(real_bytes, dev, cfg.real_tier, train.mapped,
                       host_sharers=distributed.local_world() if classes is not None else 1)
    per_image = count_flops(net, (1, data.channels, *data.image_size))
    n_real = int(train.counts[lo:hi].clamp(max=cfg.batch_real).sum())
    n_syn = (hi - lo) * cfg.ipc * cfg.factor ** 2  # decoded: what the embedder sees
    memory = _memory(cfg, data, dev, per_image, tier, real_bytes, chunk, hi - lo, precision)
    return RunPlan(
        config=cfg, data_fingerprint=data.fingerprint, num_classes=data.num_classes,
        channels=data.channels, image_size=tuple(data.image_size), classes=(lo, hi),
        device=str(dev), device_name=device_name(dev), threads=torch.get_num_threads(),
        backends=backends, precision=precision, compiled=compiled, conv=conv,
        winograd_layers=layers if conv == "winograd" else (),
        first_block_layers=single if conv == "winograd" else (), real_tier=tier,
        host_memory=host_memory.planned(dev),
        real_bytes=real_bytes, class_chunk=chunk, batchnorm=batchnorm, objective=objective.name,
        # forward of every real and synthetic image, plus the synthetic input-gradient backward
        flops_per_iteration=per_image.matmul * (n_real + 2 * n_syn),
        estimated_peak_bytes=memory["total"], memory=memory, notes=tuple(notes))


def _chunk(cfg, data, dev, owned: int, batchnorm: bool) -> int:
    if cfg.step == "class":  # each class's update comes before the next class's loss
        if batchnorm:
            raise FastDMError(f"--step class takes one class per pass, but model {cfg.model} has "
                              f"BatchNorm, whose statistics need every class in one batch; use "
                              f"--step iteration or a model without BatchNorm")
        if cfg.class_chunk not in (None, 1):
            log.warning("--step class: one class per pass (--class-chunk %d ignored)", cfg.class_chunk)
        return 1
    if batchnorm:
        if owned != data.num_classes:
            raise FastDMError(f"model {cfg.model} has BatchNorm, whose statistics mix all "
                              f"classes: it cannot be sharded over processes; run one process")
        if cfg.class_chunk not in (None, data.num_classes):
            log.warning("model %s has BatchNorm: all %d classes go through it in one batch "
                        "(--class-chunk ignored)", cfg.model, data.num_classes)
        return data.num_classes
    if cfg.class_chunk:
        return min(cfg.class_chunk, owned)
    per_class = min(cfg.batch_real, int(data.train.counts.max())) + cfg.ipc * cfg.factor ** 2
    pixels = per_class * data.image_size[0] * data.image_size[1] / 1024.0
    budget = CHUNK_BUDGET["cuda" if dev.type == "cuda" else "cpu"]
    return max(1, min(owned, int(budget // max(pixels, 1e-9))))


def _memory(cfg, data, dev, per_image, tier: str, real_bytes: int, chunk: int, owned: int,
            precision: str) -> dict:
    """Peak bytes on the iteration's device, estimated from the layer shapes: the real set where
    the tier keeps it, the synthetic state (images, momentum, gradient), and the larger of one
    chunk's real branch (forward only: its widest layer) and its synthetic branch (every
    layer's output kept for the backward)."""
    pixels = data.channels * data.image_size[0] * data.image_size[1]
    act = 2 if precision == "bf16" else 4
    resident = real_bytes if tier == "gpu" or (dev.type == "cpu" and tier == "memory") else 0
    # images and their gradient, and the optimiser's state (SGD: momentum; AdamW: two moments)
    state = (4 if cfg.optimizer == "adamw" else 3) * owned * cfg.ipc * pixels * 4
    n_real = chunk * min(cfg.batch_real, int(data.train.counts.max()))
    n_syn = chunk * cfg.ipc * cfg.factor ** 2
    # uint8 batch, its normalised and augmented floats, the widest layer
    real_branch = n_real * (pixels * 9 + per_image.widest * act)
    # augmented images and their gradient, every layer's output, the features on both sides
    syn_branch = n_syn * (pixels * 8 + per_image.outputs * act)
    total = resident + state + max(real_branch, syn_branch)
    return {"real_set": resident, "synthetic_state": state, "real_branch": real_branch,
            "synthetic_branch": syn_branch, "total": total}
