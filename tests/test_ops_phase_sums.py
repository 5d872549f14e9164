"""Row sums of cos and sin (fastdm.ops.phase_sums, kernels/phase_sums.cpp) against float64 over
odd shapes, strided rows, several parts, phases past the kernel's range reduction, and its use
by NCFM's span draw on the CPU."""
import math

import pytest
import torch

from conftest import small_engine as engine_for
from fastdm import native
from fastdm.backend import native_for
from fastdm.errors import FastDMError
from fastdm.ops import phase_sums as P

pytestmark = pytest.mark.skipif(native.unavailable() is not None,
                                reason=f"native kernels: {native.unavailable()}")


def _want(*parts):
    return P.reference_cos_sin_sums(*(q.double() for q in parts))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 8), (65, 9), (129, 256), (4096, 31), (5, 0)])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_sums_match_float64(shape, scale):
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(*shape, generator=g) * scale
    got = P.cos_sin_sums(q, backend="native")
    assert got.shape == (2, shape[0]) and got.dtype == torch.float32
    # each cos or sin within 2 float32 ulps of 1: float32 rounding of the sum dominates
    torch.testing.assert_close(got.double(), _want(q), atol=2e-7 * max(shape[1], 1) + 1e-6, rtol=0)


def test_parts_strided_rows_and_the_torch_path_agree():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, 20, generator=g), torch.randn(37, 51, generator=g)[:, 3:40]  # row stride 51
    got = P.cos_sin_sums(a, b, backend="native")
    torch.testing.assert_close(got.double(), _want(a, b), atol=2e-5, rtol=0)
    torch.testing.assert_close(P.cos_sin_sums(a, b, backend="torch"), got, atol=2e-5, rtol=0)


def test_phases_beyond_the_range_reduction_and_non_finite_ones():
    """Rows with a |phase| above the kernel's limit (8192) are summed in double by the C library;
    a NaN or an infinity gives NaN, as torch's cos does."""
    q = torch.linspace(-3e4, 3e4, 5 * 17).reshape(5, 17)
    q[0] = torch.linspace(-8000, 8000, 17)         # under the limit: the polynomial path
    torch.testing.assert_close(P.cos_sin_sums(q, backend="native").double(), _want(q),
                               atol=2e-5, rtol=0)
    bad = torch.zeros(3, 9)
    bad[1, 4], bad[2, 0] = math.nan, math.inf
    got = P.cos_sin_sums(bad, backend="native")
    assert torch.isfinite(got[:, 0]).all() and torch.isnan(got[:, 1:]).all()


def test_errors_and_opcheck():
    with pytest.raises(FastDMError, match="float32 CPU matrices of 4 rows"):
        P.cos_sin_sums(torch.zeros(4, 3), torch.zeros(5, 3), backend="native")
    with pytest.raises(FastDMError, match="float32 CPU matrices"):
        P.cos_sin_sums(torch.zeros(4, 3, dtype=torch.float64), backend="native")
    with pytest.raises(FastDMError, match="no gradient"):
        P.cos_sin_sums(torch.zeros(4, 3, requires_grad=True), backend="native")
    with pytest.raises(FastDMError, match="backend must be"):
        P.cos_sin_sums(torch.zeros(4, 3), backend="triton")
    torch.library.opcheck(P._native, ([torch.randn(6, 5), torch.randn(6, 2)],))


def test_the_span_draw_takes_the_kernel_on_the_cpu(three_classes, monkeypatch):
    """The ncfm objective's real side calls the native sums in a run (and FASTDM_BACKEND=torch
    does not); on the same features both keep the same sums."""
    from fastdm.objectives.base import Counts
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    assert native_for("phase_sums", torch.device("cpu")) == "native"
    assert native_for("phase_sums", torch.device("meta")) == "torch"
    calls = []
    real = P._native
    monkeypatch.setattr(P, "_native", lambda parts: calls.append(len(parts)) or real(parts))
    kw = dict(objective="ncfm", frequencies=32, frequency_draw="span", device="cpu")
    e = engine_for(three_classes, **kw)
    assert e.objective.sums_backend == "native"
    e.loss_and_grad(e.initial_state().images, 1)
    assert calls, "the native sums were not called"
    monkeypatch.setenv("FASTDM_BACKEND", "torch")
    t = engine_for(three_classes, **kw)
    assert t.objective.sums_backend == "torch"
    calls.clear()
    g = torch.Generator().manual_seed(0)
    n = e.cfg.batch_real  # a class's real rows, at most the real batch
    feats = torch.rand(2 * n - 1, 64, generator=g) + 0.5
    counts = Counts(torch.tensor([n - 1, n]), torch.tensor([n - 1, n]))
    kept = []
    for obj in (e.objective, t.objective):
        obj.begin(3)
        with torch.inference_mode():
            kept.append(obj.reduce_real(feats, counts))
    assert len(calls) == 2  # the native objective's two classes, not the torch one's
    torch.testing.assert_close(kept[0][0], kept[1][0], atol=2e-5, rtol=0)
