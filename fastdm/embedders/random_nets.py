"""``--embedders random``: DM's fresh embedder every iteration, its weights drawn in place from
(seed, iteration)."""
from __future__ import annotations

from .. import rng
from ..models import init_parameters_
from .base import EmbedderSource


class RandomSource(EmbedderSource):
    kind = "random"

    def begin(self, iteration: int) -> None:
        init_parameters_(self.net, self.cfg.seed, rng.NET, iteration)
