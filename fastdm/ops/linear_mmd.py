"""DM's loss, fused: per class ||mean_real_c - mean_syn_c||^2 (the linear-kernel MMD).

The real side arrives as per-class sums (``fastdm.ops.segments.segment_sum``: sums, not means,
so they accumulate over chunks); one kernel forms the synthetic means, the difference and the
squared norm; its backward recomputes the synthetic means and writes
2 g_c (mean_syn_c - mean_real_c) / n_syn_c to the class's rows. Nothing of size [N, D] is
materialised besides the gradient. Deterministic (no atomics).
"""
from __future__ import annotations

import torch

from ..errors import FastDMError
from .common import (FLOAT_DTYPES, choose_backend, no_real_grad, on_device, register,
                     rows_contiguous, tl, triton, wide)
from .segments import check_features, check_same_embedder, class_means, layout, linear_blocks

__all__ = ["linear_mmd", "torch_linear_mmd"]


# -- torch path (the reference) ------------------------------------------------------------------
def torch_linear_mmd(real_sums, real_counts, syn, syn_counts) -> torch.Tensor:
    """Per-class ||real_sums_c / real_counts_c - mean_syn_c||^2 -> float32 [k]."""
    real_sums, syn = wide(real_sums), wide(syn)
    real_counts = torch.as_tensor(real_counts, device=real_sums.device)
    real_mean = real_sums / real_counts.to(real_sums.dtype)[:, None]
    return ((real_mean - class_means(syn, torch.as_tensor(syn_counts, device=syn.device))) ** 2).sum(1)


# -- Triton kernels ------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _syn_mean(y_ptr, off, n, cols, cm, sy, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for r0 in range(0, n, BLOCK_N):
            rows = r0 + tl.arange(0, BLOCK_N)
            m = (rows < n)[:, None] & cm[None, :]
            acc += tl.load(y_ptr + (off + rows)[:, None] * sy + cols[None, :], mask=m,
                           other=0.0).to(tl.float32)
        return tl.sum(acc, 0) / n.to(tl.float32)

    @triton.jit
    def _mean_diff(rs_ptr, rc_ptr, y_ptr, off, n, c, cols, cm, srs, sy,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # mean_syn_c - real_sums_c / real_counts_c on the columns (0 outside them)
        ys = _syn_mean(y_ptr, off, n, cols, cm, sy, BLOCK_N, BLOCK_D)
        nr = tl.load(rc_ptr + c).to(tl.float32)
        rmean = tl.load(rs_ptr + c * srs + cols, mask=cm, other=0.0).to(tl.float32) / nr
        return tl.where(cm, ys - rmean, 0.0)

    @triton.jit
    def _linear_fwd_kernel(rs_ptr, rc_ptr, y_ptr, off_ptr, cnt_ptr, part_ptr, D, srs, sy, ND,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # program (class c, column block): mean_syn - mean_real on its columns, squared, summed
        c, db = tl.program_id(0), tl.program_id(1)
        cols = db * BLOCK_D + tl.arange(0, BLOCK_D)
        cm = cols < D
        diff = _mean_diff(rs_ptr, rc_ptr, y_ptr, tl.load(off_ptr + c), tl.load(cnt_ptr + c), c,
                          cols, cm, srs, sy, BLOCK_N, BLOCK_D)
        tl.store(part_ptr + c * ND + db, tl.sum(diff * diff, 0))

    @triton.jit
    def _linear_bwd_kernel(g_ptr, rs_ptr, rc_ptr, y_ptr, off_ptr, cnt_ptr, dy_ptr, D, srs, sy,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # d loss_c / d y_i = 2 (mean_syn_c - mean_real_c) / n_c for every row i of class c
        c, db = tl.program_id(0), tl.program_id(1)
        cols = db * BLOCK_D + tl.arange(0, BLOCK_D)
        cm = cols < D
        off = tl.load(off_ptr + c)
        n = tl.load(cnt_ptr + c)
        diff = _mean_diff(rs_ptr, rc_ptr, y_ptr, off, n, c, cols, cm, srs, sy, BLOCK_N, BLOCK_D)
        gd = diff * (2.0 * tl.load(g_ptr + c) / n.to(tl.float32))
        val = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + gd[None, :]
        for r0 in range(0, n, BLOCK_N):
            rows = r0 + tl.arange(0, BLOCK_N)
            m = (rows < n)[:, None] & cm[None, :]
            tl.store(dy_ptr + (off + rows)[:, None] * D + cols[None, :],
                     val.to(dy_ptr.dtype.element_ty), mask=m)

    register("linear_mmd", __name__)


def _triton_linear(real_sums, real_counts, y, offsets, counts) -> torch.Tensor:
    with on_device(y):
        k, d = counts.numel(), y.shape[1]
        block_d, block_n = linear_blocks(d)
        nd = triton.cdiv(d, block_d)
        part = torch.zeros((k, nd), dtype=torch.float32, device=y.device)
        if k:
            _linear_fwd_kernel[(k, nd)](real_sums, real_counts, y, offsets, counts, part, d,
                                        real_sums.stride(0), y.stride(0), nd, BLOCK_N=block_n,
                                        BLOCK_D=block_d, num_warps=4)
        return part[:, 0] if nd == 1 else part.sum(1)


def _triton_linear_backward(grad, real_sums, real_counts, y, offsets, counts) -> torch.Tensor:
    with on_device(y):
        k, d = counts.numel(), y.shape[1]
        block_d, block_n = linear_blocks(d)
        dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        if k:
            _linear_bwd_kernel[(k, triton.cdiv(d, block_d))](
                grad.float().contiguous(), real_sums, real_counts, y, offsets, counts, dy, d,
                real_sums.stride(0), y.stride(0), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
        return dy


# -- the op --------------------------------------------------------------------------------------
@torch.library.custom_op("fastdm::linear_mmd", mutates_args=())
def _linear_op(real_sums: torch.Tensor, real_counts: torch.Tensor, syn: torch.Tensor,
               offsets: torch.Tensor, counts: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_linear(real_sums, real_counts, syn, offsets, counts)
    return torch_linear_mmd(real_sums, real_counts, syn, counts)


@_linear_op.register_fake
def _(real_sums, real_counts, syn, offsets, counts, backend):
    return syn.new_empty((counts.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastdm::linear_mmd_backward", mutates_args=())
def _linear_backward_op(grad: torch.Tensor, real_sums: torch.Tensor, real_counts: torch.Tensor,
                        syn: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor,
                        backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_linear_backward(grad, real_sums, real_counts, syn, offsets, counts)
    # torch.func: autograd keys are excluded inside a custom op's implementation
    _, vjp = torch.func.vjp(lambda y: torch_linear_mmd(real_sums, real_counts, y, counts), syn)
    return vjp(grad)[0].contiguous()


@_linear_backward_op.register_fake
def _(grad, real_sums, real_counts, syn, offsets, counts, backend):
    return torch.empty_like(syn, memory_format=torch.contiguous_format)


def _linear_setup(ctx, inputs, output):
    real_sums, real_counts, syn, offsets, counts, backend = inputs
    ctx.save_for_backward(real_sums, real_counts, syn, offsets, counts)
    ctx.backend = backend


def _linear_backward(ctx, grad):
    real_sums, real_counts, syn, offsets, counts = ctx.saved_tensors
    gy = None
    if ctx.needs_input_grad[2]:
        gy = _linear_backward_op(grad, real_sums, real_counts, syn, offsets, counts, ctx.backend)
    return None, None, gy, None, None, None


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def linear_mmd(real_sums: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts, *,
               backend: str | None = None) -> torch.Tensor:
    """DM's loss per class: ||real_sums_c / real_counts_c - mean_syn_c||^2 -> float32 [k].

    real_sums: [k, D] per-class sums of real features (``segment_sum``: sums,
    not means, so they accumulate over chunks); real_counts: [k] rows summed per class;
    syn: class-contiguous [Ns, D] float32/bf16/fp16 features; syn_counts: [k] rows per class.
    Differentiable w.r.t. ``syn`` (the gradient has syn's dtype; accumulation is fp32).
    """
    check_features(syn, "synthetic")
    if not isinstance(real_sums, torch.Tensor) or real_sums.dim() != 2 or real_sums.dtype not in FLOAT_DTYPES:
        raise FastDMError("real_sums must be a float [k, D] tensor of per-class sums")
    k = real_sums.shape[0]
    check_same_embedder(real_sums, syn, "real sums")
    ys = layout(syn_counts, syn.shape[0], syn.device, "synthetic")
    rc = layout(real_counts, None, syn.device, "real")
    if ys.counts.numel() != k or rc.counts.numel() != k:
        raise FastDMError(f"{k} classes of real sums, {rc.counts.numel()} real counts and "
                          f"{ys.counts.numel()} synthetic counts: they must agree")
    backend = choose_backend("linear_mmd", backend, syn.device)
    if backend == "torch":
        return torch_linear_mmd(real_sums, rc.counts, syn, ys.counts)
    no_real_grad(real_sums, backend)
    return _linear_op(rows_contiguous(real_sums.detach()), rc.counts, rows_contiguous(syn),
                      ys.offsets, ys.counts, backend)
