"""``--embedders bank:PATH``: DANCE's and NCFM's "middle" encoders.

A bank (``fastdm pretrain``) holds, per member, the initial and the trained weights of a
network trained on the real data. Each iteration draws a member j (of the first
``bank_members``) and a weight lambda ~ U[0, 1) from (seed, iteration) and writes
lambda * init_j + (1 - lambda) * trained_j into the embedder's parameters (its buffers stay as
they are: both codes interpolate ``parameters()`` only). The trained member j itself is the
``expert`` of the calibration step. Every member's weights stay on the run's device, so an
iteration's draw is a few in-place copies (no file reads, no recompilation).
"""
from __future__ import annotations

import json
import os

import torch

from .. import rng
from ..errors import FastDMError
from ..models import create_model
from .base import EmbedderSource

BANK_FORMAT = "fastdm-bank"


def bank_file(path: str) -> str:
    return os.path.join(path, "bank.pt")


def load_bank(path: str) -> dict:
    """A bank's contents (on the CPU), or a one-line error."""
    try:
        bank = torch.load(bank_file(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FastDMError(f"no bank in {path} (bank.pt); make one with fastdm pretrain") from None
    except Exception as e:
        raise FastDMError(f"{bank_file(path)} cannot be read ({type(e).__name__})") from None
    if not isinstance(bank, dict) or bank.get("format") != BANK_FORMAT:
        raise FastDMError(f"{bank_file(path)} is not a fastdm bank")
    return bank


def bank_info(path: str) -> dict:
    """bank.json: the bank's settings and its members' accuracies."""
    try:
        with open(os.path.join(path, "bank.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise FastDMError(f"{os.path.join(path, 'bank.json')} cannot be read "
                          f"({getattr(e, 'strerror', None) or type(e).__name__}); a bank made by "
                          f"fastdm pretrain has one beside bank.pt") from None


class BankSource(EmbedderSource):
    kind = "bank"

    def __init__(self, cfg, net, data, device, path: str):
        super().__init__(cfg, net, data, device)
        bank = load_bank(path)
        want = (cfg.model, data.channels, data.num_classes, list(data.image_size))
        have = (bank["model"], bank["channels"], bank["num_classes"], list(bank["image_size"]))
        if want != have:
            raise FastDMError(f"the bank in {path} holds {have[0]} networks for {have[1]} x "
                              f"{have[3][0]}x{have[3][1]} images of {have[2]} classes; this run "
                              f"needs {want[0]} for {want[1]} x {want[3][0]}x{want[3][1]} of "
                              f"{want[2]} (pretrain a bank with --dataset {data.name}"
                              f"{'' if want[0] == have[0] else f' --model {want[0]}'})")
        total = int(bank["members"])
        self.members = cfg.bank_members or total
        if self.members > total:
            raise FastDMError(f"--bank-members {self.members}: the bank in {path} has {total}")
        take = lambda d: {k: v[:self.members].to(self.device) for k, v in d.items()}  # noqa: E731
        self.init, self.final = take(bank["init"]), take(bank["final"])
        self.final_buffers = take(bank["final_buffers"])
        self.path = path
        if cfg.calib_weight > 0:
            with torch.device("meta"):
                expert = create_model(cfg.model, data.channels, data.num_classes, data.image_size)
            self.expert = expert.to_empty(device=self.device).requires_grad_(False).train()
        self.member = None

    def draw(self, iteration: int) -> tuple[int, torch.Tensor]:
        """Iteration ``iteration``'s member and interpolation weight."""
        seed = self.cfg.seed
        j = int(rng.randint(0, self.members, seed, rng.BANK, iteration, 0))
        lam = rng.uniform(seed, rng.BANK, iteration, 1, device=self.device)
        return j, lam

    def begin(self, iteration: int) -> None:
        j, lam = self.draw(iteration)
        self.member = j
        with torch.no_grad():
            for name, p in self.net.named_parameters():  # the codes' l * A + (1 - l) * B
                p.copy_(lam * self.init[name][j] + (1 - lam) * self.final[name][j])
            if self.expert is not None:
                for name, p in self.expert.named_parameters():
                    p.copy_(self.final[name][j])
                for name, b in self.expert.named_buffers():
                    b.copy_(self.final_buffers[name][j])
