"""A multi-kernel Gaussian MMD between each class's real and synthetic features, fused.

Per class the biased MMD^2 estimate
    XX / nr^2 + YY / ns^2 - 2 XY / (nr ns),  XY = sum_ij k(r_i, s_j),
with k(a, b) = sum over sigma of exp(-||a - b||^2 / (2 sigma^2)). One kernel tiles the pairwise
distances with tl.dot (||a||^2 + ||b||^2 - 2 a.b, fp32), fuses the exp and the sums, and keeps
w = sum_sigma k_sigma / sigma^2 per pair (n_real x n_syn per class: small next to the features)
for the backward, which is two more tl.dot reductions per synthetic tile. XX does not depend on
the synthetic set: it is computed only when ``real_term=True`` (the loss value is wanted).
Deterministic (partial results per program are summed by torch in a fixed order).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..checks import positive_floats
from ..errors import FastDMError
from .common import (choose_backend, no_real_grad, on_device, pow2, register, rows_contiguous, tl,
                     to_device, triton, wide)
from .segments import check_features, check_same_embedder, layout, padded, segment_sum

__all__ = ["gaussian_mmd", "torch_gaussian_mmd", "relative_bandwidths", "coefficients"]


# -- torch path (the reference) ------------------------------------------------------------------
def coefficients(bandwidths) -> torch.Tensor:
    """1 / (2 sigma^2) for each bandwidth: a list (shared by all classes) -> [NB] float64, or a
    per-class tensor [k, NB] -> same shape."""
    b = torch.as_tensor(bandwidths, dtype=torch.float64 if not isinstance(bandwidths, torch.Tensor)
                        else bandwidths.dtype)
    return 1.0 / (2.0 * b * b)


def relative_bandwidths(real: torch.Tensor, real_counts, multiples: Sequence[float], *,
                        backend: str | None = None) -> torch.Tensor:
    """Per-class bandwidths [k, NB]: ``multiples`` times the class's feature scale
    s_c = sqrt(mean over pairs (i, j) of ||r_i - r_j||^2) = sqrt(2 mean_i ||r_i - mean_c||^2),
    from segment sums (no pairs; two passes, so a large common offset does not cancel).
    Feature distances differ by orders of magnitude between embedders and datasets; in these
    units one setting fits them all. A class without spread (one row, or identical rows)
    gets its feature norm (at least 1) as the scale."""
    r = real.detach()
    check_features(r, "real")
    mult = positive_floats(multiples, "bandwidth multiples")
    lay = layout(real_counts, r.shape[0], r.device, "real")
    n = lay.counts.to(torch.float32)
    mean = segment_sum(r, lay.counts, backend=backend) / n[:, None]
    seg = torch.repeat_interleave(torch.arange(n.numel(), device=r.device), lay.counts,
                                  output_size=r.shape[0])
    dev = torch.linalg.vector_norm(r - mean[seg], dim=1, dtype=torch.float32) ** 2
    spread = 2 * segment_sum(dev[:, None], lay.counts, backend=backend)[:, 0] / n
    norm_sq = (mean * mean).sum(1)
    scale = torch.where(spread > 1e-12 * (norm_sq + 1), spread, norm_sq.clamp_min(1.0)).sqrt()
    return scale[:, None] * to_device(torch.tensor(mult, dtype=torch.float32), r.device)


def _kernel_sums(a, am, b, bm, coefs, self_pairs: bool) -> torch.Tensor:
    """sum over valid pairs (i, j) of sum_sigma exp(-||a_i - b_j||^2 coef) per class -> [k];
    coefs: [k, NB]."""
    d2 = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
    d2 = d2.clamp_min(0)  # the expansion can dip below 0 by rounding
    if self_pairs:  # a point's distance to itself is 0, not a rounding residue
        eye = torch.eye(d2.shape[1], dtype=torch.bool, device=d2.device)
        d2 = d2.masked_fill(eye, 0)
    kv = sum(torch.exp(-d2 * coefs[:, i, None, None]) for i in range(coefs.shape[1]))
    return (kv * am[:, :, None] * bm[:, None, :]).sum((1, 2))


def torch_gaussian_mmd(real, real_counts, syn, syn_counts, bandwidths, real_term: bool = True):
    """Per-class biased multi-kernel MMD^2 -> float32 [k]; without the real-real term when
    ``real_term`` is False (it does not depend on the synthetic set). bandwidths: a list, or
    per-class [k, NB]."""
    return _torch_gaussian(real, real_counts, syn, syn_counts, coefficients(bandwidths), real_term)


def _torch_gaussian(real, real_counts, syn, syn_counts, coefs, real_term: bool):
    real_counts = torch.as_tensor(real_counts, device=real.device)
    syn_counts = torch.as_tensor(syn_counts, device=syn.device)
    k = real_counts.numel()
    coefs = coefs.to(device=syn.device, dtype=wide(syn).dtype)
    coefs = coefs.expand(k, coefs.shape[-1]) if coefs.dim() == 1 else coefs
    r, rm = padded(wide(real), real_counts)
    s, sm = padded(wide(syn), syn_counts)
    # distances are shift-invariant: shifting by a row of the class (its first synthetic row,
    # as the kernels do) keeps the expansion below from cancelling the features' common offset
    ctr = s[:, :1].detach()
    r, s = r - ctr, s - ctr
    nr, ns = real_counts.to(r.dtype), syn_counts.to(s.dtype)
    loss = _kernel_sums(s, sm, s, sm, coefs, True) / ns ** 2 \
        - 2 * _kernel_sums(r, rm, s, sm, coefs, False) / (nr * ns)
    if real_term:
        loss = loss + _kernel_sums(r, rm, r, rm, coefs, True) / nr ** 2
    return loss


# -- Triton kernels ------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _gauss_fwd_kernel(a_ptr, aoff_ptr, acnt_ptr, b_ptr, boff_ptr, bcnt_ptr, ctr_ptr, ctroff_ptr,
                          coef_ptr, NK, part_ptr, w_ptr, woff_ptr, D, sa, sb, sctr, S,
                          SELF: tl.constexpr, SAVE_W: tl.constexpr, BM: tl.constexpr,
                          BN: tl.constexpr, BD: tl.constexpr):
        # program (class c, split s): a-tiles s, s + S, ... of class c against all its b rows.
        # Both sides are shifted by a row of the class (its first synthetic one): distances do
        # not change, and ||a||^2 + ||b||^2 - 2 a.b no longer cancels features' common offset.
        c, s = tl.program_id(0), tl.program_id(1)
        ctr = ctr_ptr + tl.load(ctroff_ptr + c) * sctr
        a0 = tl.load(aoff_ptr + c)
        na = tl.load(acnt_ptr + c)
        b0 = tl.load(boff_ptr + c)
        nb = tl.load(bcnt_ptr + c)
        total = tl.zeros([BM, BN], dtype=tl.float32)
        for ta in range(s * BM, na, S * BM):
            ra = ta + tl.arange(0, BM)
            am = ra < na
            for tb in range(0, nb, BN):
                rb = tb + tl.arange(0, BN)
                bm = rb < nb
                dot = tl.zeros([BM, BN], dtype=tl.float32)
                qa = tl.zeros([BM], dtype=tl.float32)
                qb = tl.zeros([BN], dtype=tl.float32)
                for d0 in range(0, D, BD):
                    cols = d0 + tl.arange(0, BD)
                    cm = cols < D
                    C = tl.load(ctr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
                    A = tl.load(a_ptr + (a0 + ra)[:, None] * sa + cols[None, :],
                                mask=am[:, None] & cm[None, :], other=0.0).to(tl.float32)
                    B = tl.load(b_ptr + (b0 + rb)[:, None] * sb + cols[None, :],
                                mask=bm[:, None] & cm[None, :], other=0.0).to(tl.float32)
                    A = tl.where(am[:, None], A - C, 0.0)
                    B = tl.where(bm[:, None], B - C, 0.0)
                    # fp32 products (no TF32): distances come from a difference of large terms
                    dot = tl.dot(A, tl.trans(B), dot, input_precision="ieee")
                    qa += tl.sum(A * A, 1)
                    qb += tl.sum(B * B, 1)
                d2 = tl.maximum(qa[:, None] + qb[None, :] - 2.0 * dot, 0.0)
                if SELF:
                    d2 = tl.where(ra[:, None] == rb[None, :], 0.0, d2)
                kv = tl.zeros([BM, BN], dtype=tl.float32)
                wv = tl.zeros([BM, BN], dtype=tl.float32)
                for i in range(NK):
                    q = tl.load(coef_ptr + c * NK + i)
                    e = tl.exp(-d2 * q)
                    kv += e
                    wv += e * (2.0 * q)  # k_sigma / sigma^2
                valid = am[:, None] & bm[None, :]
                total += tl.where(valid, kv, 0.0)
                if SAVE_W:
                    tl.store(w_ptr + tl.load(woff_ptr + c) + ra[:, None] * nb + rb[None, :], wv,
                             mask=valid)
        tl.store(part_ptr + c * S + s, tl.sum(tl.sum(total, 1), 0))

    @triton.jit
    def _weighted_rows(w_ptr, woff, x_ptr, x0, nx, sx, rj, jm, ns, cols, cm, C,
                       BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
        # sum_i w[i, j] (x_i - C) (on cols) and sum_i w[i, j], for the synthetic rows j of a tile
        acc = tl.zeros([BN, BD], dtype=tl.float32)
        rsum = tl.zeros([BN], dtype=tl.float32)
        for ti in range(0, nx, BM):
            ri = ti + tl.arange(0, BM)
            im = ri < nx
            W = tl.load(w_ptr + woff + ri[:, None] * ns + rj[None, :], mask=im[:, None] & jm[None, :],
                        other=0.0)
            X = tl.load(x_ptr + (x0 + ri)[:, None] * sx + cols[None, :],
                        mask=im[:, None] & cm[None, :], other=0.0).to(tl.float32)
            X = tl.where(im[:, None], X - C, 0.0)
            acc = tl.dot(tl.trans(W), X, acc, input_precision="ieee")
            rsum += tl.sum(W, 0)
        return acc, rsum

    @triton.jit
    def _gauss_bwd_kernel(g_ptr, r_ptr, roff_ptr, rcnt_ptr, y_ptr, yoff_ptr, ycnt_ptr,
                          wxy_ptr, wxyoff_ptr, wyy_ptr, wyyoff_ptr, dy_ptr, D, sr, sy, S,
                          BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
        # program (class c, column block, split s): synthetic tiles s, s + S, ... of class c.
        # d/dy_j = g_c [2/ns^2 sum_j' w_jj' (y_j' - y_j) - 2/(nr ns) sum_i w_ij (r_i - y_j)]
        c, db, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = db * BD + tl.arange(0, BD)
        cm = cols < D
        r0 = tl.load(roff_ptr + c)
        nr = tl.load(rcnt_ptr + c)
        y0 = tl.load(yoff_ptr + c)
        ns = tl.load(ycnt_ptr + c)
        g = tl.load(g_ptr + c)
        cx = 2.0 * g / (nr.to(tl.float32) * ns.to(tl.float32))
        cy = 2.0 * g / (ns.to(tl.float32) * ns.to(tl.float32))
        wxy0 = tl.load(wxyoff_ptr + c)
        wyy0 = tl.load(wyyoff_ptr + c)
        # the forward's shift (first synthetic row): sum_i w_ij (r_i - y_j) without cancellation
        C = tl.load(y_ptr + y0 * sy + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        for tj in range(s * BN, ns, S * BN):
            rj = tj + tl.arange(0, BN)
            jm = rj < ns
            m = jm[:, None] & cm[None, :]
            Y = tl.load(y_ptr + (y0 + rj)[:, None] * sy + cols[None, :], mask=m,
                        other=0.0).to(tl.float32) - C
            ax, sxw = _weighted_rows(wxy_ptr, wxy0, r_ptr, r0, nr, sr, rj, jm, ns, cols, cm, C,
                                     BM, BN, BD)
            ay, syw = _weighted_rows(wyy_ptr, wyy0, y_ptr, y0, ns, sy, rj, jm, ns, cols, cm, C,
                                     BM, BN, BD)
            grad = cy * (ay - syw[:, None] * Y) - cx * (ax - sxw[:, None] * Y)
            tl.store(dy_ptr + (y0 + rj)[:, None] * D + cols[None, :],
                     grad.to(dy_ptr.dtype.element_ty), mask=m)

    register("gaussian_mmd", __name__)


def _gauss_blocks(max_a: int, max_b: int) -> tuple[int, int, int]:
    return pow2(max_a, 16, 64), pow2(max_b, 16, 64), 32


def _pair_sums(a, aoff, acnt, max_a, b, boff, bcnt, max_b, ctr, ctroff, coef, w, woff,
               self_pairs) -> torch.Tensor:
    k, d = acnt.numel(), a.shape[1]
    if k == 0:
        return torch.zeros(0, dtype=torch.float32, device=a.device)
    bm, bn, bd = _gauss_blocks(max_a, max_b)
    splits = max(1, triton.cdiv(max_a, bm))
    part = torch.empty((k, splits), dtype=torch.float32, device=a.device)
    save = w is not None
    w = w if save else part
    _gauss_fwd_kernel[(k, splits)](a, aoff, acnt, b, boff, bcnt, ctr, ctroff, coef, coef.shape[1],
                                   part, w, woff if save else aoff, d, a.stride(0), b.stride(0),
                                   ctr.stride(0), splits,
                                   SELF=self_pairs, SAVE_W=save, BM=bm, BN=bn, BD=bd,
                                   num_warps=4)
    return part[:, 0] if splits == 1 else part.sum(1)


def _triton_gaussian(real, roff, rcnt, y, yoff, ycnt, coef, wxy_off, wyy_off, sizes, real_term):
    wxy_size, wyy_size, max_r, max_s = sizes
    with on_device(y):
        wxy = torch.empty(wxy_size, dtype=torch.float32, device=y.device)
        wyy = torch.empty(wyy_size, dtype=torch.float32, device=y.device)
        ns, nr = ycnt.to(torch.float32), rcnt.to(torch.float32)
        ctr = (y, yoff)  # shift by each class's first synthetic row
        save = wxy_size > 0  # every class has pairs: size 0 means no gradient is wanted
        xy = _pair_sums(real, roff, rcnt, max_r, y, yoff, ycnt, max_s, *ctr, coef,
                        wxy if save else None, wxy_off, False)
        yy = _pair_sums(y, yoff, ycnt, max_s, y, yoff, ycnt, max_s, *ctr, coef,
                        wyy if save else None, wyy_off, True)
        loss = yy / ns ** 2 - 2 * xy / (nr * ns)
        if real_term:
            xx = _pair_sums(real, roff, rcnt, max_r, real, roff, rcnt, max_r, *ctr, coef, None, None,
                            True)
            loss = loss + xx / nr ** 2
        return loss, wxy, wyy


def _triton_gaussian_backward(grad, real, roff, rcnt, y, yoff, ycnt, wxy, wxy_off, wyy, wyy_off,
                              max_s):
    with on_device(y):
        k, d = ycnt.numel(), y.shape[1]
        bn, bm, bd = pow2(max_s, 16, 64), 32, 64
        splits = max(1, triton.cdiv(max_s, bn))
        dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        if k == 0:
            return dy
        if wxy.numel() == 0:
            raise FastDMError("gaussian_mmd ran without a gradient (no_grad, or syn did not require "
                              "it), so it kept no pair weights: recompute it with gradients enabled")
        _gauss_bwd_kernel[(k, triton.cdiv(d, bd), splits)](
            grad.float().contiguous(), real, roff, rcnt, y, yoff, ycnt, wxy, wxy_off, wyy, wyy_off,
            dy, d, real.stride(0), y.stride(0), splits, BM=bm, BN=bn, BD=bd, num_warps=4)
        return dy


# -- the op --------------------------------------------------------------------------------------
@torch.library.custom_op("fastdm::gaussian_mmd", mutates_args=())
def _gauss_op(real: torch.Tensor, roff: torch.Tensor, rcnt: torch.Tensor, syn: torch.Tensor,
              yoff: torch.Tensor, ycnt: torch.Tensor, coef: torch.Tensor, wxy_off: torch.Tensor,
              wyy_off: torch.Tensor, sizes: list[int], real_term: bool,
              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        return _triton_gaussian(real, roff, rcnt, syn, yoff, ycnt, coef, wxy_off, wyy_off, sizes,
                                real_term)
    loss = _torch_gaussian(real, rcnt, syn, ycnt, coef, real_term)
    return loss, syn.new_zeros(sizes[0], dtype=torch.float32), syn.new_zeros(sizes[1], dtype=torch.float32)


@_gauss_op.register_fake
def _(real, roff, rcnt, syn, yoff, ycnt, coef, wxy_off, wyy_off, sizes, real_term, backend):
    f32 = torch.float32
    return (syn.new_empty((ycnt.shape[0],), dtype=f32), syn.new_empty((sizes[0],), dtype=f32),
            syn.new_empty((sizes[1],), dtype=f32))


@torch.library.custom_op("fastdm::gaussian_mmd_backward", mutates_args=())
def _gauss_backward_op(grad: torch.Tensor, real: torch.Tensor, roff: torch.Tensor,
                       rcnt: torch.Tensor, syn: torch.Tensor, yoff: torch.Tensor,
                       ycnt: torch.Tensor, coef: torch.Tensor, wxy: torch.Tensor,
                       wxy_off: torch.Tensor, wyy: torch.Tensor, wyy_off: torch.Tensor,
                       max_s: int, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_gaussian_backward(grad, real, roff, rcnt, syn, yoff, ycnt, wxy, wxy_off,
                                         wyy, wyy_off, max_s)
    _, vjp = torch.func.vjp(lambda y: _torch_gaussian(real, rcnt, y, ycnt, coef, False), syn)
    return vjp(grad)[0].contiguous()


@_gauss_backward_op.register_fake
def _(grad, real, roff, rcnt, syn, yoff, ycnt, coef, wxy, wxy_off, wyy, wyy_off, max_s, backend):
    return torch.empty_like(syn, memory_format=torch.contiguous_format)


def _gauss_setup(ctx, inputs, output):
    real, roff, rcnt, syn, yoff, ycnt, coef, wxy_off, wyy_off, sizes, real_term, backend = inputs
    _, wxy, wyy = output
    ctx.save_for_backward(real, roff, rcnt, syn, yoff, ycnt, coef, wxy, wxy_off, wyy, wyy_off)
    ctx.meta = (sizes[3], backend)


def _gauss_backward(ctx, grad, _gwxy, _gwyy):
    real, roff, rcnt, syn, yoff, ycnt, coef, wxy, wxy_off, wyy, wyy_off = ctx.saved_tensors
    gy = None
    if ctx.needs_input_grad[3]:
        gy = _gauss_backward_op(grad, real, roff, rcnt, syn, yoff, ycnt, coef, wxy, wxy_off, wyy,
                                wyy_off, *ctx.meta)
    return (None,) * 3 + (gy,) + (None,) * 8


_gauss_op.register_autograd(_gauss_backward, setup_context=_gauss_setup)


def _bandwidths(bandwidths, k: int, device) -> torch.Tensor:
    """Bandwidths as per-class float32 [k, NB] (a list is shared by all classes)."""
    if isinstance(bandwidths, torch.Tensor):
        b = bandwidths.detach()
        if b.dim() == 1:
            b = b.expand(k, b.shape[0])
        if b.dim() != 2 or b.shape[0] != k or b.shape[1] == 0:
            raise FastDMError(f"per-class bandwidths must have shape [{k}, NB], got {tuple(bandwidths.shape)}")
        if b.device.type == "cpu" and not torch.compiler.is_compiling() \
                and not bool(((b > 0) & torch.isfinite(b)).all()):
            raise FastDMError("bandwidths must be positive and finite")
        return to_device(b.to(torch.float32).contiguous(), device)
    values = positive_floats(bandwidths, "bandwidths")
    return to_device(torch.tensor(values, dtype=torch.float32).expand(k, len(values)).contiguous(), device)


def gaussian_mmd(real: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts,
                 bandwidths: Sequence[float], *, real_term: bool = True,
                 backend: str | None = None) -> torch.Tensor:
    """Per-class biased multi-kernel MMD^2 between real and synthetic features -> float32 [k].

    k(a, b) = sum over sigma in ``bandwidths`` of exp(-||a - b||^2 / (2 sigma^2)); bandwidths is
    a list shared by all classes or a per-class [k, NB] tensor (see ``relative_bandwidths``). real, syn:
    class-contiguous [N, D] float32/bf16/fp16 features with per-class row counts (they may
    differ between classes and sides). ``real_term=False`` leaves out the real-real term
    (constant w.r.t. syn; costs nr^2 pairs per class): same gradient, and the value is the
    MMD^2 minus that term. Differentiable w.r.t. ``syn``. Counts given on the CPU (or as
    lists) avoid a device sync on CUDA; device tensors are copied to the host once.
    """
    check_features(real, "real")
    check_features(syn, "synthetic")
    check_same_embedder(real, syn, "real features")
    rl = layout(real_counts, real.shape[0], syn.device, "real")
    yl = layout(syn_counts, syn.shape[0], syn.device, "synthetic")
    if rl.counts.numel() != yl.counts.numel():
        raise FastDMError(f"{rl.counts.numel()} real classes and {yl.counts.numel()} synthetic "
                          f"classes: the counts must cover the same classes")
    bw = _bandwidths(bandwidths, yl.counts.numel(), syn.device)
    backend = choose_backend("gaussian_mmd", backend, syn.device)
    if backend == "torch":
        return torch_gaussian_mmd(real, rl.counts, syn, yl.counts, bw, real_term)
    no_real_grad(real, backend)
    rh = rl.host if rl.host is not None else rl.counts.cpu()
    yh = yl.host if yl.host is not None else yl.counts.cpu()
    wxy_n, wyy_n = rh * yh, yh * yh
    # the pair weights are kept for the backward only: none when no gradient will be taken
    grad = syn.requires_grad and torch.is_grad_enabled()
    sizes = [int(wxy_n.sum()) if grad else 0, int(wyy_n.sum()) if grad else 0,
             int(rh.max()) if rh.numel() else 0, int(yh.max()) if yh.numel() else 0]
    dev = syn.device
    wxy_off = to_device(torch.cumsum(wxy_n, 0) - wxy_n, dev)
    wyy_off = to_device(torch.cumsum(wyy_n, 0) - wyy_n, dev)
    coef = coefficients(bw).contiguous()
    loss, _, _ = _gauss_op(rows_contiguous(real.detach()), rl.offsets, rl.counts, rows_contiguous(syn),
                           yl.offsets, yl.counts, coef, wxy_off, wyy_off, sizes, bool(real_term),
                           backend)
    return loss
