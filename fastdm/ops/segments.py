"""Class-contiguous segments of feature rows, and their fused per-class sums.

Features are class-contiguous: class c owns rows [offset_c, offset_c + count_c) of a [N, D]
matrix, and counts may differ between classes (and between the real and the synthetic side).
``segment_sum`` reduces them to float32 per-class sums [k, D] (accumulable over chunks with
``out=``, so the real stream never has to be held at once). The torch references (``padded``,
``class_sums``, ``class_means``) are the implementation on the torch backend. Deterministic on
every backend (partial sums per program are added by torch in a fixed order, no atomics).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..backend import interpreting
from ..errors import FastDMError
from .common import (FLOAT_DTYPES, choose_backend, on_device, pow2, programs_wanted, register,
                     rows_contiguous, tl, to_device, triton)

__all__ = ["segment_sum", "class_sums", "class_means", "padded", "layout", "check_features",
           "check_same_embedder"]


# -- torch path (the reference) ------------------------------------------------------------------
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


# -- Triton kernel -------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _segsum_kernel(x_ptr, off_ptr, cnt_ptr, out_ptr, K, D, sx, S,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # program (class c, column block, split s) sums row tiles s, s + S, ... of class c
        c, db, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = db * BLOCK_D + tl.arange(0, BLOCK_D)
        cm = cols < D
        off = tl.load(off_ptr + c)
        n = tl.load(cnt_ptr + c)
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for r0 in range(s * BLOCK_N, n, S * BLOCK_N):
            rows = r0 + tl.arange(0, BLOCK_N)
            m = (rows < n)[:, None] & cm[None, :]
            acc += tl.load(x_ptr + (off + rows)[:, None] * sx + cols[None, :], mask=m,
                           other=0.0).to(tl.float32)
        tl.store(out_ptr + (s * K + c) * D + cols, tl.sum(acc, 0), mask=cm)

    register("segment_sum", __name__)


def linear_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N) of the row-streaming kernels (sums, the linear MMD). Under the
    interpreter the column block stays small so that the tests' feature sizes span several
    blocks and a partial last one."""
    return pow2(d, 16, 64 if interpreting() else 256), 16


def _triton_segment_sum(x, offsets, counts, splits: int | None) -> torch.Tensor:
    with on_device(x):
        n, d = x.shape
        k = counts.numel()
        block_d, block_n = linear_blocks(d)
        nd = triton.cdiv(d, block_d)
        if splits is None:  # split each class's rows when classes x column blocks are too few
            per_class = triton.cdiv(max(1, n // max(k, 1)), block_n)
            splits = max(1, min(per_class, triton.cdiv(programs_wanted(x.device), max(1, k * nd))))
        out = torch.empty((splits, k, d), dtype=torch.float32, device=x.device)
        if k and d:
            _segsum_kernel[(k, nd, splits)](x, offsets, counts, out, k, d, x.stride(0), splits,
                                            BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
        return out[0] if splits == 1 else out.sum(0)


# -- layouts and checks --------------------------------------------------------------------------
class Layout(NamedTuple):
    counts: torch.Tensor          # int64 [k] on the features' device
    offsets: torch.Tensor         # int64 [k]: first row of each class
    host: torch.Tensor | None     # the counts on the CPU when known without a device sync


def layout(counts, rows: int | None, device, what: str, min_count: int = 1) -> Layout:
    """Check per-class row counts (at least ``min_count`` each, summing to ``rows`` unless that
    is None) and derive the class offsets."""
    if isinstance(counts, (list, tuple)):
        counts = torch.tensor(counts, dtype=torch.int64)
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.dtype.is_floating_point \
            or counts.dtype == torch.bool or counts.is_complex():
        raise FastDMError(f"{what} counts must be a 1-D integer tensor or list (rows per class), got "
                          f"{tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__}"
                          + (f" {counts.dtype}" if isinstance(counts, torch.Tensor) else ""))
    host = None
    if counts.device.type == "cpu" and not torch.compiler.is_compiling():
        host = counts.to(torch.int64)
        if host.numel() and int(host.min()) < min_count:
            raise FastDMError(f"every class needs at least {min_count} {what} row(s); "
                              f"counts hold {int(host.min())}")
        if rows is not None and int(host.sum()) != rows:
            raise FastDMError(f"{what} counts sum to {int(host.sum())}, but there are {rows} {what} rows "
                              f"(rows must be class-contiguous, counts[c] rows per class)")
    elif counts.numel():  # no host sync on the GPU: a device-side assert instead
        ok = counts.min() >= min_count
        torch._assert_async(ok if rows is None else ok & (counts.sum() == rows))
    dev = to_device(counts.to(torch.int64), device)
    return Layout(dev.contiguous(), (torch.cumsum(dev, 0) - dev).contiguous(), host)


def check_features(x, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise FastDMError(f"{what} features must be a 2-D [rows, D] tensor, got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise FastDMError(f"{what} features must be float32, bfloat16 or float16, got {x.dtype}")
    if x.shape[1] == 0:
        raise FastDMError(f"{what} features have no columns (shape {tuple(x.shape)})")


def check_same_embedder(real: torch.Tensor, syn: torch.Tensor, what: str) -> None:
    """The real side (``what``: features or sums) and the synthetic features come from one
    embedder, on one device."""
    if real.shape[1] != syn.shape[1]:
        raise FastDMError(f"{what} have {real.shape[1]} columns, synthetic features {syn.shape[1]}: "
                          f"they must come from the same embedder")
    if real.device != syn.device:
        raise FastDMError(f"{what} are on {real.device}, synthetic features on {syn.device}")


# -- the op --------------------------------------------------------------------------------------
@torch.library.custom_op("fastdm::segment_sum", mutates_args=())
def _segsum_op(x: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor, splits: int,
               backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_segment_sum(x, offsets, counts, splits or None)
    return class_sums(x.float(), counts)


@_segsum_op.register_fake
def _(x, offsets, counts, splits, backend):
    return x.new_empty((counts.shape[0], x.shape[1]), dtype=torch.float32)


def _segsum_setup(ctx, inputs, output):
    x, offsets, counts, splits, backend = inputs
    ctx.save_for_backward(counts)
    ctx.meta = (x.shape[0], x.dtype)


def _segsum_backward(ctx, grad):
    (counts,) = ctx.saved_tensors
    rows, dtype = ctx.meta
    gx = torch.repeat_interleave(grad, counts, dim=0, output_size=rows).to(dtype)
    return gx, None, None, None, None


_segsum_op.register_autograd(_segsum_backward, setup_context=_segsum_setup)


def segment_sum(features: torch.Tensor, counts, *, out: torch.Tensor | None = None,
                splits: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Per-class sums of class-contiguous rows -> float32 [k, D] (fp32 accumulation).

    features: [N, D] float32/bf16/fp16; counts: [k] rows per class (zeros allowed), summing
    to N. With ``out`` (float32 [k, D]) the sums are added into it and it is returned: the
    real side of a chunked run accumulates this way. ``splits`` (Triton only)
    splits each class's rows over that many programs (default: enough to fill the GPU).
    Deterministic on every backend.
    """
    check_features(features, "real")
    lay = layout(counts, features.shape[0], features.device, "real", min_count=0)
    backend = choose_backend("segment_sum", backend, features.device)
    if splits is not None and (not isinstance(splits, int) or splits < 1):
        raise FastDMError(f"splits must be a positive integer, got {splits!r}")
    if backend == "torch":
        sums = class_sums(features.float(), lay.counts)
    else:
        sums = _segsum_op(rows_contiguous(features), lay.offsets, lay.counts, splits or 0, backend)
    if out is None:
        return sums
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != tuple(sums.shape):
        raise FastDMError(f"out must be a float32 tensor of shape {tuple(sums.shape)}, got "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.device != sums.device:
        raise FastDMError(f"out is on {out.device}, the features on {sums.device}: put them on one device")
    return out.add_(sums)
