"""The state of a condensation run and its checkpoints (written atomically).

One process writes OUT/checkpoint.pt. Several (fastdm.distributed) write one file per rank,
OUT/checkpoint-itN-rankR-ofW.pt (its classes' images and momentum), then, once every rank's
file is in, rank 0 writes OUT/checkpoint.json naming them and removes older ones: the
manifest only ever names a complete set. Either kind resumes with any number of processes:
each takes its classes' rows from the files that hold them.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

import torch

from . import __version__
from .config import SETTINGS, CondenseConfig
from .errors import FastDMError
from .io import atomic_json_dump, atomic_torch_save

CHECKPOINT_FORMAT = "fastdm-checkpoint"


@dataclass
class RunState:
    """Everything a checkpoint holds: with it, iteration ``iteration`` onwards is determined
    (every random draw derives from the seed, the iteration and the class)."""

    images: torch.Tensor               # [classes * ipc, C, H, W] normalised float32
    momentum: torch.Tensor | None      # SGD momentum buffer (None before the first step)
    iteration: int = 0                 # iterations completed
    losses: list = field(default_factory=list)  # per-iteration loss (sum over classes / classes)
    elapsed: float = 0.0               # seconds spent in iterations so far
    precision: str | None = None       # the embedder arithmetic those iterations ran in
    conv: str | None = None            # their real-branch convolutions (winograd, direct, both: "a+b")
    source: dict | None = None         # the embedder source's own state (IDM's queue), if any
    lr_schedule: dict | None = None    # --lr-plateau's state (the images' learning rate), if any


def checkpoint_path(out: str) -> str:
    return os.path.join(out, "checkpoint.pt")


def manifest_path(out: str) -> str:
    return os.path.join(out, "checkpoint.json")


def has_checkpoint(out: str) -> bool:
    return os.path.exists(checkpoint_path(out)) or os.path.exists(manifest_path(out))


def _payload(plan, state: RunState) -> dict:
    return {"format": CHECKPOINT_FORMAT, "version": 1, "fastdm": __version__,
            "config": plan.config.to_dict(), "data_fingerprint": plan.data_fingerprint,
            "iteration": state.iteration, "images": state.images.detach().cpu(),
            "momentum": None if state.momentum is None else state.momentum.cpu(),
            "losses": list(state.losses), "elapsed": state.elapsed, "classes": list(plan.classes),
            "precision": state.precision, "conv": state.conv, "source": state.source,
            "lr_schedule": state.lr_schedule}


def save_checkpoint(out: str, plan, state: RunState, dist=None) -> None:
    """One process: checkpoint.pt. Ranks: every rank calls this at the same iteration.
    ``plan``: the run's (fastdm.plan.RunPlan; its classes are this process's)."""
    if dist is None:
        atomic_torch_save(_payload(plan, state), checkpoint_path(out))
        # a sharded checkpoint of an earlier run is superseded: the manifest goes first, so a
        # crash half-way leaves no manifest naming removed files
        _remove(out, keep=set())
        return
    from . import distributed
    name = f"checkpoint-it{state.iteration:08d}-rank{dist.rank}-of{dist.world}.pt"
    atomic_torch_save(_payload(plan, state), os.path.join(out, name))
    distributed.barrier()  # every rank's file is in
    if dist.main:
        files = [f"checkpoint-it{state.iteration:08d}-rank{r}-of{dist.world}.pt" for r in range(dist.world)]
        missing = [f for f in files if not os.path.isfile(os.path.join(out, f))]
        if missing:  # several nodes, each writing into its own local --out
            raise FastDMError(f"rank 0 does not see {', '.join(missing[:3])} in {out}, written by "
                              f"the other ranks: with several nodes --out must be on a file system "
                              f"that every node shares")
        atomic_json_dump({"format": CHECKPOINT_FORMAT, "iteration": state.iteration,
                          "world": dist.world, "files": files}, manifest_path(out))
        if os.path.exists(checkpoint_path(out)):
            os.remove(checkpoint_path(out))
        _remove(out, keep=set(files))
    distributed.barrier()


def remove_checkpoints(out: str) -> None:
    """A finished run's checkpoint files (one process's or the ranks'), once its outputs are in."""
    if os.path.exists(checkpoint_path(out)):
        os.remove(checkpoint_path(out))
    _remove(out, keep=set())  # the manifest, then the ranks' files


def _remove(out: str, keep: set) -> None:
    if not keep and os.path.exists(manifest_path(out)):
        os.remove(manifest_path(out))
    for path in glob.glob(os.path.join(out, "checkpoint-it*-rank*-of*.pt")):
        if os.path.basename(path) not in keep:
            os.remove(path)


def _load(path: str) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FastDMError(f"--resume: {path} cannot be read ({type(e).__name__}); remove it to "
                          f"start over, or use another --out") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise FastDMError(f"--resume: {path} is not a fastdm checkpoint")
    return ck


def _files(out: str) -> list[str]:
    """The checkpoint files of OUT's latest complete checkpoint. Both kinds exist only after
    a save that was cut short while superseding the other kind: the later iteration wins."""
    single = checkpoint_path(out) if os.path.isfile(checkpoint_path(out)) else None
    if os.path.isfile(manifest_path(out)):
        try:
            with open(manifest_path(out)) as fh:
                manifest = json.load(fh)
            files, it = manifest["files"], int(manifest["iteration"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            if single:
                return [single]
            raise FastDMError(f"--resume: {manifest_path(out)} cannot be read ({e})") from None
        paths = [os.path.join(out, f) for f in files]
        missing = [p for p in paths if not os.path.isfile(p)]
        if single and (missing or int(_load(single)["iteration"]) > it):
            return [single]
        if missing:
            raise FastDMError(f"--resume: {manifest_path(out)} names missing files {missing[:3]}")
        return paths
    if single:
        return [single]
    if os.path.isfile(os.path.join(out, "synset.pt")):
        raise FastDMError(f"--resume: the run in {out} finished and its checkpoint was removed (keep "
                          f"it with --keep-checkpoint to extend a run later); start afresh with "
                          f"--overwrite, or use another --out")
    raise FastDMError(f"--resume: no checkpoint in {out} (checkpoint.pt or checkpoint.json); run "
                      f"without --resume to start")


def _read(out: str) -> dict:
    return _load(_files(out)[0])


def saved_config(out: str) -> dict:
    """The settings recorded in OUT's checkpoint."""
    return dict(_read(out)["config"])


def load_checkpoint(out: str, plan) -> RunState:
    """The saved state of the plan's classes, after checking that every setting that shapes
    the result (and the dataset) agrees; from one file or from the per-rank files that hold them."""
    paths = _files(out)
    first = _load(paths[0])
    saved = CondenseConfig.from_dict(first["config"]).to_dict()
    saved["data_fingerprint"] = first.get("data_fingerprint", first["config"].get("data_fingerprint"))
    now = {**plan.config.to_dict(), "data_fingerprint": plan.data_fingerprint}
    # the result's settings (of this run's objective: another objective's differ by nature)
    keys = [s.name for s in SETTINGS if s.kind == "result" and s.objective in (None, now["objective"])]
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in (*keys, "data_fingerprint")
            if saved.get(k) != now.get(k)]
    if diff:
        raise FastDMError(f"--resume: the settings differ from the checkpoint's ({'; '.join(diff)}); "
                          f"use the original settings or another --out")
    ipc = plan.config.ipc
    lo, hi = plan.classes
    images, moms = [], []
    for i, path in enumerate(paths):
        ck = first if i == 0 else _load(path)
        c0, c1 = ck.get("classes") or (0, ck["images"].shape[0] // ipc)
        a, b = max(lo, c0), min(hi, c1)
        if a >= b:
            continue
        rows = slice((a - c0) * ipc, (b - c0) * ipc)
        images.append(ck["images"][rows])
        moms.append(None if ck["momentum"] is None else ck["momentum"][rows])
        if int(ck["iteration"]) != int(first["iteration"]):
            raise FastDMError(f"--resume: {path} is at iteration {ck['iteration']}, "
                              f"{paths[0]} at {first['iteration']}: the checkpoint is inconsistent")
    device = plan.device
    mom = None if any(m is None for m in moms) else torch.cat(moms).to(device)
    return RunState(images=torch.cat(images).to(device), momentum=mom,
                    iteration=int(first["iteration"]), losses=list(first["losses"]),
                    elapsed=float(first["elapsed"]), precision=first.get("precision"),
                    conv=first.get("conv"), source=first.get("source"),
                    lr_schedule=first.get("lr_schedule"))
