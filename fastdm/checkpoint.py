"""The state of a condensation run and its checkpoints (written atomically)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from . import __version__
from .config import CondenseConfig
from .errors import FastDMError
from .io import atomic_torch_save

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


def checkpoint_path(out: str) -> str:
    return os.path.join(out, "checkpoint.pt")


def save_checkpoint(out: str, cfg: CondenseConfig, state: RunState) -> None:
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "version": 1, "fastdm": __version__, "config": cfg.to_dict(),
        "iteration": state.iteration, "images": state.images.detach().cpu(),
        "momentum": None if state.momentum is None else state.momentum.cpu(),
        "losses": list(state.losses), "elapsed": state.elapsed,
    }, checkpoint_path(out))


def _read(out: str) -> dict:
    path = checkpoint_path(out)
    if not os.path.isfile(path):
        raise FastDMError(f"--resume: no checkpoint at {path}; run without --resume to start")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FastDMError(f"--resume: {path} cannot be read ({type(e).__name__}); remove it to "
                          f"start over, or use another --out") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise FastDMError(f"--resume: {path} is not a fastdm checkpoint")
    return ck


def saved_config(out: str) -> dict:
    """The settings recorded in OUT's checkpoint."""
    return dict(_read(out)["config"])


def load_checkpoint(out: str, cfg: CondenseConfig, device) -> RunState:
    """The saved state, after checking that every setting that shapes the result agrees."""
    ck = _read(out)
    saved = CondenseConfig.from_dict(ck["config"]).to_dict()
    now = cfg.to_dict()
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in CondenseConfig.RESULT_KEYS
            if saved.get(k) != now.get(k)]
    if diff:
        raise FastDMError(f"--resume: the settings differ from the checkpoint's ({'; '.join(diff)}); "
                          f"use the original settings or another --out")
    mom = ck["momentum"]
    return RunState(images=ck["images"].to(device), momentum=None if mom is None else mom.to(device),
                    iteration=int(ck["iteration"]), losses=list(ck["losses"]), elapsed=float(ck["elapsed"]))
