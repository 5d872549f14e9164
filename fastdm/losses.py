"""DM's objective on the torch path: per-class mean-embedding (linear-kernel MMD) loss."""
from __future__ import annotations

import torch


def padded(features: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of class-contiguous segments of lengths ``counts`` [k] in a zero-padded [k, max, D]
    block, with its row mask [k, max] (features' dtype). Equal counts: a plain view."""
    counts = counts.to(features.device)
    k, d = counts.numel(), features.shape[1]
    if k and bool((counts == counts[0]).all()):  # the usual case: a plain reshape
        m = int(counts[0])
        return features.view(k, m, d), features.new_ones(k, m)
    # Unequal counts: scatter rows into the block. Unlike index_add_ (float atomics on CUDA)
    # summing the block is deterministic on every device.
    seg = torch.repeat_interleave(torch.arange(k, device=features.device), counts)
    pos = torch.arange(features.shape[0], device=features.device) - (torch.cumsum(counts, 0) - counts)[seg]
    block = features.new_zeros(k, int(counts.max()) if k else 0, d).index_put((seg, pos), features)
    mask = features.new_zeros(k, block.shape[1])
    mask[seg, pos] = 1
    return block, mask


def class_sums(features: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum features [N, D] over class-contiguous segments of lengths ``counts`` [k] -> [k, D].

    Sums (with counts) rather than means, so the real side can be accumulated across chunks.
    """
    return padded(features, counts)[0].sum(1)


def class_means(features: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    counts = counts.to(features.device)
    if counts.numel() and bool((counts == counts[0]).all()):  # equal counts: a plain reshape
        return features.view(counts.numel(), int(counts[0]), -1).mean(1)
    return class_sums(features, counts) / counts.to(features.dtype)[:, None]


def mean_embedding_loss(real_mean: torch.Tensor, syn_features: torch.Tensor,
                        syn_counts: torch.Tensor) -> torch.Tensor:
    """Per-class ||mean_real_c - mean_syn_c||^2 -> [k] (DM sums these over classes)."""
    return ((real_mean - class_means(syn_features, syn_counts)) ** 2).sum(1)
