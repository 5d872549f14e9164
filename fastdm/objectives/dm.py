"""``dm``: Distribution Matching's loss (Zhao & Bilen, WACV 2023), the squared distance between
each class's mean real and mean synthetic embedding (the linear-kernel MMD).

The real side is reduced to per-class float32 sums right after the embedder (nothing of the
real features outlives the chunk); the loss forms the synthetic means and the distance in one
fused op (``fastdm.ops.linear_mmd``; torch reference ``torch_linear_mmd``)."""
from __future__ import annotations

from ..ops.linear_mmd import linear_mmd
from ..ops.segments import segment_sum
from .base import Objective, register


@register
class MeanEmbedding(Objective):
    name = "dm"
    title = "DM loss"
    ops = ("segment_sum", "linear_mmd")

    def reduce_real(self, features, counts):
        return (segment_sum(features, counts.device, backend=self.backends["segment_sum"]),)

    def loss(self, real, real_counts, syn, syn_counts, value=True):
        (sums,) = real
        return linear_mmd(sums, real_counts.device, syn, syn_counts.device,
                          backend=self.backends["linear_mmd"])
