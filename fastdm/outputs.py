"""What a condensation leaves in its folder: synset.pt (the set, in a form the reference's
evaluation code reads too), grid.png (the stored images by class) and loss.png, metrics.json (the config, the run plan,
timings and the loss history). synset.pt is written last: beside a checkpoint it means the run
finished and every output is its own."""
from __future__ import annotations

import glob
import os

import torch

from . import __version__
from .augment.partition import decode_set
from .checkpoint import RunState
from .errors import FastDMError
from .io import SYNSET_FORMAT, SYNSET_VERSION, atomic_json_dump, atomic_torch_save
from .objectives import get as get_objective
from .report import save_run_pictures

OUTPUT_FILES = ("synset.pt", "grid.png", "loss.png", "metrics.json")


def prepare_folder(out: str, resume: bool, overwrite: bool) -> None:
    """Create ``out``; no file of an earlier run may survive beside the new one (a resumed
    run's outputs are written anew at its end; until then its checkpoint stands for it)."""
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


def synset_dict(cfg, data, state: RunState) -> dict:
    """``stored``: the ipc images per class the run optimised; ``images``/``labels``: the set
    training uses (with --factor > 1 the stored images decoded, ipc x factor^2 per class)."""
    stored = state.images.detach().cpu().contiguous()
    stored_labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
    with torch.no_grad():
        images, labels = decode_set(stored, stored_labels, cfg.factor)
    images = images.contiguous()
    return {
        "format": SYNSET_FORMAT, "version": SYNSET_VERSION, "fastdm": __version__,
        "images": images, "labels": labels, "stored": stored, "stored_labels": stored_labels,
        "factor": cfg.factor, "config": cfg.to_dict(),
        "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std),
        "iterations": state.iteration,
        "data": [[images, labels]],  # what the reference's evaluation code reads
    }


def metrics_dict(plan, state: RunState, run: dict) -> dict:
    """metrics.json: the config and the plan, then ``run``'s facts (timings, ranks, ...)."""
    return {"config": plan.config.to_dict(), "fastdm": __version__, "torch": torch.__version__,
            "plan": plan.to_dict(),
            # the whole run's arithmetic and convolutions ("fp32+bf16": resumed in another)
            "run_precision": state.precision, "run_conv": state.conv, **run,
            "final_loss": next((v for v in reversed(state.losses) if v is not None), None),
            "loss_history": state.losses}


def write_outputs(out: str, plan, data, state: RunState, run: dict) -> tuple[dict, dict]:
    """Pictures, metrics.json, then synset.pt; returns (synset, metrics)."""
    cfg = plan.config
    synset = synset_dict(cfg, data, state)
    save_run_pictures(out, synset["stored"], data.denormalize, data.num_classes, cfg.ipc, state.losses,
                      title=get_objective(plan.objective).title, class_names=data.classes)
    metrics = metrics_dict(plan, state, run)
    atomic_json_dump(metrics, os.path.join(out, "metrics.json"))
    atomic_torch_save(synset, os.path.join(out, "synset.pt"))
    return synset, metrics
