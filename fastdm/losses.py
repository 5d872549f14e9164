"""DM's objective on the torch path: per-class mean-embedding (linear-kernel MMD) loss."""
from __future__ import annotations

import torch


def class_sums(features: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum features [N, D] over class-contiguous segments of lengths ``counts`` [k] -> [k, D].

    Sums (with counts) rather than means, so the real side can be accumulated across chunks.
    """
    k = counts.numel()
    seg = torch.repeat_interleave(torch.arange(k, device=features.device), counts.to(features.device))
    out = features.new_zeros(k, features.shape[1])
    return out.index_add_(0, seg, features)


def class_means(features: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    counts = counts.to(features.device)
    if counts.numel() and bool((counts == counts[0]).all()):  # equal counts: a plain reshape
        return features.view(counts.numel(), int(counts[0]), -1).mean(1)
    return class_sums(features, counts) / counts.to(features.dtype)[:, None]


def mean_embedding_loss(real_mean: torch.Tensor, syn_features: torch.Tensor,
                        syn_counts: torch.Tensor) -> torch.Tensor:
    """Per-class ||mean_real_c - mean_syn_c||^2 -> [k] (DM sums these over classes)."""
    return ((real_mean - class_means(syn_features, syn_counts)) ** 2).sum(1)
