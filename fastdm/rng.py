"""Counter-based random numbers: every draw is a pure function of integer words.

DM draws network weights, augmentation parameters and real batches every iteration. The
reference reseeds the global RNG for each draw; fastdm instead hashes (run seed, stream,
iteration, class, slot, ...) into 32-bit values. That gives

* results that do not depend on chunk size, class order or sharding (a class's draws are a
  function of its own words only),
* identical draws on CPU and CUDA (integer ops are exact everywhere), and
* vectorised draws for thousands of classes at once, with no generator objects and no
  touch of torch's global RNG.

Arithmetic stays in int64 tensors holding uint32 values; every multiplier is below 2**31 so
products never overflow int64. The mixer is the well-known 32-bit avalanche
``x ^= x >> 16; x *= 0x45d9f3b`` (twice), applied after folding in each word.
"""
from __future__ import annotations

import math
from typing import Union

import torch

Word = Union[int, torch.Tensor]

_MASK = 0xFFFFFFFF
_MUL = 0x045D9F3B
_GOLDEN = 0x9E3779B9

# Stream identifiers: one per kind of draw, so that different uses never share values.
NET = 1          # embedder weights, per iteration
AUG = 2          # DSA parameters, per (iteration, class)
REAL = 3         # real batch sampling, per (iteration, class, image)
INIT = 4         # real-image initialisation of the synthetic set, per (class, image)
NOISE = 5        # noise initialisation of the synthetic set
EVAL_INIT = 6    # evaluation model weights, per model
EVAL_AUG = 7     # evaluation DSA, per (model, step, sample)
EVAL_ORDER = 8   # evaluation shuffling, per (model, epoch, sample)
SUBSET = 9       # random-real-subset baseline, per (model, class, image)
FREQ = 10        # characteristic-function frequencies (ncfm), per iteration
BANK = 11        # bank member and interpolation weight, per iteration
QUEUE_INIT = 12  # a queue network's initial weights, per network
QUEUE_PICK = 13  # the queue network an iteration matches with, per iteration
QUEUE_TRAIN = 14 # the queue networks an iteration trains and their real batches
CALIB = 15       # the calibration step's DSA, per (iteration, class)
PRETRAIN_INIT = 16   # a bank member's initial weights, per member
PRETRAIN_ORDER = 17  # a bank member's batch order, per (member, epoch)
PRETRAIN_AUG = 18    # a bank member's augmentation, per (member, step)
PRETRAIN_MIX = 19    # a bank member's CutMix draws, per (member, step)
EVAL_MIX = 20        # evaluation CutMix draws (protocols with CutMix), per (model, step)


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * _MUL) & _MASK
    h = h ^ (h >> 16)
    h = (h * _MUL) & _MASK
    return h ^ (h >> 16)


def _as_words(w: Word, device) -> list:
    """Split a non-negative integer (or int tensor) into uint32 words: always the low and high
    halves of 64 bits, so an int and a tensor holding the same value hash alike."""
    if isinstance(w, torch.Tensor):
        if w.dtype.is_floating_point or w.dtype == torch.bool:
            raise TypeError("rng words must be integers")
        w = w.to(device=device, dtype=torch.int64)
        return [w & _MASK, (w >> 32) & _MASK]
    w = int(w)
    if w < 0:
        raise ValueError(f"rng words must be non-negative, got {w}")
    words = [w & _MASK, (w >> 32) & _MASK]
    w >>= 64
    while w:
        words.append(w & _MASK)
        w >>= 32
    return words


def hash32(*words: Word, device=None) -> torch.Tensor:
    """Hash integer words (ints or broadcastable int tensors) to uint32 values in int64."""
    if device is None:
        device = next((w.device for w in words if isinstance(w, torch.Tensor)), torch.device("cpu"))
    h = torch.tensor(0x2545F491, dtype=torch.int64, device=device)
    for w in words:
        for part in _as_words(w, device):
            h = _mix(((h ^ part) + _GOLDEN) & _MASK)
    return h


def uniform(*words: Word, device=None, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) with 24 random bits (exact in float32), one value per broadcast element."""
    return hash_to_uniform(hash32(*words, device=device), dtype)


def randint(low: int, high: int, *words: Word, device=None) -> torch.Tensor:
    """Integers in [low, high) (int64). Bias is below 2**-32 * (high - low)."""
    return hash_to_int(hash32(*words, device=device), low, high)


def hash_to_uniform(h: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uniform()'s value from hash32 values: callers that need many draws hash them in one
    broadcast call, then convert each."""
    return (h >> 8).to(dtype) * (1.0 / (1 << 24))


def hash_to_int(h: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """randint()'s value from hash32 values."""
    n = high - low
    if n <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    if n >= 1 << 31:
        raise ValueError("range too large for the 32-bit generator")
    return ((h * n) >> 32) + low


def normal(*words: Word, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws (Box-Muller on two independent uniforms)."""
    h1 = hash32(*words, 0, device=device)
    h2 = hash32(*words, 1, device=device)
    u1 = ((h1 >> 8).to(torch.float64) + 1.0) * (1.0 / (1 << 24))  # (0, 1]: log is finite
    u2 = (h2 >> 8).to(torch.float64) * (1.0 / (1 << 24))
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(dtype)


def arange_like(n: int, device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=device)


def sample_without_replacement(counts: torch.Tensor, k: int, *words: Word, classes: torch.Tensor,
                               max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class row, choose min(k, count) distinct positions in [0, count), in random order.

    ``counts`` and ``classes`` are [G] int64; the choice for class c depends only on
    (words, c, count_c). Returns ``(pos [G, kk], valid [G, kk])`` with kk = min(k, max count);
    positions past a class's count are marked invalid. Keys are made unique by appending
    the position, so ties cannot make the result depend on the sort implementation.
    The valid positions of a row are its first min(k, count).
    """
    device = counts.device
    if max_count is None:  # ``max_count`` (counts.max(), known on the host) saves a device sync
        max_count = int(counts.max()) if counts.numel() else 0
    kk = min(k, max_count)
    if kk == 0:
        empty = torch.zeros(counts.numel(), 0, dtype=torch.int64, device=device)
        return empty, empty.bool()
    pos = arange_like(max_count, device)
    h = hash32(*words, classes[:, None], pos[None, :], device=device)
    bits = max(1, (max_count - 1).bit_length())
    if bits > 29:
        raise ValueError("a class with more than 2**29 images is not supported")
    keys = (h << bits) | pos[None, :]
    keys = torch.where(pos[None, :] < counts[:, None], keys, torch.full_like(keys, 1 << 62))
    chosen = torch.topk(keys, kk, dim=1, largest=False, sorted=True).values
    out = chosen & ((1 << bits) - 1)
    valid = torch.arange(kk, device=device)[None, :] < counts[:, None]
    return out, valid


def permutation(n: int, *words: Word, device=None) -> torch.Tensor:
    """A random permutation of range(n) (unique keys, so no ties)."""
    pos, _ = sample_without_replacement(torch.tensor([n], device=device), n, *words,
                                        classes=torch.zeros(1, dtype=torch.int64, device=device))
    return pos[0]
