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
P [r, n] with P X the orthonormal basis' rows: a Cholesky factor and its inverse, or, where the
rows are (nearly) dependent -- a synthetic image that is also in the real batch, under the same
Siamese augmentation, has no residual at all -- the eigenvectors of the eigenvalues above
RANK_TOL (a row closer than sqrt(RANK_TOL) to the others' span is taken to lie in it).
Needs n + n_s <= D per class (a real span that fills R^D leaves no room); the objective checks.
Gram matrices and factors are float64 (they are n x n); the M-row products are float32.
"""
from __future__ import annotations

import torch
from torch.linalg import solve_triangular

from .. import rng
from ..errors import FastDMError

RANK_TOL = 1e-6  # eigenvalues of unit rows' Gram matrices below it are rounding (float32 rows)


def factor(k: torch.Tensor, cholesky: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(F [n, r], P [r, n]) of a float64 Gram matrix K = X X^T of unit rows: F F^T = K and the
    rows of P X orthonormal. Cholesky where it is well conditioned, else the eigenvectors of
    the eigenvalues above RANK_TOL."""
    if cholesky:
        low, info = torch.linalg.cholesky_ex(k)
        if int(info) == 0 and float(low.diagonal().min()) ** 2 > RANK_TOL:
            eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
            return low, solve_triangular(low, eye, upper=False)
    lam, v = torch.linalg.eigh(k)
    keep = lam > RANK_TOL
    v, sd = v[:, keep], lam[keep].sqrt()
    return v * sd, (v / sd).T


def root(k: torch.Tensor) -> torch.Tensor:
    """A [n, n] with A A^T = K for a float64 positive semidefinite K (eigenvalues clamped at 0)."""
    lam, v = torch.linalg.eigh(k)
    return v * lam.clamp(min=0).sqrt()


def draws(seed: int, iteration: int, m: int, n: int, ns: int, d: int):
    """An iteration's standard normals, keyed on (seed, iteration) and shared by its classes (as
    the full draw's t): Z [M, n] (its two halves of rows from two generators), Z_s [M, n_s] and
    W [D, n_s]."""
    seeds = rng.hash32(seed, rng.FREQ, iteration, torch.arange(4)).tolist()
    half = m // 2
    shapes = ((half, n), (m - half, n), (m, ns), (d, ns))
    z0, z1, zs, w = (torch.randn(shape, generator=torch.Generator().manual_seed(int(sd)))
                     for shape, sd in zip(shapes, seeds))
    return torch.cat([z0, z1]), zs, w


def phase_sums(*parts: torch.Tensor) -> torch.Tensor:
    """The sums over the rows' phases (the columns of each part [M, *]) of cos and sin: [2, M]."""
    return torch.stack([sum(torch.cos(q).sum(1) for q in parts),
                        sum(torch.sin(q).sum(1) for q in parts)])


def real_class(x: torch.Tensor, z: torch.Tensor):
    """One class's real side: x [n, D] (float32, unit rows), z [M, n] -> (F [n, r], P [r, n]
    (float64), the sums of cos and sin of its phases Z[:, :r] F^T [2, M])."""
    f, p = factor((x @ x.T).double())
    ff, n, r = f.to(z.dtype), f.shape[0], f.shape[1]
    if r == n and n >= 64 and bool((f.triu(1) == 0).all()):
        # a Cholesky factor: its first half of columns needs only the first half of Z's
        # (the products are 3/4 of the square's, measured 2x faster at 4096 x 256)
        h = n // 2
        parts = (z[:, :h] @ ff[:h, :h].T.contiguous(), z[:, :n] @ ff[h:].T.contiguous())
    else:
        parts = (z[:, :r] @ ff.T.contiguous(),)
    return f, p, phase_sums(*parts)


class SynPhases(torch.autograd.Function):
    """One class's synthetic phases [M, n_s] and, backward, T^T G (see the module's doc). The
    real span's orthonormal rows P X [r, D] are never formed: every product goes through X."""

    @staticmethod
    def forward(ctx, xs, x, p, z, zs, w):
        xs64, x64 = xs.detach().double(), x.double()
        c = (xs64 @ x64.T) @ p.T           # [n_s, r]: the synthetic rows' coordinates in Q_r
        r = xs64 - (c @ p) @ x64           # [n_s, D]: their residuals
        f_s, p_s = factor(r @ r.T, cholesky=False)
        ctx.save_for_backward(x64, p, z, zs, w, r, p_s)
        ctx.dtype = xs.dtype
        return z[:, :p.shape[0]] @ c.to(z.dtype).T + zs[:, :f_s.shape[1]] @ f_s.to(zs.dtype).T

    @staticmethod
    def backward(ctx, g):
        x64, p, z, zs, w, r, p_s = ctx.saved_tensors
        g = g.to(z.dtype)
        qs = p_s @ r                       # [r_s, D]: the residuals' orthonormal rows
        inside = ((z[:, :p.shape[0]].T @ g).double().T @ p) @ x64   # Q_r Z^T G, as rows
        resid = (zs[:, :qs.shape[0]].T @ g).double().T @ qs         # Q_s Z_s^T G
        w64 = w.double()                   # outside both spans: P_o W A^T, A A^T = G^T G
        pw = w64 - x64.T @ (p.T @ (p @ (x64 @ w64))) - qs.T @ (qs @ w64)
        g64 = g.double()
        return (inside + resid + (pw @ root(g64.T @ g64).T).T).to(ctx.dtype), \
            None, None, None, None, None


def check_fits(n: int, ns: int, d: int) -> None:
    if n + ns > d:
        raise FastDMError(f"--frequency-draw span needs the real and synthetic rows of a class to "
                          f"fit in the feature space ({n} + {ns} > {d} features); use "
                          f"--frequency-draw full, or a smaller --batch-real")
