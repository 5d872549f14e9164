"""NCFM's characteristic-function distance, fused (Wang et al., CVPR 2025; ``CFLossFunc``).

For class c and frequency t_m (rows of t [M, D]): the empirical characteristic function of its
features, Re_c(m) + i Im_c(m) = mean_n (cos + i sin)(t_m . x_n); with a = |Phi_real|,
b = |Phi_syn|,

    L_c = mean_m sqrt(alpha (a - b)^2 + beta max(2 (a b - Re_r Re_s - Im_r Im_s), 1e-12))

One kernel, program (class c, frequency block): the products x . t over D by blocks (a matrix
product in IEEE float32: the phases feed cos and sin, TF32's 1e-3 would show), cos and sin, the
class's sums, and -- for the synthetic side -- the distance on its frequencies, in one pass
over the class's rows. The real side keeps only its sums [k, 2, M] (they accumulate over
chunks, as DM's); the synthetic side's sums are kept for the backward. Backward (synthetic
side): d L / d (Re_s, Im_s) on [k, M] from the closed form, then one kernel recomputes the
phases and writes W[n, m] = -dRe sin + dIm cos (w.r.t. the sums), and d x = W t (a matrix product).
Deterministic (no atomics).
"""
from __future__ import annotations

import torch

from ..errors import FastDMError
from .common import FLOAT_DTYPES, choose_backend, on_device, register, tl, triton
from .segments import class_sums, layout

__all__ = ["cf_sums", "cf_distance", "torch_cf_sums", "torch_cf_distance", "distance_from_sums"]

PHASE_FLOOR = 1e-12  # NCFM's clamp of the phase term


# -- torch path (the reference) ------------------------------------------------------------------
def torch_cf_sums(x: torch.Tensor, counts: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-class sums of cos and sin of x t^T -> [k, 2, M] (float32; float64 stays)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    ph = x.to(dt) @ t.to(dt).T
    return torch.stack([class_sums(torch.cos(ph), counts), class_sums(torch.sin(ph), counts)], 1)


def distance_from_sums(real_sums, real_counts, syn_sums, syn_counts, alpha: float,
                       beta: float) -> torch.Tensor:
    """L_c from both sides' sums [k, 2, M] and counts [k] -> [k]."""
    r = real_sums / real_counts.to(real_sums.dtype)[:, None, None]
    s = syn_sums / syn_counts.to(syn_sums.dtype)[:, None, None]
    a = torch.sqrt(r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1])
    b = torch.sqrt(s[:, 0] * s[:, 0] + s[:, 1] * s[:, 1])
    amp = (a - b) * (a - b)
    pha = (2 * (a * b - s[:, 0] * r[:, 0] - s[:, 1] * r[:, 1])).clamp(min=PHASE_FLOOR)
    return torch.sqrt(alpha * amp + beta * pha).mean(1)


def torch_cf_distance(real_sums, real_counts, syn, syn_counts, t, alpha: float = 0.5,
                      beta: float = 0.5) -> torch.Tensor:
    syn_counts = torch.as_tensor(syn_counts, device=syn.device)
    real_counts = torch.as_tensor(real_counts, device=syn.device)
    return distance_from_sums(real_sums, real_counts, torch_cf_sums(syn, syn_counts, t),
                              syn_counts, alpha, beta)


# -- Triton kernels ------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _phases(x_ptr, t_ptr, rows, rmask, freqs, fmask, D, sx, st, BLOCK_N: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            km = ks < D
            xb = tl.load(x_ptr + rows[:, None] * sx + ks[None, :], mask=rmask[:, None] & km[None, :],
                         other=0.0).to(tl.float32)
            tb = tl.load(t_ptr + freqs[None, :] * st + ks[:, None], mask=km[:, None] & fmask[None, :],
                         other=0.0).to(tl.float32)
            acc += tl.dot(xb, tb, input_precision="ieee")
        return acc

    @triton.jit
    def _cf_kernel(x_ptr, t_ptr, off_ptr, cnt_ptr, sums_ptr, real_ptr, rcnt_ptr, part_ptr,
                   D, M, sx, st, NB, alpha, beta, DIST: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        c = tl.program_id(0)
        fb = tl.program_id(1)
        freqs = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        fmask = freqs < M
        off = tl.load(off_ptr + c)
        n = tl.load(cnt_ptr + c)
        re = tl.zeros((BLOCK_M,), tl.float32)
        im = tl.zeros((BLOCK_M,), tl.float32)
        for r0 in range(0, n, BLOCK_N):
            rr = r0 + tl.arange(0, BLOCK_N)
            rmask = rr < n
            ph = _phases(x_ptr, t_ptr, off + rr, rmask, freqs, fmask, D, sx, st, BLOCK_N,
                         BLOCK_M, BLOCK_K)
            keep = rmask[:, None] & fmask[None, :]
            re += tl.sum(tl.where(keep, tl.cos(ph), 0.0), 0)
            im += tl.sum(tl.where(keep, tl.sin(ph), 0.0), 0)
        tl.store(sums_ptr + c * 2 * M + freqs, re, mask=fmask)
        tl.store(sums_ptr + c * 2 * M + M + freqs, im, mask=fmask)
        if DIST:
            nr = tl.load(rcnt_ptr + c).to(tl.float32)
            rre = tl.load(real_ptr + c * 2 * M + freqs, mask=fmask, other=0.0) / nr
            rim = tl.load(real_ptr + c * 2 * M + M + freqs, mask=fmask, other=0.0) / nr
            sre = re / n.to(tl.float32)
            sim = im / n.to(tl.float32)
            a = tl.sqrt(rre * rre + rim * rim)
            b = tl.sqrt(sre * sre + sim * sim)
            amp = (a - b) * (a - b)
            pha = tl.maximum(2.0 * (a * b - sre * rre - sim * rim), 1e-12)
            term = tl.where(fmask, tl.sqrt(alpha * amp + beta * pha), 0.0)
            tl.store(part_ptr + c * NB + fb, tl.sum(term, 0))

    @triton.jit
    def _cf_weights_kernel(x_ptr, t_ptr, seg_ptr, cnt_ptr, gs_ptr, w_ptr, N, D, M, sx, st,
                           BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        # program (row block, frequency block): W = d L / d phase = -dRe sin + dIm cos, with
        # dRe, dIm the gradient w.r.t. the row's class's sums
        rb = tl.program_id(0)
        fb = tl.program_id(1)
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        freqs = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        fmask = freqs < M
        ph = _phases(x_ptr, t_ptr, rows, rmask, freqs, fmask, D, sx, st, BLOCK_N, BLOCK_M, BLOCK_K)
        c = tl.load(seg_ptr + rows, mask=rmask, other=0)
        keep = rmask[:, None] & fmask[None, :]
        gre = tl.load(gs_ptr + c[:, None] * 2 * M + freqs[None, :], mask=keep, other=0.0)
        gim = tl.load(gs_ptr + c[:, None] * 2 * M + M + freqs[None, :], mask=keep, other=0.0)
        w = gim * tl.cos(ph) - gre * tl.sin(ph)
        tl.store(w_ptr + rows[:, None] * M + freqs[None, :], w, mask=keep)

    register("characteristic", __name__)


def _blocks(d: int, m: int) -> tuple[int, int, int]:
    return 16, min(64, max(16, triton.next_power_of_2(m))), min(64, max(16, triton.next_power_of_2(d)))


def _triton_sums(x, t, offsets, counts, real=None, real_counts=None, alpha=0.5, beta=0.5):
    """Per-class sums [k, 2, M], and with ``real`` the per-class distance [k]."""
    with on_device(x):
        k, (m, d) = counts.numel(), t.shape
        bn, bm, bk = _blocks(d, m)
        nb = triton.cdiv(m, bm)
        sums = torch.empty((k, 2, m), dtype=torch.float32, device=x.device)
        part = torch.zeros((k, nb), dtype=torch.float32, device=x.device)
        dist = real is not None
        if k:
            _cf_kernel[(k, nb)](x, t, offsets, counts, sums, real if dist else sums,
                                real_counts if dist else counts, part, d, m, x.stride(0),
                                t.stride(0), nb, float(alpha), float(beta), DIST=dist,
                                BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, num_warps=4)
        return sums, part.sum(1) / m


@torch.library.custom_op("fastdm::cf_sums", mutates_args=())
def _sums_op(x: torch.Tensor, t: torch.Tensor, offsets: torch.Tensor,
             counts: torch.Tensor) -> torch.Tensor:
    return _triton_sums(x, t, offsets, counts)[0]


@_sums_op.register_fake
def _(x, t, offsets, counts):
    return x.new_empty((counts.shape[0], 2, t.shape[0]), dtype=torch.float32)


@torch.library.custom_op("fastdm::cf_distance", mutates_args=())
def _dist_op(real_sums: torch.Tensor, real_counts: torch.Tensor, syn: torch.Tensor,
             offsets: torch.Tensor, counts: torch.Tensor, t: torch.Tensor, alpha: float,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    sums, dist = _triton_sums(syn, t, offsets, counts, real_sums, real_counts, alpha, beta)
    return dist, sums


@_dist_op.register_fake
def _(real_sums, real_counts, syn, offsets, counts, t, alpha, beta):
    k = counts.shape[0]
    return syn.new_empty((k,), dtype=torch.float32), \
        syn.new_empty((k, 2, t.shape[0]), dtype=torch.float32)


@torch.library.custom_op("fastdm::cf_distance_backward", mutates_args=())
def _dist_backward_op(grad: torch.Tensor, real_sums: torch.Tensor, real_counts: torch.Tensor,
                      syn_sums: torch.Tensor, syn: torch.Tensor, offsets: torch.Tensor,
                      counts: torch.Tensor, t: torch.Tensor, alpha: float,
                      beta: float) -> torch.Tensor:
    # d L / d (syn sums), on [k, 2, M]: the closed form by torch.func (tiny next to the rest)
    _, vjp = torch.func.vjp(lambda s: distance_from_sums(real_sums, real_counts, s, counts,
                                                         alpha, beta), syn_sums)
    gs = vjp(grad.float())[0].contiguous()
    with on_device(syn):
        n, d = syn.shape
        m = t.shape[0]
        bn, bm, bk = _blocks(d, m)
        seg = torch.repeat_interleave(torch.arange(counts.numel(), device=syn.device), counts,
                                      output_size=n)
        w = torch.empty((n, m), dtype=torch.float32, device=syn.device)
        if n:
            _cf_weights_kernel[(triton.cdiv(n, bn), triton.cdiv(m, bm))](
                syn, t, seg, counts, gs, w, n, d, m, syn.stride(0), t.stride(0), BLOCK_N=bn,
                BLOCK_M=bm, BLOCK_K=bk, num_warps=4)
        return (w @ t.float()).to(syn.dtype)


@_dist_backward_op.register_fake
def _(grad, real_sums, real_counts, syn_sums, syn, offsets, counts, t, alpha, beta):
    return torch.empty_like(syn)


def _setup(ctx, inputs, output):
    real_sums, real_counts, syn, offsets, counts, t, alpha, beta = inputs
    ctx.save_for_backward(real_sums, real_counts, output[1], syn, offsets, counts, t)
    ctx.weights = (alpha, beta)


def _backward(ctx, grad, _gsums):
    real_sums, real_counts, syn_sums, syn, offsets, counts, t = ctx.saved_tensors
    gy = None
    if ctx.needs_input_grad[2]:
        gy = _dist_backward_op(grad, real_sums, real_counts, syn_sums, syn, offsets, counts, t,
                               *ctx.weights)
    return None, None, gy, None, None, None, None, None


_dist_op.register_autograd(_backward, setup_context=_setup)


# -- entry points --------------------------------------------------------------------------------
def _check(x, t, what):
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise FastDMError(f"{what} features must be a float [N, D] tensor")
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != x.shape[1]:
        raise FastDMError(f"frequencies must be [M, {x.shape[1]}] (one row per frequency), got "
                          f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")


def cf_sums(x: torch.Tensor, counts, t: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Per-class sums of cos(x t^T) and sin(x t^T): x class-contiguous [N, D], counts [k],
    t [M, D] -> float32 [k, 2, M] (sums, not means: they accumulate over chunks)."""
    _check(x, t, "the")
    lay = layout(counts, x.shape[0], x.device, "feature")
    backend = choose_backend("characteristic", backend, x.device)
    if backend == "torch" or x.dtype == torch.float64:
        return torch_cf_sums(x, lay.counts, t)
    return _sums_op(x.contiguous(), t.float().contiguous(), lay.offsets, lay.counts)


def cf_distance(real_sums: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts,
                t: torch.Tensor, alpha: float = 0.5, beta: float = 0.5, *,
                backend: str | None = None) -> torch.Tensor:
    """NCFM's L_c per class -> float32 [k], differentiable w.r.t. ``syn`` (class-contiguous
    [Ns, D]); real_sums [k, 2, M] from ``cf_sums`` with real_counts [k]; t [M, D]."""
    _check(syn, t, "synthetic")
    ys = layout(syn_counts, syn.shape[0], syn.device, "synthetic")
    rc = layout(real_counts, None, syn.device, "real")
    k = ys.counts.numel()
    if not isinstance(real_sums, torch.Tensor) or tuple(real_sums.shape) != (k, 2, t.shape[0]):
        raise FastDMError(f"real sums must be [{k}, 2, {t.shape[0]}] (classes, cos/sin, "
                          f"frequencies), got {tuple(getattr(real_sums, 'shape', ()))}")
    if rc.counts.numel() != k:
        raise FastDMError(f"{rc.counts.numel()} real counts for {k} classes")
    backend = choose_backend("characteristic", backend, syn.device)
    if backend == "torch" or syn.dtype == torch.float64:
        return torch_cf_distance(real_sums, rc.counts, syn, ys.counts, t, alpha, beta)
    if real_sums.requires_grad and torch.is_grad_enabled():
        raise FastDMError("the fused characteristic distance differentiates w.r.t. the synthetic "
                          "features only; detach the real sums")
    return _dist_op(real_sums.float().contiguous(), rc.counts, syn.contiguous(), ys.offsets,
                    ys.counts, t.float().contiguous(), float(alpha), float(beta))[0]
