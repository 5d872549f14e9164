"""Fused per-class MMD: DM's mean-embedding loss (linear kernel) and a multi-kernel Gaussian MMD.

Features are class-contiguous: class c owns rows [offset_c, offset_c + count_c) of a [N, D]
matrix, and counts may differ between classes (and between the real and the synthetic side).

Linear (DM, the paper): loss_c = ||mean_real_c - mean_syn_c||^2. The real side is reduced to
per-class sums first (``segment_sum``; accumulable over chunks with ``RealSums``, so the real
stream never has to be held at once), then one kernel forms the synthetic means, the
difference and the squared norm; its backward recomputes the synthetic means and writes
2 g_c (mean_syn_c - mean_real_c) / n_syn_c to the class's rows. Nothing of size [N, D] is
materialised besides the gradient.

Gaussian (beyond the paper, as in M3D): per class the biased MMD^2 estimate
    XX / nr^2 + YY / ns^2 - 2 XY / (nr ns),  XY = sum_ij k(r_i, s_j),
with k(a, b) = sum over sigma of exp(-||a - b||^2 / (2 sigma^2)). One kernel tiles the pairwise
distances with tl.dot (||a||^2 + ||b||^2 - 2 a.b, fp32), fuses the exp and the sums, and keeps
w = sum_sigma k_sigma / sigma^2 per pair (n_real x n_syn per class: small next to the features)
for the backward, which is two more tl.dot reductions per synthetic tile. XX does not depend on
the synthetic set: it is computed only when ``real_term=True`` (the loss value is wanted).

Reductions are deterministic everywhere (no atomics): partial results per program are summed
by torch in a fixed order. Backend choice: ``fastdm.backend.backend_for('mmd', device)``.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Sequence

import torch

from ..backend import backend_for, interpreting, triton_unusable
from ..config import positive_floats
from ..errors import FastDMError
from ..losses import class_means, class_sums, padded

try:  # triton ships with torch on Linux; elsewhere only the torch path exists
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the platform
    triton = tl = None

__all__ = ["segment_sum", "RealSums", "linear_mmd", "gaussian_mmd", "relative_bandwidths",
           "torch_linear_mmd", "torch_gaussian_mmd", "coefficients"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# -- torch path (the reference) ----------------------------------------------------------------
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
    _check_features(r, "real")
    mult = positive_floats(multiples, "bandwidth multiples")
    lay = _layout(real_counts, r.shape[0], r.device, "real")
    n = lay.counts.to(torch.float32)
    mean = segment_sum(r, lay.counts, backend=backend) / n[:, None]
    seg = torch.repeat_interleave(torch.arange(n.numel(), device=r.device), lay.counts,
                                  output_size=r.shape[0])
    dev = torch.linalg.vector_norm(r - mean[seg], dim=1, dtype=torch.float32) ** 2
    spread = 2 * segment_sum(dev[:, None], lay.counts, backend=backend)[:, 0] / n
    norm_sq = (mean * mean).sum(1)
    scale = torch.where(spread > 1e-12 * (norm_sq + 1), spread, norm_sq.clamp_min(1.0)).sqrt()
    return scale[:, None] * _to_device(torch.tensor(mult, dtype=torch.float32), r.device)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 computed in float32 (as the kernels accumulate); float64 stays (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def torch_linear_mmd(real_sums, real_counts, syn, syn_counts) -> torch.Tensor:
    """Per-class ||real_sums_c / real_counts_c - mean_syn_c||^2 -> float32 [k]."""
    real_sums, syn = _wide(real_sums), _wide(syn)
    real_counts = torch.as_tensor(real_counts, device=real_sums.device)
    real_mean = real_sums / real_counts.to(real_sums.dtype)[:, None]
    return ((real_mean - class_means(syn, torch.as_tensor(syn_counts, device=syn.device))) ** 2).sum(1)


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
    coefs = coefs.to(device=syn.device, dtype=_wide(syn).dtype)
    coefs = coefs.expand(k, coefs.shape[-1]) if coefs.dim() == 1 else coefs
    r, rm = padded(_wide(real), real_counts)
    s, sm = padded(_wide(syn), syn_counts)
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


# -- Triton kernels ----------------------------------------------------------------------------
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

    from ..backend import FUSED_OPS
    FUSED_OPS["mmd"] = __name__


def _on_device(t: torch.Tensor):
    # Triton launches on the current CUDA device: make it the tensor's
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def _programs_wanted(device: torch.device) -> int:
    """Enough programs to fill the device (a few per SM); the interpreter pays per program."""
    if device.type != "cuda":
        return 1
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _linear_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N). Under the interpreter the column block stays small so that the
    tests' feature sizes span several blocks and a partial last one."""
    return _pow2(d, 16, 64 if interpreting() else 256), 16


def _triton_segment_sum(x, offsets, counts, splits: int | None) -> torch.Tensor:
    with _on_device(x):
        n, d = x.shape
        k = counts.numel()
        block_d, block_n = _linear_blocks(d)
        nd = triton.cdiv(d, block_d)
        if splits is None:  # split each class's rows when classes x column blocks are too few
            per_class = triton.cdiv(max(1, n // max(k, 1)), block_n)
            splits = max(1, min(per_class, triton.cdiv(_programs_wanted(x.device), max(1, k * nd))))
        out = torch.empty((splits, k, d), dtype=torch.float32, device=x.device)
        if k and d:
            _segsum_kernel[(k, nd, splits)](x, offsets, counts, out, k, d, x.stride(0), splits,
                                            BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
        return out[0] if splits == 1 else out.sum(0)


def _triton_linear(real_sums, real_counts, y, offsets, counts) -> torch.Tensor:
    with _on_device(y):
        k, d = counts.numel(), y.shape[1]
        block_d, block_n = _linear_blocks(d)
        nd = triton.cdiv(d, block_d)
        part = torch.zeros((k, nd), dtype=torch.float32, device=y.device)
        if k:
            _linear_fwd_kernel[(k, nd)](real_sums, real_counts, y, offsets, counts, part, d,
                                        real_sums.stride(0), y.stride(0), nd, BLOCK_N=block_n,
                                        BLOCK_D=block_d, num_warps=4)
        return part[:, 0] if nd == 1 else part.sum(1)


def _triton_linear_backward(grad, real_sums, real_counts, y, offsets, counts) -> torch.Tensor:
    with _on_device(y):
        k, d = counts.numel(), y.shape[1]
        block_d, block_n = _linear_blocks(d)
        dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        if k:
            _linear_bwd_kernel[(k, triton.cdiv(d, block_d))](
                grad.float().contiguous(), real_sums, real_counts, y, offsets, counts, dy, d,
                real_sums.stride(0), y.stride(0), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
        return dy


def _gauss_blocks(max_a: int, max_b: int) -> tuple[int, int, int]:
    return _pow2(max_a, 16, 64), _pow2(max_b, 16, 64), 32


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


# -- layouts and checks ------------------------------------------------------------------------
class _Layout(NamedTuple):
    counts: torch.Tensor          # int64 [k] on the features' device
    offsets: torch.Tensor         # int64 [k]: first row of each class
    host: torch.Tensor | None     # the counts on the CPU when known without a device sync


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> GPU without a sync (a plain copy from pageable memory waits for the stream):
    through pinned memory, asynchronously."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _layout(counts, rows: int | None, device, what: str, min_count: int = 1) -> _Layout:
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
    dev = _to_device(counts.to(torch.int64), device)
    return _Layout(dev.contiguous(), (torch.cumsum(dev, 0) - dev).contiguous(), host)


def _check_features(x, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise FastDMError(f"{what} features must be a 2-D [rows, D] tensor, got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise FastDMError(f"{what} features must be float32, bfloat16 or float16, got {x.dtype}")
    if x.shape[1] == 0:
        raise FastDMError(f"{what} features have no columns (shape {tuple(x.shape)})")


def _backend(backend, device) -> str:
    if backend is None:
        return backend_for("mmd", device)
    if backend not in ("torch", "triton"):
        raise FastDMError(f"backend must be 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and (why := triton_unusable("mmd", device)) is not None:
        raise FastDMError(f"backend='triton' cannot run here: {why}")
    return backend


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    # the kernels take a row stride; columns must be unit-stride
    return x if x.stride(-1) == 1 else x.contiguous()


# -- segment sums (the real side) --------------------------------------------------------------
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
    real side of a chunked run accumulates this way (see RealSums). ``splits`` (Triton only)
    splits each class's rows over that many programs (default: enough to fill the GPU).
    Deterministic on every backend.
    """
    _check_features(features, "real")
    lay = _layout(counts, features.shape[0], features.device, "real", min_count=0)
    backend = _backend(backend, features.device)
    if splits is not None and (not isinstance(splits, int) or splits < 1):
        raise FastDMError(f"splits must be a positive integer, got {splits!r}")
    if backend == "torch":
        sums = class_sums(features.float(), lay.counts)
    else:
        sums = _segsum_op(_rows_contiguous(features), lay.offsets, lay.counts, splits or 0, backend)
    if out is None:
        return sums
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != tuple(sums.shape):
        raise FastDMError(f"out must be a float32 tensor of shape {tuple(sums.shape)}, got "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.device != sums.device:
        raise FastDMError(f"out is on {out.device}, the features on {sums.device}: put them on one device")
    return out.add_(sums)


class RealSums:
    """The real side of the linear loss, accumulated chunk by chunk: float32 sums [C, D] and
    counts [C]. ``add(features, counts, first=c0)`` adds class-contiguous rows of classes
    c0, c0 + 1, ...; a class may be split across calls."""

    def __init__(self, num_classes: int, dim: int, device="cpu"):
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float32, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def add(self, features: torch.Tensor, counts, first: int = 0, backend: str | None = None) -> None:
        k = len(counts) if not isinstance(counts, torch.Tensor) else counts.numel()
        if not 0 <= first <= self.sums.shape[0] - k:
            raise FastDMError(f"classes {first}..{first + k - 1} are outside 0..{self.sums.shape[0] - 1}")
        if isinstance(features, torch.Tensor) and features.dim() == 2 and features.shape[1] != self.sums.shape[1]:
            raise FastDMError(f"features have {features.shape[1]} columns, the sums {self.sums.shape[1]}")
        segment_sum(features, counts, out=self.sums[first:first + k], backend=backend)
        self.counts[first:first + k] += torch.as_tensor(counts, device=self.counts.device)

    def means(self) -> torch.Tensor:
        return self.sums / self.counts.to(torch.float32)[:, None]


# -- linear MMD (DM's loss) --------------------------------------------------------------------
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


def _no_real_grad(t: torch.Tensor, backend: str) -> None:
    if backend == "triton" and t.requires_grad and torch.is_grad_enabled():
        raise FastDMError("the fused MMD differentiates w.r.t. the synthetic features only; detach "
                          "the real side (DM never trains it) or use backend='torch'")


def linear_mmd(real_sums: torch.Tensor, real_counts, syn: torch.Tensor, syn_counts, *,
               backend: str | None = None) -> torch.Tensor:
    """DM's loss per class: ||real_sums_c / real_counts_c - mean_syn_c||^2 -> float32 [k].

    real_sums: [k, D] per-class sums of real features (``segment_sum`` or ``RealSums``: sums,
    not means, so they accumulate over chunks); real_counts: [k] rows summed per class;
    syn: class-contiguous [Ns, D] float32/bf16/fp16 features; syn_counts: [k] rows per class.
    Differentiable w.r.t. ``syn`` (the gradient has syn's dtype; accumulation is fp32).
    """
    _check_features(syn, "synthetic")
    if not isinstance(real_sums, torch.Tensor) or real_sums.dim() != 2 or real_sums.dtype not in _DTYPES:
        raise FastDMError("real_sums must be a float [k, D] tensor of per-class sums")
    k = real_sums.shape[0]
    if real_sums.shape[1] != syn.shape[1]:
        raise FastDMError(f"real sums have {real_sums.shape[1]} features, synthetic features "
                          f"{syn.shape[1]}: they must come from the same embedder")
    if real_sums.device != syn.device:
        raise FastDMError(f"real sums are on {real_sums.device}, synthetic features on {syn.device}")
    ys = _layout(syn_counts, syn.shape[0], syn.device, "synthetic")
    rc = _layout(real_counts, None, syn.device, "real")
    if ys.counts.numel() != k or rc.counts.numel() != k:
        raise FastDMError(f"{k} classes of real sums, {rc.counts.numel()} real counts and "
                          f"{ys.counts.numel()} synthetic counts: they must agree")
    backend = _backend(backend, syn.device)
    if backend == "torch":
        return torch_linear_mmd(real_sums, rc.counts, syn, ys.counts)
    _no_real_grad(real_sums, backend)
    return _linear_op(_rows_contiguous(real_sums.detach()), rc.counts, _rows_contiguous(syn),
                      ys.offsets, ys.counts, backend)



# -- Gaussian multi-kernel MMD -----------------------------------------------------------------
def _triton_gaussian(real, roff, rcnt, y, yoff, ycnt, coef, wxy_off, wyy_off, sizes, real_term):
    wxy_size, wyy_size, max_r, max_s = sizes
    with _on_device(y):
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
    with _on_device(y):
        k, d = ycnt.numel(), y.shape[1]
        bn, bm, bd = _pow2(max_s, 16, 64), 32, 64
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
        return _to_device(b.to(torch.float32).contiguous(), device)
    values = positive_floats(bandwidths, "bandwidths")
    return _to_device(torch.tensor(values, dtype=torch.float32).expand(k, len(values)).contiguous(), device)


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
    _check_features(real, "real")
    _check_features(syn, "synthetic")
    if real.shape[1] != syn.shape[1]:
        raise FastDMError(f"real features have {real.shape[1]} columns, synthetic {syn.shape[1]}: "
                          f"they must come from the same embedder")
    if real.device != syn.device:
        raise FastDMError(f"real features are on {real.device}, synthetic on {syn.device}")
    rl = _layout(real_counts, real.shape[0], syn.device, "real")
    yl = _layout(syn_counts, syn.shape[0], syn.device, "synthetic")
    if rl.counts.numel() != yl.counts.numel():
        raise FastDMError(f"{rl.counts.numel()} real classes and {yl.counts.numel()} synthetic "
                          f"classes: the counts must cover the same classes")
    bw = _bandwidths(bandwidths, yl.counts.numel(), syn.device)
    backend = _backend(backend, syn.device)
    if backend == "torch":
        return torch_gaussian_mmd(real, rl.counts, syn, yl.counts, bw, real_term)
    _no_real_grad(real, backend)
    rh = rl.host if rl.host is not None else rl.counts.cpu()
    yh = yl.host if yl.host is not None else yl.counts.cpu()
    wxy_n, wyy_n = rh * yh, yh * yh
    # the pair weights are kept for the backward only: none when no gradient will be taken
    grad = syn.requires_grad and torch.is_grad_enabled()
    sizes = [int(wxy_n.sum()) if grad else 0, int(wyy_n.sum()) if grad else 0,
             int(rh.max()) if rh.numel() else 0, int(yh.max()) if yh.numel() else 0]
    dev = syn.device
    wxy_off = _to_device(torch.cumsum(wxy_n, 0) - wxy_n, dev)
    wyy_off = _to_device(torch.cumsum(wyy_n, 0) - wyy_n, dev)
    coef = coefficients(bw).contiguous()
    loss, _, _ = _gauss_op(_rows_contiguous(real.detach()), rl.offsets, rl.counts, _rows_contiguous(syn),
                           yl.offsets, yl.counts, coef, wxy_off, wyy_off, sizes, bool(real_term),
                           backend)
    return loss
