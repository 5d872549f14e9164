"""The teacher of the soft-label protocol, and the full-data accuracy of the ranking scores: one
network trained on the real training set, trained once per (dataset, model, recipe) and cached.

A teacher is a one-member bank of ``fastdm pretrain`` (DANCE's recipe: SGD, step schedule,
colour/crop DSA, CutMix), so any bank serves as ``--teacher PATH`` (its first member's trained
weights). Without --teacher, fastdm looks for it beside the data (DATA_ROOT/fastdm-teachers/...;
for the embedded digits, ~/.cache/fastdm/teachers or $FASTDM_CACHE/teachers) and trains it there
when it is missing; the test accuracy in its bank.json is the full-data accuracy (when trained
on all images)."""
from __future__ import annotations

import logging
import os

import torch

from .embedders.bank import bank_file, bank_info, load_bank
from .errors import FastDMError
from .models import build_model

log = logging.getLogger("fastdm")

TEACHER_EPOCHS = 30


def cache_dir(data_root: str | None) -> str:
    """Beside the data when that folder is writable, else the user's cache (read-only shared
    dataset mounts are common)."""
    if data_root and os.path.isdir(data_root) and os.access(data_root, os.W_OK):
        return os.path.join(os.path.abspath(data_root), "fastdm-teachers")
    base = os.environ.get("FASTDM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastdm")
    return os.path.join(base, "teachers")


def default_path(data, data_root, model: str, epochs: int, images_per_class: int | None, seed: int) -> str:
    size = "x".join(map(str, data.image_size))
    subset = "all" if images_per_class is None else f"{images_per_class}pc"
    name = data.name
    if name == "tensors":  # the caller's own data: one teacher per content, not per name
        name += "-" + str(data.fingerprint).rpartition(":")[2][:12]
    return os.path.join(cache_dir(data_root), f"{name}-{size}-{model}-{epochs}ep-{subset}-s{seed}")


def load_teacher(path: str, data, model: str, device) -> torch.nn.Module:
    """The first member's trained weights of the bank in ``path``, as a model in eval mode."""
    bank = load_bank(path)
    want = (model, data.channels, data.num_classes, list(data.image_size))
    have = (bank["model"], bank["channels"], bank["num_classes"], list(bank["image_size"]))
    if want != have:
        raise FastDMError(f"the teacher in {path} is a {have[0]} for {have[1]} x {have[3][0]}x"
                          f"{have[3][1]} images of {have[2]} classes; this evaluation needs a "
                          f"{want[0]} for {want[1]} x {want[3][0]}x{want[3][1]} of {want[2]}")
    net = build_model(model, data.channels, data.num_classes, data.image_size, 0, device=device)
    with torch.no_grad():
        for name, t in net.named_parameters():
            t.copy_(bank["final"][name][0])
        for name, t in net.named_buffers():
            t.copy_(bank["final_buffers"][name][0])
    return net.eval().requires_grad_(False)


def get_teacher(data, data_root: str | None, model: str, device, path: str | None = None,
                epochs: int = TEACHER_EPOCHS, images_per_class: int | None = None, seed: int = 0,
                progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """(teacher, its bank.json): loaded from ``path`` (a bank that must exist), or from the
    cache, where it is trained the first time. The teacher's seed is its own (default 0), not
    the evaluation's: one teacher per dataset, model and recipe."""
    from .pretrain import STATE, PretrainConfig, pretrain

    if path is not None:  # the user's bank: load it, never train into it
        if not os.path.isfile(bank_file(path)):
            raise FastDMError(f"--teacher {path}: no bank there (bank.pt); make one with fastdm "
                              f"pretrain --models 1, or leave --teacher out to train one")
    else:
        path = default_path(data, data_root, model, epochs, images_per_class, seed)
        if not os.path.isfile(bank_file(path)):
            log.info("training the teacher (%s, %d epochs on %s of %s) into %s; later evaluations "
                     "reuse it", model, epochs, "all images" if images_per_class is None else
                     f"{images_per_class} images per class", data.name, path)
            cfg = PretrainConfig(dataset=data.name,
                                 data_root=os.path.abspath(data_root) if data_root else None,
                                 model=model, models=1, epochs=epochs,
                                 images_per_class=images_per_class, seed=seed, device=str(device))
            # an interrupted teacher continues; one left by other settings (another device,
            # say) starts again: the folder holds nothing else
            fresh = os.path.isfile(os.path.join(path, STATE)) and not _resumable(path, cfg)
            pretrain(cfg, path, progress=progress, overwrite=fresh, data=data)
    info = bank_info(path)
    info["path"] = path
    return load_teacher(path, data, model, device), info


def _resumable(path: str, cfg) -> bool:
    from .pretrain import STATE, state_record
    try:
        saved = torch.load(os.path.join(path, STATE), map_location="cpu", weights_only=True)["config"]
    except Exception:
        return False
    return saved == state_record(cfg)
