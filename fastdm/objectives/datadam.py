"""``datadam``: DataDAM's attention matching (Sajedi et al., ICCV 2023), as its released code
computes it (``main_DataDAM.py``, ``utils.get_attention``; commit 0f6ea09):

    loss = sum_l w_att * sum_c || mean_real_c A_l - mean_syn_c A_l ||^2
         + w_emb * sum_c || mean_real_c f - mean_syn_c f ||^2

A_l: the attention map of each image at the l-th activation of the embedder's feature blocks
(post-activation, before pooling), every block but the last: sum over channels of |a|^p,
flattened and L2-normalised per image. The code uses p = 1 (its paper says 4); w_att = 100 and
w_emb = 100 * 0.01 = 1. f: the embedding (after the last pooling), as DM's.

The maps come from one fused pass over the activations (``fastdm.ops.attention``); their
per-class means and distances go through DM's segment ops, so the real side is reduced to
per-class sums right after the embedder, as for ``dm``.
"""
from __future__ import annotations

from torch import nn

from ..errors import FastDMError
from ..ops.attention import attention_map, normalize_map
from ..ops.linear_mmd import linear_mmd
from ..ops.segments import segment_sum
from ..settings import Setting, positive
from .base import Objective, register

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU)


@register
class AttentionMatching(Objective):
    name = "datadam"
    nonnegative = False  # set by taps(): are the tapped outputs ReLU outputs
    title = "DataDAM loss"
    ops = ("segment_sum", "linear_mmd", "attention")
    settings = (
        Setting("attention_power", float, None, "exponent p of the attention maps sum_c |a|^p",
                "method", check=positive("--attention-power"),
                auto="1 (DataDAM's code; its paper: 4)", objective="datadam"),
        Setting("attention_weight", float, None, "weight of each layer's attention term",
                "method", check=positive("--attention-weight"), auto="100", objective="datadam"),
        Setting("embedding_weight", float, None, "weight of the embedding (mean) term", "method",
                check=positive("--embedding-weight"), auto="1 (100 x 0.01)", objective="datadam"),
    )

    defaults = {"attention_power": 1.0, "attention_weight": 100.0, "embedding_weight": 1.0}

    def taps(self, net):
        features = getattr(net, "features", None)
        if not isinstance(features, nn.Sequential):
            raise FastDMError(f"--objective datadam needs a model whose feature blocks form one "
                              f"Sequential (the ConvNet family); {type(net).__name__} has none")
        acts = [i for i, m in enumerate(features) if isinstance(m, ACTIVATIONS)]
        if len(acts) < 2:
            raise FastDMError("--objective datadam matches every activation but the last: the "
                              "model needs at least two feature blocks")
        # ReLU outputs are >= 0: the maps can skip |a| (the gradient through the ReLU agrees)
        self.nonnegative = all(type(features[i]) is nn.ReLU for i in acts[:-1])
        return tuple(acts[:-1])

    def tap(self, a):
        """Each tapped activation becomes its attention maps inside the embedder."""
        return attention_map(a, self.config.attention_power, nonnegative=self.nonnegative,
                             backend=self.backends["attention"])

    def tap_sums(self):
        """The maps from channel sums: the real branch's native blocks write sum_c relu(y)^p
        (ReLU taps only, where |a| = a)."""
        return (self.config.attention_power, normalize_map) if self.nonnegative else None

    def reduce_real(self, features, counts):
        emb, *maps = features
        b = self.backends
        sums = [segment_sum(m, counts.device, backend=b["segment_sum"]) for m in maps]
        return (segment_sum(emb, counts.device, backend=b["segment_sum"]), *sums)

    def loss(self, real, real_counts, syn, syn_counts, value=True):
        emb, *maps = syn
        b, cfg = self.backends, self.config
        total = cfg.embedding_weight * linear_mmd(real[0], real_counts.device, emb,
                                                  syn_counts.device, backend=b["linear_mmd"])
        for sums, m in zip(real[1:], maps):
            total = total + cfg.attention_weight * linear_mmd(
                sums, real_counts.device, m, syn_counts.device, backend=b["linear_mmd"])
        return total
