"""Which real images each class contributes to an iteration: ``batch_real`` of them (all of a
smaller class), without replacement within the class, a function of (seed, iteration, class)
alone (fastdm.rng): the same whatever the chunking, the tier, the thread or the process. With
``first``, the class's first ``batch_real`` images in dataset order, every iteration (NCFM's
loader)."""
from __future__ import annotations

import torch

from .. import rng


class RealSampler:
    """Real-batch rows of a class-sorted set whose class c occupies rows
    [offsets[c], offsets[c] + counts[c]) (host int64 tensors)."""

    def __init__(self, counts: torch.Tensor, offsets: torch.Tensor, batch_real: int, seed: int,
                 first: bool = False):
        self.counts, self.offsets = counts.to(torch.int64), offsets.to(torch.int64)
        self.batch_real, self.seed, self.first = int(batch_real), int(seed), bool(first)
        # images per class each iteration, known on the host (sizes buffers without a sync)
        self.per_class = self.counts.clamp(max=self.batch_real)
        self._on = {torch.device("cpu"): (self.counts, self.offsets)}

    def counts_host(self, c0: int, c1: int) -> torch.Tensor:
        """Real images of classes [c0, c1) in every iteration's batch (CPU int64)."""
        return self.per_class[c0:c1]

    def indices(self, it: int, c0: int, c1: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of iteration ``it``'s real images of classes [c0, c1), class by class, and their
        counts, on ``device``."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = (self.counts.to(device), self.offsets.to(device))
        counts, offsets = self._on[device]
        if self.first:
            pos = torch.arange(self.batch_real, device=device).expand(c1 - c0, self.batch_real)
            valid = pos < counts[c0:c1, None]
        else:
            classes = torch.arange(c0, c1, device=device)
            pos, valid = rng.sample_without_replacement(counts[c0:c1], self.batch_real, self.seed,
                                                        rng.REAL, it, classes=classes,
                                                        max_count=int(self.counts[c0:c1].max()))
        # the valid positions are each row's first min(batch_real, count): pick them by index
        # arithmetic with the total known on the host (a boolean mask would wait for the GPU)
        n = valid.sum(1)
        total = int(self.per_class[c0:c1].sum())
        row = torch.repeat_interleave(torch.arange(c1 - c0, device=device), n, output_size=total)
        col = torch.arange(total, device=device) - (torch.cumsum(n, 0) - n)[row]
        return (offsets[c0:c1, None] + pos)[row, col], n
