"""The fused distance kernels (fastdm.ops.segments, linear_mmd, gaussian_mmd) against the torch path: per-class segment sums, DM's
linear loss and the multi-kernel Gaussian MMD, forward and synthetic-side gradients, over random
segment layouts (ipc 1, very unequal counts, several column blocks with a partial last one),
bf16/fp16, strided rows; chunked accumulation of the real side; float64 gradcheck of the torch
references; opcheck; torch.compile; the engine with both losses on both backends.

On the CPU the kernels run in Triton's interpreter (tests/conftest.py); FASTDM_TEST_DEVICE=cuda
runs the same tests compiled on a GPU. Inputs are fresh random draws; the seed is in the message.
"""

import pytest
import torch

from conftest import TEST_DEVICE as DEVICE
from fastdm import backend
from fastdm.errors import FastDMError
from fastdm.ops import gaussian_mmd as gauss
from fastdm.ops import linear_mmd as lin
from fastdm.ops import segments as seg
from fastdm.ops.segments import padded

if "linear_mmd" not in backend.FUSED_OPS:
    pytest.skip("triton does not import here: no fused kernels to test", allow_module_level=True)
# Layouts: (real counts, synthetic counts) per class.
LAYOUTS = {
    "ipc1": ([7, 3, 12], [1, 1, 1]),
    "one-class": ([40], [10]),
    "unequal": ([1, 90, 5, 33, 2], [3, 1, 17, 2, 6]),
    "equal": ([16] * 6, [4] * 6),
}
DIMS = [1, 37, 130]  # 130: three column blocks (64 under the interpreter), the last partial


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def features(counts, d, gen, dtype=torch.float32, scale=1.0):
    x = torch.randn(sum(counts), d, generator=gen) * scale
    return x.to(DEVICE, dtype)


def close(a, b, what, seed, atol, rtol):
    a, b = a.float(), b.float()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max |diff| {err:.3g} (seed {seed})"


# -- segment sums and the accumulable real side ------------------------------------------------
@pytest.mark.parametrize("layout", ["ipc1", "unequal", "zeros"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("splits", [None, 3])
def test_segment_sum_matches_torch(layout, d, splits):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    counts = [0, 5, 0, 40, 1] if layout == "zeros" else LAYOUTS[layout][0]
    x = features(counts, d, gen)
    got = seg.segment_sum(x, torch.tensor(counts), splits=splits, backend="triton")
    want = seg.segment_sum(x, torch.tensor(counts), backend="torch")
    assert got.dtype == torch.float32 and got.shape == (len(counts), d)
    close(got, want, "segment sums", seed, 1e-5, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_segment_sum_low_precision_accumulates_in_fp32(dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    counts = [300, 7]  # long sums: a bf16 accumulator would be off by percent
    x = features(counts, 37, gen, dtype) + 4
    got = seg.segment_sum(x, counts, backend="triton")
    want = seg.class_sums(x.double(), torch.tensor(counts, device=DEVICE))
    close(got, want, "low-precision segment sums", seed, 1e-3, 1e-5)


def test_segment_sum_strided_rows_and_gradient():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor([3, 11, 2])
    base = features([16], 90, gen)
    x = base[:, 5:80].requires_grad_(False)  # row stride 90, unit column stride
    close(seg.segment_sum(x, counts, backend="triton"), seg.class_sums(x, counts.to(DEVICE)),
          "strided rows", seed, 1e-5, 1e-5)
    y = base.clone().requires_grad_(True)
    g = torch.randn(3, 90, generator=gen).to(DEVICE)
    (gx,) = torch.autograd.grad((seg.segment_sum(y, counts, backend="triton") * g).sum(), y)
    close(gx, torch.repeat_interleave(g, counts.to(DEVICE), 0), "segment sum gradient", seed, 0, 0)


@pytest.mark.parametrize("be", ["torch", "triton"])
def test_chunked_accumulation_equals_one_shot(be):
    """Real features streamed in chunks that split classes anywhere give the one-shot sums."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    counts = [9, 30, 1, 14, 6]
    x = features(counts, 37, gen)
    one = seg.segment_sum(x, counts, backend=be)
    acc = torch.zeros(5, 37, device=DEVICE)
    # chunks: rows 0-19 (class 0 whole, 11 rows of class 1), rows 20-49 (rest of 1, 2, 10 of 3),
    # rows 50-59 (rest of 3, all of 4): each adds into its classes' rows of the sums
    for rows, part, first in ((slice(0, 20), [9, 11], 0), (slice(20, 50), [19, 1, 10], 1),
                              (slice(50, 60), [4, 6], 3)):
        out = acc[first:first + len(part)]
        assert seg.segment_sum(x[rows], part, out=out, backend=be) is out
    close(acc, one, "chunked sums", seed, 1e-5, 1e-5)
    syn = features([2] * 5, 37, gen)
    close(lin.linear_mmd(acc, counts, syn, [2] * 5, backend=be),
          lin.linear_mmd(one, counts, syn, [2] * 5, backend=be), "loss", seed, 1e-5, 1e-5)
    close(acc / torch.tensor(counts, device=DEVICE)[:, None],
          seg.class_means(x, torch.tensor(counts, device=DEVICE)), "means", seed, 1e-5, 1e-5)


# -- linear (DM) ---------------------------------------------------------------------------
def _linear_case(layout, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    rc, sc = LAYOUTS[layout]
    real = features(rc, d, gen, dtype)
    syn = features(sc, d, gen, dtype).requires_grad_(True)
    sums = seg.segment_sum(real, rc, backend="torch")
    weights = torch.rand(len(rc), generator=gen).to(DEVICE) + 0.5  # per-class upstream grads
    return sums, rc, syn, sc, weights


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("d", DIMS)
def test_linear_matches_torch(layout, d):
    seed = fresh_seed()
    sums, rc, syn, sc, w = _linear_case(layout, d, torch.float32, seed)
    out = {}
    for be in ("torch", "triton"):
        loss = lin.linear_mmd(sums, torch.tensor(rc), syn, torch.tensor(sc), backend=be)
        (g,) = torch.autograd.grad((loss * w).sum(), syn)
        out[be] = loss, g
    assert out["triton"][0].shape == (len(rc),) and out["triton"][0].dtype == torch.float32
    close(out["triton"][0], out["torch"][0], "linear loss", seed, 1e-5, 1e-5)
    close(out["triton"][1], out["torch"][1], "linear gradient", seed, 1e-6, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_low_precision(dtype):
    """bf16/fp16 features: fp32 accumulation on both paths; the gradient comes back in the
    features' dtype (one rounding)."""
    seed = fresh_seed()
    sums, rc, syn, sc, w = _linear_case("unequal", 130, dtype, seed)
    out = {}
    for be in ("torch", "triton"):
        loss = lin.linear_mmd(sums, rc, syn, sc, backend=be)
        (g,) = torch.autograd.grad((loss * w).sum(), syn)
        out[be] = loss, g
    assert out["triton"][1].dtype == dtype
    close(out["triton"][0], out["torch"][0], "loss", seed, 1e-4, 1e-5)
    close(out["triton"][1], out["torch"][1], "gradient", seed, 1e-3, 1e-2)


def test_linear_uses_the_kernels_by_default_when_triton_is_chosen(monkeypatch):
    monkeypatch.setenv("FASTDM_BACKEND", "triton")
    sums, rc, syn, sc, w = _linear_case("ipc1", 37, torch.float32, fresh_seed())
    calls = []
    real_fwd = lin._triton_linear
    monkeypatch.setattr(lin, "_triton_linear", lambda *a: calls.append(1) or real_fwd(*a))
    loss = lin.linear_mmd(sums, rc, syn, sc)
    assert calls and "fastdm_linear_mmd" in type(loss.grad_fn).__name__


# -- Gaussian ------------------------------------------------------------------------------
BANDWIDTHS = {"one": [4.0], "three": [1.0, 4.0, 16.0]}


def _gauss_case(layout, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    rc, sc = LAYOUTS[layout]
    # scale so that distances (~2 d) meet the bandwidths in their sensitive range
    s = 2.0 / max(1.0, d ** 0.5)
    real = features(rc, d, gen, dtype, s)
    syn = (features(sc, d, gen, dtype, s) + 0.3 * s).requires_grad_(True)
    weights = torch.rand(len(rc), generator=gen).to(DEVICE) + 0.5
    return real, rc, syn, sc, weights


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("bw", sorted(BANDWIDTHS))
def test_gaussian_matches_torch(layout, d, bw):
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case(layout, d, torch.float32, seed)
    out = {}
    for be in ("torch", "triton"):
        full = gauss.gaussian_mmd(real, rc, syn, sc, BANDWIDTHS[bw], backend=be)
        part = gauss.gaussian_mmd(real, rc, syn, sc, BANDWIDTHS[bw], real_term=False, backend=be)
        (g,) = torch.autograd.grad((part * w).sum(), syn)
        out[be] = full, part, g
    close(out["triton"][0], out["torch"][0], "gaussian MMD^2", seed, 2e-5, 1e-4)
    close(out["triton"][1], out["torch"][1], "gaussian MMD^2 without XX", seed, 2e-5, 1e-4)
    close(out["triton"][2], out["torch"][2], "gaussian gradient", seed, 1e-5, 1e-4)


@pytest.mark.parametrize("repeat", range(3))
def test_random_segment_layouts(repeat):
    """Fresh random layouts each run: class count, per-class real and synthetic counts, D."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, 7, (), generator=gen))
    rc = torch.randint(1, 71, (k,), generator=gen).tolist()
    sc = torch.randint(1, 21, (k,), generator=gen).tolist()
    d = int(torch.randint(1, 150, (), generator=gen))
    s = 2.0 / max(1.0, d ** 0.5)
    real = features(rc, d, gen, scale=s)
    syn = features(sc, d, gen, scale=s).requires_grad_(True)
    w = torch.rand(k, generator=gen).to(DEVICE) + 0.5
    out = {}
    for be in ("torch", "triton"):
        sums = seg.segment_sum(real, rc, backend=be)
        lin_loss = lin.linear_mmd(sums, rc, syn, sc, backend=be)
        gau = gauss.gaussian_mmd(real, rc, syn, sc, [0.5, 2.0], backend=be)
        out[be] = (sums, lin_loss, gau) + torch.autograd.grad(((lin_loss + gau) * w).sum(), syn)
    what = f"k={k} real={rc} syn={sc} D={d}"
    for i, name in enumerate(("sums", "linear", "gaussian", "gradient")):
        close(out["triton"][i], out["torch"][i], f"{name} ({what})", seed, 2e-5, 1e-4)


def test_gaussian_real_term_is_the_only_difference():
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("unequal", 37, torch.float32, seed)
    coefs = gauss.coefficients(BANDWIDTHS["three"]).float().expand(len(rc), 3)
    r, m = padded(real, torch.tensor(rc, device=DEVICE))
    xx = gauss._kernel_sums(r, m, r, m, coefs, True) / torch.tensor(rc, device=DEVICE).float() ** 2
    full = gauss.gaussian_mmd(real, rc, syn, sc, BANDWIDTHS["three"], backend="triton")
    part = gauss.gaussian_mmd(real, rc, syn, sc, BANDWIDTHS["three"], real_term=False, backend="triton")
    close(full - part, xx, "real-real term", seed, 2e-5, 1e-4)
    assert bool((full > -1e-5).all()), "a biased MMD^2 estimate is never negative"


def test_gaussian_of_identical_sets_is_zero():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = features([5, 9], 37, gen, scale=0.3)
    loss = gauss.gaussian_mmd(x, [5, 9], x.clone(), [5, 9], [1.0, 2.0], backend="triton")
    close(loss, torch.zeros(2), "MMD of a set with itself", seed, 2e-5, 0)


@pytest.mark.parametrize("be", ["torch", "triton"])
def test_gaussian_is_accurate_for_features_with_a_large_common_offset(be):
    """ReLU features share a large positive offset: ||a||^2 + ||b||^2 - 2 a.b would cancel it
    in fp32 (errors of ~1e-2 in d^2 here); shifting by a row of the class keeps fp32 close to
    float64."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    rc, sc = LAYOUTS["unequal"]
    real = 30 + 0.05 * torch.randn(sum(rc), 130, generator=gen, dtype=torch.float64)
    syn = 30.01 + 0.05 * torch.randn(sum(sc), 130, generator=gen, dtype=torch.float64)
    want = gauss.torch_gaussian_mmd(real, torch.tensor(rc), syn, torch.tensor(sc), [0.5, 1.0])
    got = gauss.gaussian_mmd(real.float().to(DEVICE), rc, syn.float().to(DEVICE), sc, [0.5, 1.0],
                           backend=be)
    close(got, want, "fp32 MMD^2 of offset features vs float64", seed, 1e-5, 1e-4)


def test_gaussian_per_class_bandwidths():
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("unequal", 37, torch.float32, seed)
    bw = gauss.relative_bandwidths(real, rc, [0.5, 1.0, 2.0]).float()
    assert bw.shape == (len(rc), 3)
    out = {}
    for be in ("torch", "triton"):
        loss = gauss.gaussian_mmd(real, rc, syn, sc, bw, backend=be)
        (g,) = torch.autograd.grad((loss * w).sum(), syn)
        out[be] = loss, g
    close(out["triton"][0], out["torch"][0], "per-class bandwidth loss", seed, 2e-5, 1e-4)
    close(out["triton"][1], out["torch"][1], "per-class bandwidth gradient", seed, 1e-5, 1e-4)
    # one class alone, with its own bandwidths as a list, gives the same value
    c0, c1 = sum(rc[:3]), sum(rc[:4])
    y0, y1 = sum(sc[:3]), sum(sc[:4])
    alone = gauss.gaussian_mmd(real[c0:c1], [rc[3]], syn[y0:y1], [sc[3]], bw[3].tolist(), backend="triton")
    close(alone, out["triton"][0][3:4], "class 3 alone", seed, 2e-5, 1e-4)


@pytest.mark.parametrize("be", ["torch", "triton"])
def test_relative_bandwidths_are_the_mean_pairwise_distance(be):
    gen = torch.Generator().manual_seed(3)
    rc = [4, 1, 9]
    x = torch.randn(14, 6, generator=gen, dtype=torch.float64) * 3 + 1
    got = gauss.relative_bandwidths(x.float().to(DEVICE), rc, [1.0, 2.0], backend=be).double().cpu()
    for c, (a, b) in enumerate(((0, 4), (4, 5), (5, 14))):
        d2 = torch.cdist(x[a:b], x[a:b]) ** 2
        scale = d2.mean().sqrt() if b - a > 1 else (x[a:b] ** 2).sum(1).clamp_min(1).sqrt()[0]
        assert torch.allclose(got[c], scale * torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-5), c


def test_relative_bandwidths_with_a_large_common_offset():
    """One pass (mean ||r||^2 - ||mean r||^2) would cancel the offset in fp32 (1.0 instead of
    0.318 here); two passes keep the float64 value."""
    gen = torch.Generator().manual_seed(4)
    x = 100 + 0.01 * torch.randn(64, 512, generator=gen, dtype=torch.float64)
    want = (torch.cdist(x, x) ** 2).mean().sqrt()
    for be in ("torch", "triton"):
        got = gauss.relative_bandwidths(x.float().to(DEVICE), [64], [1.0], backend=be)
        assert float(got) == pytest.approx(float(want), rel=1e-3), be


def test_gaussian_without_gradient_keeps_no_pair_weights(monkeypatch):
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("unequal", 37, torch.float32, seed)
    sizes = []
    inner = gauss._triton_gaussian
    monkeypatch.setattr(gauss, "_triton_gaussian", lambda *a: sizes.append(a[9]) or inner(*a))
    with torch.no_grad():
        a = gauss.gaussian_mmd(real, rc, syn, sc, [1.0], backend="triton")
    b = gauss.gaussian_mmd(real, rc, syn, sc, [1.0], backend="triton")
    close(a, b, "value without/with gradient", seed, 0, 0)
    assert sizes[0][:2] == [0, 0] and sizes[1][0] == sum(r * s for r, s in zip(rc, sc))


def test_gaussian_bf16():
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("unequal", 130, torch.bfloat16, seed)
    out = {}
    for be in ("torch", "triton"):
        loss = gauss.gaussian_mmd(real, rc, syn, sc, BANDWIDTHS["three"], backend=be)
        (g,) = torch.autograd.grad((loss * w).sum(), syn)
        out[be] = loss, g
    assert out["triton"][1].dtype == torch.bfloat16
    close(out["triton"][0], out["torch"][0], "bf16 loss", seed, 1e-4, 1e-3)
    close(out["triton"][1], out["torch"][1], "bf16 gradient", seed, 1e-3, 2e-2)


def test_gaussian_counts_as_tensors_on_the_device_or_lists():
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("equal", 37, torch.float32, seed)
    a = gauss.gaussian_mmd(real, torch.tensor(rc, device=DEVICE), syn, torch.tensor(sc, device=DEVICE),
                         [2.0], backend="triton")
    b = gauss.gaussian_mmd(real, rc, syn, sc, [2.0], backend="triton")
    close(a, b, "device vs host counts", seed, 0, 0)


# -- references ----------------------------------------------------------------------------
def test_torch_references_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(0)
    rc, sc = torch.tensor([3, 1, 5]), torch.tensor([2, 1, 3])
    real = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    syn = torch.randn(6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    sums = seg.class_sums(real.detach(), rc).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, y: lin.torch_linear_mmd(s, rc, y, sc), (sums, syn))
    assert torch.autograd.gradcheck(
        lambda r, y: gauss.torch_gaussian_mmd(r, rc, y, sc, [1.5, 3.0]), (real, syn))
    assert torch.autograd.gradcheck(
        lambda r, y: gauss.torch_gaussian_mmd(r, rc, y, sc, [2.0], real_term=False), (real, syn))


def test_torch_gaussian_reference_equals_a_direct_sum():
    """The batched reference against the definition, pair by pair."""
    gen = torch.Generator().manual_seed(1)
    rc, sc = [4, 2], [3, 1]
    real = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    syn = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    bws = [1.0, 3.0]

    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (2 * s * s)) for s in bws)

    want = []
    for c in range(2):
        r = real[sum(rc[:c]):sum(rc[:c + 1])]
        s = syn[sum(sc[:c]):sum(sc[:c + 1])]
        xx = sum(k(a, b) for a in r for b in r) / len(r) ** 2
        yy = sum(k(a, b) for a in s for b in s) / len(s) ** 2
        xy = sum(k(a, b) for a in r for b in s) / (len(r) * len(s))
        want.append(xx + yy - 2 * xy)
    got = gauss.torch_gaussian_mmd(real, torch.tensor(rc), syn, torch.tensor(sc), bws)
    assert torch.allclose(got, torch.stack(want), atol=1e-12)


# -- integration: opcheck, compile, errors ---------------------------------------------------
@pytest.mark.parametrize("be", ["torch", "triton"])
def test_opcheck(be):
    gen = torch.Generator().manual_seed(2)
    rc, sc = torch.tensor([5, 2]), torch.tensor([2, 3])
    real, syn = features([5, 2], 20, gen), features([2, 3], 20, gen).requires_grad_(True)
    off = lambda c: (torch.cumsum(c, 0) - c).to(DEVICE)  # noqa: E731
    rcd, scd = rc.to(DEVICE), sc.to(DEVICE)
    torch.library.opcheck(seg._segsum_op, (real, off(rc), rcd, 0, be))
    sums = seg.class_sums(real, rcd)
    torch.library.opcheck(lin._linear_op, (sums, rcd, syn, off(sc), scd, be))
    coef = gauss.coefficients(torch.tensor([[1.0, 3.0], [2.0, 0.5]])).to(DEVICE)
    sizes = [16, 13, 5, 3]  # sum nr*ns, sum ns^2, max nr, max ns
    wxy_off, wyy_off = torch.tensor([0, 10], device=DEVICE), torch.tensor([0, 4], device=DEVICE)
    torch.library.opcheck(gauss._gauss_op, (real, off(rc), rcd, syn, off(sc), scd, coef, wxy_off,
                                          wyy_off, sizes, True, be),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_fullgraph():
    seed = fresh_seed()
    real, rc, syn, sc, w = _gauss_case("equal", 37, torch.float32, seed)
    sums = seg.segment_sum(real, rc, backend="torch")

    def both(y):
        return (lin.linear_mmd(sums, rc, y, sc, backend="triton").sum()
                + gauss.gaussian_mmd(real, rc, y, sc, [2.0], backend="triton").sum())

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad(compiled(syn), syn)
    (g2,) = torch.autograd.grad(both(syn), syn)
    close(g1, g2, "compiled gradient", seed, 1e-6, 1e-5)


def test_bad_inputs_are_clear_errors():
    x = torch.randn(6, 4, device=DEVICE)
    sums = torch.randn(2, 4, device=DEVICE)
    with pytest.raises(FastDMError, match="sum to 5, but there are 6"):
        seg.segment_sum(x, [2, 3])
    with pytest.raises(FastDMError, match="2-D"):
        seg.segment_sum(x[None], [6])
    with pytest.raises(FastDMError, match="integer"):
        seg.segment_sum(x, torch.tensor([3.0, 3.0]))
    with pytest.raises(FastDMError, match="float32, bfloat16 or float16"):
        seg.segment_sum(x.long(), [6])
    with pytest.raises(FastDMError, match="at least 1 synthetic"):
        lin.linear_mmd(sums, [3, 3], x, [6, 0])
    with pytest.raises(FastDMError, match="at least 1 real"):
        lin.linear_mmd(sums, [0, 3], x, [3, 3])
    with pytest.raises(FastDMError, match="same embedder"):
        lin.linear_mmd(sums[:, :3], [3, 3], x, [3, 3])
    with pytest.raises(FastDMError, match="must agree"):
        lin.linear_mmd(sums, [3, 3, 1], x, [3, 3])
    with pytest.raises(FastDMError, match="bandwidths"):
        gauss.gaussian_mmd(x, [3, 3], x, [3, 3], [])
    with pytest.raises(FastDMError, match="bandwidths"):
        gauss.gaussian_mmd(x, [3, 3], x, [3, 3], [1.0, -2.0])
    with pytest.raises(FastDMError, match="bandwidths"):
        gauss.gaussian_mmd(x, [3, 3], x, [3, 3], "wide")
    with pytest.raises(FastDMError, match="same classes"):
        gauss.gaussian_mmd(x, [3, 3], x, [6], [1.0])
    with pytest.raises(FastDMError, match="backend"):
        lin.linear_mmd(sums, [3, 3], x, [3, 3], backend="cuda")
    with pytest.raises(FastDMError, match="synthetic features only"):
        gauss.gaussian_mmd(x.clone().requires_grad_(True), [3, 3], x, [3, 3], [1.0], backend="triton")
    with pytest.raises(FastDMError, match="out must be"):
        seg.segment_sum(x, [6], out=torch.zeros(1, 5, device=DEVICE))
    with pytest.raises(FastDMError, match="bandwidth multiples"):
        gauss.relative_bandwidths(x, [3, 3], [1.0, 0.0])
    with pytest.raises(FastDMError, match="positive and finite"):
        gauss.gaussian_mmd(x, [3, 3], x, [3, 3], torch.tensor([[1.0], [float("nan")]]))


def test_torch_references_take_count_lists():
    gen = torch.Generator().manual_seed(5)
    real, syn = torch.randn(5, 4, generator=gen), torch.randn(3, 4, generator=gen)
    sums = seg.class_sums(real, torch.tensor([2, 3]))
    assert torch.equal(lin.torch_linear_mmd(sums, [2, 3], syn, [1, 2]),
                       lin.torch_linear_mmd(sums, torch.tensor([2, 3]), syn, torch.tensor([1, 2])))
    assert torch.equal(gauss.torch_gaussian_mmd(real, [2, 3], syn, [1, 2], [1.0]),
                       gauss.torch_gaussian_mmd(real, torch.tensor([2, 3]), syn, torch.tensor([1, 2]), [1.0]))
