"""The embedder-source interface the engine calls."""
from __future__ import annotations

import torch


class EmbedderSource:
    """Puts iteration t's weights into the engine's embedder (``begin``), may add a term to
    each class's loss from the synthetic embedding (``class_term``), may offer a trained
    network for the calibration step (``expert``), and may update itself after the iteration
    (``end``). Its state beyond (seed, iteration) goes into checkpoints (``state_dict``)."""

    kind = ""
    shardable = True   # False: every process would need every class's real images
    expert: torch.nn.Module | None = None

    def __init__(self, cfg, net: torch.nn.Module, data, device):
        self.cfg, self.net, self.data, self.device = cfg, net, data, torch.device(device)

    def begin(self, iteration: int) -> None:
        raise NotImplementedError

    def class_term(self, embedding: torch.Tensor, classes: torch.Tensor, per: int) -> torch.Tensor | None:
        """An extra loss (a 0-dim tensor, summed over the chunk's classes) on the synthetic
        images' embedding [k * per, d] of ``classes`` [k]; None: no term."""
        return None

    def end(self, iteration: int) -> None:
        """After iteration ``iteration``'s updates."""

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass
