"""NCFM's frequencies drawn in the span of each class's features (``--frequency-draw span``).

The distance sees the frequencies t ~ N(0, I_D) only through the phases t . x of the class's
features. For a class with real features X [n, D] (rows) and synthetic ones X_s [n_s, D], take an
orthonormal basis [Q_r, Q_s, Q_o] of R^D: Q_r spans the real rows, Q_s the synthetic rows'
residuals off that span, Q_o the rest. Because N(0, I_D) is rotation invariant, the rows of
T [M, D] in that basis, T Q_r = Z [M, n], T Q_s = Z_s [M, n_s] and T Q_o, are independent
standard normals, so

    real phases       T X^T   = Z F^T                    (X X^T = F F^T)
    synthetic phases  T X_s^T = Z C^T + Z_s F_s^T        (C = X_s Q_r, R R^T = F_s F_s^T)
    their gradient    T^T G   = Q_r Z^T G + Q_s Z_s^T G + Q_o (T Q_o)^T G

with R = X_s - C Q_r^T (the residuals) and G = d loss / d phases. The last term's only
dependence on the data is through G, and given G its columns are normal with covariance
(G^T G) on the complement of both spans: it is drawn as P_o W A^T (W [D, n_s] standard normal,
A A^T = G^T G). So loss and gradient have exactly the joint distribution of the full draw, while
the arithmetic is M n^2 per class instead of M D n (n = 256 real rows against D = 2048 features
at CIFAR-10: 8x fewer products), and nothing of size M x D is drawn. The draws Z, Z_s, W are
shared by the classes of an iteration, as ``full``'s t is: each class's loss and gradient have
the full draw's joint distribution (the classes are separate terms); the realisation differs
from ``full``'s, not its distribution.

Every span is handled through a factor F [n, r] of its Gram matrix (F F^T = X X^T) and the map
P [r, n] with P X the orthonormal basis' rows. Where the Gram matrix is well conditioned F is its
Cholesky factor and P = F^{-1} is never formed (triangular solves apply it); where the rows are
(nearly) dependent -- a synthetic image that is also in the real batch, under the same Siamese
augmentation, has no residual at all -- F and P come from the eigenvectors of the eigenvalues
above RANK_TOL (a row closer than sqrt(RANK_TOL) to the others' span is taken to lie in it).
The same holds for the residuals' span, and A is G^T G's Cholesky factor where it is definite:
Cholesky factors move continuously with their matrix, so a rounding-level change of the features
or of G leaves the draw where it was (eigenvectors of close eigenvalues can turn instead).
The synthetic side never forms its residuals or the bases as D-vectors: its forward needs the
Gram blocks X_s X^T and X_s X_s^T, its backward writes the gradient as U X + V X_s + A W^T with
small matrices U, V, A -- three products with D columns per class.
Needs n + n_s <= D per class (a real span that fills R^D leaves no room); the objective checks.
Gram matrices and factors are float64 (they are n x n); the products with M or D are float32.
"""
from __future__ import annotations

import torch
from torch.linalg import solve_triangular

from .. import rng
from ..errors import FastDMError
from ..ops.characteristic import PHASE_FLOOR
from ..ops.phase_sums import cos_sin_sums

RANK_TOL = 1e-6  # eigenvalues of unit rows' Gram matrices below it are rounding (float32 rows)


def factor(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(F [n, r], P [r, n] or None) of a float64 Gram matrix K = X X^T of unit rows (only its
    lower triangle is read): F F^T = K and the rows of P X orthonormal. A Cholesky factor where
    K is well conditioned (P = F^{-1}: None, applied by solves), else the eigenvectors of the
    eigenvalues above RANK_TOL."""
    low, info = torch.linalg.cholesky_ex(k)
    if int(info) == 0 and float(low.diagonal().min()) ** 2 > RANK_TOL:
        return low, None
    lam, v = torch.linalg.eigh(k)
    keep = lam > RANK_TOL
    v, sd = signed(v[:, keep]), lam[keep].sqrt()
    return v * sd, (v / sd).T


def explicit_factor(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor`` with P always formed (for the synthetic side's small Gram matrices)."""
    f, p = factor(k)
    if p is None:  # a Cholesky factor: P = F^{-1}
        p = solve_triangular(f, torch.eye(f.shape[0], dtype=f.dtype, device=f.device), upper=False)
    return f, p


def signed(v: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns) with their signs fixed, largest entry positive: the same draw
    from any precision, rounding or LAPACK build."""
    return v * torch.where(v.gather(0, v.abs().argmax(0, keepdim=True)) < 0, -1.0, 1.0)


def root(k: torch.Tensor) -> torch.Tensor:
    """A [n, n] with A A^T = K for a float64 positive semidefinite K: its Cholesky factor (which
    moves continuously with K: a rounding-level change of the gradient leaves the draw alone,
    where eigenvectors of close eigenvalues can turn), else eigenvalues clamped at 0."""
    low, info = torch.linalg.cholesky_ex(k)
    if int(info) == 0:
        return low
    lam, v = torch.linalg.eigh(k)
    return signed(v) * lam.clamp(min=0).sqrt()


def draws(seed: int, iteration: int, m: int, n: int, ns: int, d: int):
    """An iteration's standard normals, keyed on (seed, iteration) and shared by its classes (as
    the full draw's t): Z [M, n] (its two halves of rows from two generators), Z_s [M, n_s] and
    W^T [n_s, D]."""
    seeds = rng.hash32(seed, rng.FREQ, iteration, torch.arange(4)).tolist()
    z, zs, wt = torch.empty((m, n)), torch.empty((m, ns)), torch.empty((ns, d))
    half = m // 2
    for part, sd in zip((z[:half], z[half:], zs, wt), seeds):  # (rows of z: contiguous views)
        part.normal_(generator=torch.Generator().manual_seed(int(sd)))
    return z, zs, wt


class Span:
    """A real span's map P, given as the stored factor: the Cholesky factor L (``tri``: P =
    L^{-1}, applied by triangular solves) or P itself [r, n] (the eigenvector path)."""

    def __init__(self, fac: torch.Tensor, tri: bool):
        self.fac, self.tri = fac, tri
        self.rank = fac.shape[1] if tri else fac.shape[0]

    def coords(self, k: torch.Tensor) -> torch.Tensor:
        """K [m, n] -> K P^T [m, r]: rows' coordinates in P X, from their products with X."""
        if self.tri:  # (as a left solve on the transpose: LAPACK's right solve is 5x slower here)
            return solve_triangular(self.fac, k.T, upper=False).T
        return k @ self.fac.T

    def right(self, u: torch.Tensor) -> torch.Tensor:
        """u [m, r] -> u P [m, n]."""
        if self.tri:
            return solve_triangular(self.fac.T, u.T, upper=True).T
        return u @ self.fac


def gram_lower(x: torch.Tensor) -> torch.Tensor:
    """X X^T [n, n] in float64 where only its lower triangle is read (as ``factor`` reads it):
    from 128 rows on, its upper right block is left zero (3/4 of the products)."""
    n = x.shape[0]
    if n < 128:
        return (x @ x.T).double()
    h = n // 2
    k = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    k[:h, :h] = x[:h] @ x[:h].T
    k[h:] = x[h:] @ x.T
    return k


def real_class(x: torch.Tensor, z: torch.Tensor, backend: str = "torch"):
    """One class's real side: x [n, D] (float32, unit rows), z [M, n] -> (the stored factor: L
    [n, n] or P [r, n], whether it is L, the sums of cos and sin of its phases Z F^T [2, M]).
    ``backend``: the sums' (fastdm.ops.phase_sums)."""
    f, p = factor(gram_lower(x))
    ff, n = f.to(z.dtype), f.shape[0]
    if p is not None:  # the eigenvector path: F [n, r] is full
        return (p, False), cos_sin_sums(z[:, :f.shape[1]] @ ff.T.contiguous(), backend=backend)
    # a Cholesky factor's row block b needs only the first (b + 1) blocks of Z's columns: with 4
    # blocks 5/8 of the square's products (measured 1.65x faster at 4096 x 256 than one GEMM),
    # written side by side into one matrix whose rows the sums then read in one pass (1.3-1.5x
    # faster than four products and four passes)
    blocks = 1 if n < 64 else 2 if n < 128 else 4
    edges = [n * b // blocks for b in range(blocks + 1)]
    ph = z.new_empty((z.shape[0], n))
    for lo, hi in zip(edges, edges[1:]):
        torch.mm(z[:, :hi], ff[lo:hi, :hi].T, out=ph[:, lo:hi])
    return (f, True), cos_sin_sums(ph, backend=backend)


def syn_phases(xs, x, span: Span, z, zs, wt):
    """One class's synthetic phases, transposed: [n_s, M] (float32), and what the gradient needs
    (``syn_gradient``'s ``saved``)."""
    # X_s and W^T against X and X_s in one product each: W's are the backward's, and one solve
    # gives both coordinates in Q_r
    sw = torch.cat([xs, wt])
    cc = span.coords((sw @ x.T).double())          # [C; C_w]: X_s's and W's in Q_r
    k_s = (sw @ xs.T).double()                     # [X_s X_s^T; W^T X_s^T]
    ns = xs.shape[0]
    c = cc[:ns]
    f_s, p_s = explicit_factor(k_s[:ns] - c @ c.T)  # the residuals' Gram matrix
    ph = c.to(z.dtype) @ z[:, :span.rank].T
    return ph.addmm_(f_s.to(zs.dtype), zs[:, :f_s.shape[1]].T), (cc, k_s[ns:], p_s)


def syn_gradient(gt, xs, x, span: Span, z, zs, wt, saved):
    """T^T G as the gradient w.r.t. the synthetic rows [n_s, D], for G^T = ``gt`` [n_s, M] (see
    the module's doc)."""
    cc, wxs, p_s = saved
    dt, ns = gt.dtype, xs.shape[0]
    c, cw = cc[:ns], cc[ns:]                       # cw = (Q_r W)^T
    a = (gt @ z[:, :span.rank]).double()           # (Z^T G)^T
    b = (gt @ zs[:, :p_s.shape[0]]).double()       # (Z_s^T G)^T
    g64 = gt.double()
    big_a = root(g64 @ g64.T)                      # A A^T = G^T G
    qsw = p_s @ (wxs.T - c @ cw.T)                 # Q_s W, with Q_s = p_s (X_s - C Q_r)
    # rows: a Q_r + b Q_s + A W^T P_o, with P_o = I - Q_r^T Q_r - Q_s^T Q_s; every term in Q_r's
    # coordinates goes through one solve
    v = (b - big_a @ qsw.T) @ p_s
    u = span.right(a - v @ c - big_a @ cw)
    return u.to(dt) @ x + v.to(dt) @ xs + big_a.to(dt) @ wt


class SynPhases(torch.autograd.Function):
    """One class's synthetic phases, transposed: [n_s, M], and, backward, T^T G (see the
    module's doc). ``fac, tri``: the class's real span (Span). The draw with its phases in
    view, for checking it against the full draw (the tests); the objective runs SpanLoss."""

    @staticmethod
    def forward(ctx, xs, x, fac, tri, z, zs, wt):
        xs = xs.detach()
        ph, saved = syn_phases(xs, x, Span(fac, tri), z, zs, wt)
        ctx.save_for_backward(xs, x, fac, z, zs, wt, *saved)
        ctx.tri = tri
        return ph

    @staticmethod
    def backward(ctx, gt):
        xs, x, fac, z, zs, wt, *saved = ctx.saved_tensors
        return (syn_gradient(gt, xs, x, Span(fac, ctx.tri), z, zs, wt, saved),
                None, None, None, None, None, None)


def distance_and_grad(ph, real, alpha: float, beta: float, weight: float):
    """NCFM's distance of one class, weight * sum_m sqrt(alpha (a_m - b_m)^2 + beta max(2 (a_m
    b_m - s_m . r_m), floor)) with s_m the mean of (cos, sin) of the synthetic phases ph [n_s, M]
    and r_m = ``real`` [2, M] the real side's (a, b their moduli), and its gradient w.r.t. ph in
    closed form (what autograd gives through ops.characteristic.distance_from_sums, except 0
    where b_m = 0, which autograd makes NaN)."""
    cs, sn = ph.cos(), ph.sin()
    # the per-frequency terms in float64 ([M] vectors: cheap), where the phase term's
    # cancellation would cost float32 digits
    re, im = cs.mean(0, dtype=torch.float64), sn.mean(0, dtype=torch.float64)
    rr, ri = real[0].double(), real[1].double()
    am, bm = torch.hypot(rr, ri), torch.hypot(re, im)
    raw = 2 * (am * bm - re * rr - im * ri)
    v = torch.sqrt(alpha * (am - bm).square() + beta * raw.clamp(min=PHASE_FLOOR))
    dv = (weight / ph.shape[0]) / (2 * v)
    inv_b = torch.where(bm > 0, bm.reciprocal(), 0.0)
    ure, uim = re * inv_b, im * inv_b
    on = (raw >= PHASE_FLOOR) * (2 * beta)
    amp = -2 * alpha * (am - bm)
    gre = dv * (amp * ure + on * (am * ure - rr))  # d loss / d mean cos, over n_s
    gim = dv * (amp * uim + on * (am * uim - ri))
    return (weight * v.sum()).to(ph.dtype), gim.to(ph.dtype) * cs - gre.to(ph.dtype) * sn


class SpanLoss(torch.autograd.Function):
    """One class's NCFM loss under the span draw (a scalar), its gradient w.r.t. the synthetic
    rows computed with it (the distance's gradient in closed form, then T^T G): no autograd
    graph, where the phases, cos, sin and the distance made one of about eighty nodes. ``real``
    [2, M]: the real side's characteristic function (sums / n)."""

    @staticmethod
    def forward(ctx, xs, x, fac, tri, z, zs, wt, real, alpha, beta, weight):
        xs, span = xs.detach(), Span(fac, tri)
        ph, saved = syn_phases(xs, x, span, z, zs, wt)
        loss, gt = distance_and_grad(ph, real, alpha, beta, weight)
        ctx.save_for_backward(syn_gradient(gt, xs, x, span, z, zs, wt, saved))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad_loss * grad,) + (None,) * 10


def check_fits(n: int, ns: int, d: int) -> None:
    if n + ns > d:
        raise FastDMError(f"--frequency-draw span needs the real and synthetic rows of a class to "
                          f"fit in the feature space ({n} + {ns} > {d} features); use "
                          f"--frequency-draw full, or a smaller --batch-real")
