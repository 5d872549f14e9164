"""NCFM's span draw (fastdm.objectives.span_draw): one realisation of the full draw t ~ N(0, I_D),
exactly where it can be checked (no room outside the spans), and in distribution (the gradient's
part outside them; the loss and the gradient's size against the full draw's)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_DEVICE
from conftest import small_engine as engine_for
from fastdm.errors import FastDMError
from fastdm.objectives import span_draw as S
from fastdm.objectives.base import Counts
from fastdm.objectives.ncfm import CharacteristicFunction


def _rows(n, d, g):
    return F.normalize(torch.rand(n, d, generator=g) + 0.5, dim=1)


def _basis(x, xs, fac, tri):
    """The orthonormal bases [D, r] of the real span and of the residuals, as the draw sees them."""
    x64, xs64 = x.double(), xs.detach().double()
    p = torch.linalg.inv(fac) if tri else fac
    qr = (p @ x64).T
    r = xs64 - (xs64 @ qr) @ qr.T
    return qr, (S.explicit_factor(r @ r.T)[1] @ r).T


@pytest.mark.parametrize("case", ["distinct", "dependent real rows", "a synthetic row is real"])
def test_the_draw_is_one_full_draw_when_the_spans_fill_the_space(case):
    """D = n + n_s: T = Z Q_r^T + Z_s Q_s^T is the whole draw; the phases of both sides and
    the gradient T^T G must be its. In float64, so that the algebra is checked to 1e-9 (float32's
    agreement with it is the next test)."""
    g = torch.Generator().manual_seed(3)
    n, ns, m = 5, 3, 40
    d = n + ns
    x, xs = _rows(n, d, g).double(), _rows(ns, d, g).double()
    if case == "dependent real rows":
        x[4] = F.normalize(x[0] + x[1], dim=0)
    if case == "a synthetic row is real":
        xs[1] = x[2]
    xs.requires_grad_(True)
    z, zs, wt = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((m, n), (m, ns), (ns, d)))
    (fac, tri), sums = S.real_class(x, z)
    assert tri == (case != "dependent real rows")  # dependent rows take the eigenvector path
    f = fac if tri else torch.linalg.pinv(fac)   # F = P^+
    assert f.shape[1] == (4 if case == "dependent real rows" else 5)
    ph = S.SynPhases.apply(xs, x, F.pad(fac, (0, 0, 0, n - fac.shape[0])), tri, z, zs, wt).T
    qr, qs = _basis(x, xs, fac, tri)
    t = z[:, :qr.shape[1]] @ qr.T + zs[:, :qs.shape[1]] @ qs.T
    real_ph = t @ x.T
    torch.testing.assert_close(real_ph, z[:, :f.shape[1]] @ f.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(sums, torch.stack([real_ph.cos().sum(1), real_ph.sin().sum(1)]),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(ph, t @ xs.detach().T, atol=1e-9, rtol=0)
    gph = torch.randn(m, ns, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(ph, xs, gph)
    want = (t.T @ gph).T
    if case == "distinct":  # nothing outside the spans: the gradient is T^T G itself
        torch.testing.assert_close(grad, want, atol=1e-9, rtol=1e-9)
    else:  # a dependent row leaves a direction outside: only the spans' part is determined
        inside = torch.cat([qr, qs], 1)
        torch.testing.assert_close(grad @ inside, want @ inside, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("shape", [(40, 6, 200), (67, 10, 300)])
def test_float32_agrees_with_float64(shape):
    """The run's float32 (Gram matrices and products) against the same draw in float64, on
    positive, correlated rows like a ConvNet's (a ConvNet's at CIFAR-10: 4600), with
    synthetic rows that are also real rows (no residual) and ones that are not."""
    n, ns, d = shape
    g = torch.Generator().manual_seed(n)
    x = F.normalize(torch.rand(n, d, generator=g) + 1, dim=1)  # condition numbers 3166 and 6025
    xs = torch.cat([x[:ns // 2], F.normalize(torch.rand(ns - ns // 2, d, generator=g) + 1, dim=1)])
    z, zs, wt = S.draws(0, 1, 256, n, ns, d)
    gph = torch.randn(ns, 256, generator=g)
    out = {}
    for dt in (torch.float32, torch.float64):
        (fac, tri), sums = S.real_class(x.to(dt), z.to(dt))
        xx = xs.to(dt).requires_grad_(True)
        ph = S.SynPhases.apply(xx, x.to(dt), fac, tri, z.to(dt), zs.to(dt), wt.to(dt))
        out[dt] = (sums.double(), ph.detach().double(), torch.autograd.grad(ph, xx, gph.to(dt))[0].double())
    for a, b in zip(out[torch.float32], out[torch.float64]):
        assert float((a - b).norm() / b.norm()) < 1e-4


def test_real_sums_of_a_cholesky_factor_by_halves():
    """n >= 64 rows with a Cholesky factor: the phases by halves of F's rows sum as Z F^T's."""
    g = torch.Generator().manual_seed(9)
    x, z = _rows(70, 100, g), torch.randn(64, 70, generator=g)
    (f, tri), sums = S.real_class(x, z)
    assert tri and bool((f.triu(1) == 0).all())  # the Cholesky path
    ph = z.double() @ f.T
    torch.testing.assert_close(sums.double(), torch.stack([ph.cos().sum(1), ph.sin().sum(1)]),
                               atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_span_loss_is_the_distance_of_the_phases_with_its_gradient(dtype):
    """SpanLoss (the objective's path: the distance's gradient in closed form, computed with the
    loss) against autograd through SynPhases, the cos/sin sums and ops.characteristic's
    distance: float64 to 1e-7 (the rows that are real leave the residuals' factor near its rank
    cut, which turns rounding into 1e-8); float32 within 1e-4 of that float64 reference (the
    closed form takes its per-frequency terms in float64)."""
    from fastdm.ops.characteristic import distance_from_sums
    from fastdm.ops.phase_sums import cos_sin_sums
    g = torch.Generator().manual_seed(11)
    n, ns, d, m = 40, 6, 200, 256
    x = F.normalize(torch.rand(n, d, generator=g, dtype=torch.float64) + 1, dim=1)
    xs0 = torch.cat([x[:2], F.normalize(torch.rand(ns - 2, d, generator=g, dtype=torch.float64)
                                        + 1, dim=1)])   # two synthetic rows are real ones
    draws = [t.double() for t in S.draws(0, 1, m, n, ns, d)]

    def reference():
        (fac, tri), sums = S.real_class(x, draws[0])
        xs = xs0.clone().requires_grad_(True)
        ph = S.SynPhases.apply(xs, x, fac, tri, *draws)
        loss = 300 * distance_from_sums(sums[None], torch.tensor([n]), cos_sin_sums(ph.T)[None],
                                        torch.tensor([ns]), 0.5, 0.7)[0]
        return loss.detach(), torch.autograd.grad(loss, xs)[0]

    want_loss, want_grad = reference()
    xx, (z, zs, wt) = x.to(dtype), (t.to(dtype) for t in draws)
    (fac, tri), sums = S.real_class(xx, z)
    xs = xs0.to(dtype).requires_grad_(True)
    loss = S.SpanLoss.apply(xs, xx, fac, tri, z, zs, wt, sums / n, 0.5, 0.7, 300 / m)
    (grad,) = torch.autograd.grad(3 * loss, xs)
    tol = 1e-7 if dtype == torch.float64 else 1e-4
    assert loss.dtype == dtype
    assert abs(float(loss) - float(want_loss)) <= tol * abs(float(want_loss))
    assert float((grad.double() / 3 - want_grad).norm() / want_grad.norm()) < tol


def test_roots_and_their_stability_under_rounding():
    """``root``: A A^T = K for positive definite and singular K; on a definite K it is the
    Cholesky factor, which moves with K continuously: G G^T = s I (every eigenvalue equal, where
    eigenvectors are arbitrary) perturbed at rounding level leaves the gradient's random part
    where it was."""
    g = torch.Generator().manual_seed(4)
    b = torch.randn(6, 6, generator=g, dtype=torch.float64)
    for k in (b @ b.T + torch.eye(6, dtype=torch.float64), b[:, :3] @ b[:, :3].T):
        a = S.root(k)
        torch.testing.assert_close(a @ a.T, k, atol=1e-10, rtol=0)
    k = b @ b.T + torch.eye(6, dtype=torch.float64)
    assert torch.equal(S.root(k), torch.linalg.cholesky(k))
    n, ns, d, m = 7, 4, 40, 64
    x, xs = _rows(n, d, g), _rows(ns, d, g).requires_grad_(True)
    z, zs, wt = S.draws(0, 5, m, n, ns, d)
    (fac, tri), _ = S.real_class(x, z)
    q, _ = torch.linalg.qr(torch.randn(m, ns, generator=g, dtype=torch.float64))
    gph = q.T.float().contiguous()  # orthonormal rows: G G^T = I
    grads = []
    for eps in (0.0, 1e-7):
        ph = S.SynPhases.apply(xs, x, fac, tri, z, zs, wt)
        gp = gph * (1 + eps * torch.randn(gph.shape, generator=g))
        grads.append(torch.autograd.grad(ph, xs, gp)[0])
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-4


@pytest.mark.slow  # 1000 draws (11 s); the quick tier checks the gradient's size end to end
def test_the_gradient_outside_the_spans_has_the_full_draws_distribution():
    """Given G, the full draw's gradient outside span(X, X_s) is normal with covariance
    P_o (G^T G): zero mean inside the spans and that covariance outside, over 1000 draws."""
    g = torch.Generator().manual_seed(5)
    n, ns, d, m = 3, 2, 8, 30
    x, xs = _rows(n, d, g), _rows(ns, d, g).requires_grad_(True)
    z, zs = torch.randn(m, n, generator=g), torch.randn(m, ns, generator=g)
    (fac, tri), _ = S.real_class(x, z)
    gph = torch.randn(m, ns, generator=g)
    grads = []
    for _ in range(1000):
        ph = S.SynPhases.apply(xs, x, fac, tri, z, zs, torch.randn(ns, d, generator=g)).T
        grads.append(torch.autograd.grad(ph, xs, gph)[0].double())
    grads = torch.stack(grads)                       # [draws, n_s, D]
    dev = grads - grads.mean(0)
    a = torch.cat([x, xs.detach()]).double()
    outside = torch.eye(d, dtype=torch.float64) - a.T @ torch.linalg.solve(a @ a.T, a)
    assert float((dev @ a.T).abs().max()) < 1e-4     # the spans' part does not vary
    cov = torch.einsum("bjd,bke->jkde", dev, dev) / len(grads)
    want = (gph.double().T @ gph.double())[:, :, None, None] * outside
    # a covariance over 1000 draws is off by ~5 % (Frobenius) by sampling alone; leaving out the
    # residuals' projection or the outside term entirely is off by 30 % and 100 %
    assert float((cov - want).norm() / want.norm()) < 0.12


def _objective(draw, m=48, ipc=3):
    cfg = SimpleNamespace(seed=7, frequencies=m, amplitude_weight=0.5, phase_weight=0.5,
                          frequency_draw=draw, ipc=ipc, factor=1, batch_real=6)
    return CharacteristicFunction(cfg, {"characteristic": "torch"}, torch.device("cpu"))


@pytest.mark.parametrize("iterations", [200])
def test_loss_and_gradient_size_have_the_full_draws_distribution(iterations):
    """The same features under both draws for 200 iterations each: the mean loss and the mean
    squared gradient agree within their sampling error (the gradient's size is mostly its part
    outside the spans, so this checks that part end to end)."""
    g = torch.Generator().manual_seed(11)
    d, counts_r, ns = 24, [6, 4], 3
    x = torch.randn(sum(counts_r), d, generator=g) + 1.0
    xs0 = torch.randn(2 * ns, d, generator=g) + 1.0
    rc = Counts(torch.tensor(counts_r), torch.tensor(counts_r))
    sc = Counts(torch.tensor([ns, ns]), torch.tensor([ns, ns]))
    stats = {}
    for draw in ("full", "span"):
        obj, losses, sq = _objective(draw), [], []
        for it in range(iterations):
            obj.begin(it)
            with torch.inference_mode():
                kept = obj.reduce_real(x, rc)
            kept = tuple(t.clone() for t in kept)
            xs = xs0.clone().requires_grad_(True)
            loss = obj.loss(kept, rc, xs, sc).sum()
            (grad,) = torch.autograd.grad(loss, xs)
            losses.append(float(loss))
            sq.append(float(grad.square().sum()))
        stats[draw] = torch.tensor(losses, dtype=torch.float64), torch.tensor(sq, dtype=torch.float64)
    for i in (0, 1):
        a, b = stats["full"][i], stats["span"][i]
        se = float((a.var() / len(a) + b.var() / len(b)).sqrt())
        assert abs(float(a.mean() - b.mean())) < 4 * se, (i, float(a.mean()), float(b.mean()), se)


def test_draws_are_per_iteration_and_need_room():
    """An iteration's draws depend on (seed, iteration) only (chunks and shards draw the same);
    the span needs n + n_s <= D."""
    a = S.draws(1, 2, 8, 4, 2, 6)
    assert all(torch.equal(u, v) for u, v in zip(a, S.draws(1, 2, 8, 4, 2, 6)))
    assert [tuple(t.shape) for t in a] == [(8, 4), (8, 2), (2, 6)]
    assert not torch.equal(a[0], S.draws(1, 3, 8, 4, 2, 6)[0])
    assert not torch.equal(a[0], S.draws(2, 2, 8, 4, 2, 6)[0])
    assert not torch.equal(a[0][:4], a[0][4:])  # the two halves come from two generators
    obj = _objective("span", ipc=3)
    obj.begin(0)
    with pytest.raises(FastDMError, match=r"fit in the feature space \(6 \+ 3 > 8"):
        obj.reduce_real(torch.randn(6, 8), Counts(torch.tensor([6]), torch.tensor([6])))


def test_span_is_the_cpu_default_and_chunking_does_not_change_it(three_classes):
    e1 = engine_for(three_classes, objective="ncfm", frequencies=32, class_chunk=1)
    if TEST_DEVICE.type == "cpu":
        assert e1.cfg.frequency_draw == "span"
    e1 = engine_for(three_classes, objective="ncfm", frequencies=32, class_chunk=1,
                    frequency_draw="span")
    e3 = engine_for(three_classes, objective="ncfm", frequencies=32, class_chunk=3,
                    frequency_draw="span")
    images = e1.initial_state().images
    l1, g1 = e1.loss_and_grad(images, 2)
    l3, g3 = e3.loss_and_grad(images, 2)
    torch.testing.assert_close(l1, l3, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1, g3, rtol=1e-3, atol=1e-6)
    with pytest.raises(FastDMError, match="frequency_draw must be one of full, span"):
        engine_for(three_classes, objective="ncfm", frequency_draw="half")
