"""The first block (fastdm.ops.first_block, kernels/first_block.cpp: conv -> instance norm
-> ReLU -> pool) against the modules in float64 over odd shapes and paddings; Winograd with
gradients (fastdm.ops.winograd) against F.conv2d; their use by condensation and evaluation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdm import native
from fastdm.errors import FastDMError
from fastdm.models import build_model
from fastdm.models import fast_embed as fe
from fastdm.ops import first_block as C
from fastdm.ops import winograd as W

pytestmark = pytest.mark.skipif(native.unavailable() is not None,
                                reason=f"native kernels: {native.unavailable()}")

SHAPES = [  # N, C, K, H, W, padding
    (1, 1, 1, 1, 1, 1), (3, 1, 5, 7, 9, 1), (2, 1, 128, 28, 28, 3), (4, 1, 3, 5, 6, 0),
    (1, 1, 17, 8, 8, 3), (5, 1, 33, 13, 4, 2), (2, 1, 2, 3, 3, 0), (2, 3, 128, 32, 32, 1),
    (3, 3, 7, 9, 11, 1), (2, 2, 5, 6, 7, 2), (1, 4, 9, 5, 8, 0),
]


def _case(n, c, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g, dtype=torch.float64),
            torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64) / (3 * c ** 0.5),
            torch.randn(k, generator=g, dtype=torch.float64))


def _rel(a, ref):
    return float((a.detach().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


WINO_SHAPES = [  # N, C, K, H, W, padding
    (2, 16, 5, 7, 9, 1), (1, 20, 17, 6, 6, 0), (3, 16, 16, 5, 11, 2), (2, 33, 8, 16, 16, 1),
]


@pytest.mark.parametrize("shape", WINO_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_with_gradients_matches_conv2d_in_float64(shape, with_bias):
    n, c, k, h, w, pad = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64) / (9 * c) ** 0.5
    b = torch.randn(k, generator=g, dtype=torch.float64) if with_bias else None
    ref_leaves = [t.clone().requires_grad_() for t in (x, wt) + ((b,) if with_bias else ())]
    ref = F.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_bias else None, padding=pad)
    leaves = [t.float().requires_grad_() for t in (x, wt) + ((b,) if with_bias else ())]
    got = W.winograd_conv2d_grad(leaves[0], leaves[1], leaves[2] if with_bias else None, pad)
    assert _rel(got, ref.detach()) < 2e-5
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * up).sum().backward()
    (got * up.float()).sum().backward()
    for leaf, want in zip(leaves, ref_leaves):
        assert _rel(leaf.grad, want.grad) < 2e-5


def test_winograd_with_gradients_errors_and_opcheck():
    x, wt = torch.randn(2, 16, 6, 6), torch.randn(4, 16, 3, 3)
    with pytest.raises(FastDMError, match="padding 3 > 2"):
        W.winograd_conv2d_grad(x, wt, None, 3)
    torch.library.opcheck(W._winograd_grad_op, (x.requires_grad_(), wt.requires_grad_(), None, 1))


POOLED = [s for s in SHAPES if min(s[3], s[4]) + 2 * s[5] - 2 >= 2]


@pytest.mark.parametrize("shape", POOLED)
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_matches_the_modules_in_float64(shape, channels_last):
    n, c, k, h, w, pad = shape
    x, wt, b = _case(n, c, k, h, w, seed=sum(shape) + 1)
    g = torch.Generator().manual_seed(3)
    gamma, beta = torch.rand(k, generator=g, dtype=torch.float64) + 0.5, torch.randn(k, generator=g, dtype=torch.float64)
    ref = C.reference_first_block(x, wt, b, gamma, beta, 1e-5, pad)
    got = C.first_block(*(t.float() for t in (x, wt, b, gamma, beta)), 1e-5, pad,
                                   channels_last)
    assert got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last) if channels_last else got.is_contiguous()
    assert _rel(got, ref) < 2e-6


@pytest.mark.parametrize("shape", [(3, 3, 40, 9, 11, 1), (2, 1, 128, 12, 12, 1), (1, 2, 32, 7, 6, 0)])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_block_channel_sums_match_the_modules_in_float64(shape, power):
    """DataDAM's channel sums of relu(y)^p at every pre-pool pixel (an odd last row and column
    too), with a short last group of channels (40 = 32 + 8)."""
    n, c, k, h, w, pad = shape
    x, wt, b = _case(n, c, k, h, w, seed=sum(shape) + 7)
    g = torch.Generator().manual_seed(5)
    gamma, beta = torch.rand(k, generator=g, dtype=torch.float64) + 0.5, torch.randn(k, generator=g, dtype=torch.float64)
    ref, ref_sums = C.reference_first_block(x, wt, b, gamma, beta, 1e-5, pad, channel_power=power)
    for channels_last in (False, True):
        got, sums = C.first_block(*(t.float() for t in (x, wt, b, gamma, beta)), 1e-5, pad,
                                  channels_last, channel_power=power)
        assert _rel(got, ref) < 2e-6 and sums.shape == ref_sums.shape == (n, h + 2 * pad - 2, w + 2 * pad - 2)
        assert _rel(sums, ref_sums) < 2e-6
    with pytest.raises(FastDMError, match="channel_power must be positive"):
        C.first_block(*(t.float() for t in (x, wt, b, gamma, beta)), 1e-5, pad, channel_power=0)
    with pytest.raises(FastDMError, match="forward only"):
        C.first_block(x.float(), wt.float().requires_grad_(), None, gamma.float(), beta.float(),
                      1e-5, pad, channel_power=1.0)
    torch.library.opcheck(C._block_sums, (x.float(), wt.float(), b.float(), gamma.float(),
                                          beta.float(), 1e-5, pad, True, power),
                          test_utils=("test_schema", "test_faketensor"))


def test_block_with_a_constant_plane_and_large_offsets():
    # a zero weight gives constant planes (variance 0: eps alone); a large bias tests the
    # two-pass statistics (no E[x^2] - E[x]^2 cancellation)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64, generator=g)
    wt = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=g)
    wt[0] = 0
    b = torch.tensor([1.0, 3e3, -2e3, 0.5], dtype=torch.float64)
    gamma, beta = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    ref = C.reference_first_block(x, wt, b, gamma, beta, 1e-5, 1)
    got = C.first_block(*(t.float() for t in (x, wt, b, gamma, beta)), 1e-5, 1)
    # the float32 conv output of a 3e3 bias is rounded to ~2e-4 already: as close as the modules
    # (the kernel adds the bias after the taps, as oneDNN does; added first, 2 of 300 random
    # draws measured over twice the modules' error)
    modules = C.reference_first_block(*(t.float() for t in (x, wt, b, gamma, beta)), 1e-5, 1)
    assert (got.double() - ref).abs().max() <= 2 * (modules.double() - ref).abs().max() + 1e-6
    assert (got[:, 0] - beta[0]).abs().max() < 1e-6  # a constant plane: normalised to beta


def test_clear_errors():
    x, wt = torch.randn(2, 1, 5, 5), torch.randn(4, 1, 3, 3)
    one, zero = torch.ones(4), torch.zeros(4)
    with pytest.raises(FastDMError, match="x has 3 channels, the weight expects 1"):
        C.first_block(torch.randn(2, 3, 5, 5), wt, None, one, zero)
    with pytest.raises(FastDMError, match="1 to 4 input channels, got 5"):
        C.first_block(torch.randn(2, 5, 5, 5), torch.randn(4, 5, 3, 3), None, one, zero)
    with pytest.raises(FastDMError, match="float32 only"):
        C.first_block(x.double(), wt.double(), None, one, zero)
    with pytest.raises(FastDMError, match="bias of shape"):
        C.first_block(x, wt, torch.randn(3), one, zero)
    with pytest.raises(FastDMError, match="padding must be"):
        C.first_block(x, wt, None, one, zero, padding=-1)
    with pytest.raises(FastDMError, match="smaller than the 3x3"):
        C.first_block(torch.randn(1, 1, 2, 2), wt, None, one, zero, padding=0)
    with pytest.raises(FastDMError, match="no gradient for its input x"):
        C.first_block(x.clone().requires_grad_(), wt, None, one, zero)
    with pytest.raises(FastDMError, match="gamma and beta"):
        C.first_block(x, wt, None, torch.ones(3), zero)
    with pytest.raises(FastDMError, match="smaller than the 2x2 pool"):
        C.first_block(torch.randn(1, 1, 3, 3), wt, None, one, zero, padding=0)


@pytest.mark.parametrize("shape", POOLED)
@pytest.mark.parametrize("with_bias", [True, False])
def test_block_parameter_gradients_match_the_modules_in_float64(shape, with_bias):
    """The backward (evaluation's training step): gradients for the weight, bias, gamma and beta
    against the modules' in float64, odd sizes and paddings included (rows and columns the
    floor pool drops get no gradient)."""
    n, c, k, h, w, pad = shape
    x, wt, b = _case(n, c, k, h, w, seed=sum(shape) + 7)
    g = torch.Generator().manual_seed(5)
    gamma = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(k, generator=g, dtype=torch.float64) * 0.3
    params64 = [t.clone().requires_grad_() for t in (wt, b, gamma, beta)]
    if not with_bias:
        params64[1] = None
    ref_out = C.reference_first_block(x, *params64, 1e-5, pad)
    up = torch.randn(ref_out.shape, generator=g, dtype=torch.float64)
    used = [p for p in params64 if p is not None]
    ref = torch.autograd.grad(ref_out, used, up)
    params32 = [None if p is None else p.detach().float().requires_grad_() for p in params64]
    out = C.first_block(x.float(), *params32, 1e-5, pad)
    got = torch.autograd.grad(out, [p for p in params32 if p is not None], up.float())
    # against the largest gradient: a conv bias before an instance norm has a true gradient of
    # 0 (the norm removes it), so its computed one is rounding noise
    scale = max(float(r.abs().max()) for r in ref)
    for a, r in zip(got, ref):
        assert a.shape == r.shape and float((a.double() - r).abs().max()) / scale < 1e-5


def test_no_gradient_reaches_the_images_by_mistake():
    x, wt, b = (t.float() for t in _case(2, 1, 3, 6, 5, seed=4))
    out = C._block(x.requires_grad_(), wt.requires_grad_(), b, torch.ones(3), torch.zeros(3), 1e-5, 1, False)
    with pytest.raises(FastDMError, match="no gradient for its input x"):
        out.sum().backward()


def test_opcheck():
    x, wt, b = (t.float() for t in _case(2, 3, 3, 6, 5, seed=2))
    torch.library.opcheck(C._block, (x, wt, b, torch.ones(3), torch.zeros(3), 1e-5, 2, True))
    grads = [t.requires_grad_() for t in (wt.clone(), b.clone(), torch.rand(3) + 0.5, torch.randn(3))]
    torch.library.opcheck(C._block, (x, *grads, 1e-5, 1, False))
    torch.library.opcheck(C._block_grads, (x, wt, None, torch.ones(3), torch.zeros(3), 1e-5, 1,
                                           torch.randn(2, 3, 3, 2)))


def test_eligibility_and_layers():
    assert C.eligible(nn.Conv2d(1, 8, 3, padding=3))
    assert C.eligible(nn.Conv2d(3, 8, 3, padding=1)) and C.eligible(nn.Conv2d(4, 8, 3, padding=1))
    assert not C.eligible(nn.Conv2d(5, 8, 3, padding=1))  # wider first layers keep oneDNN/Winograd
    assert not C.eligible(nn.Conv2d(1, 8, 3, stride=2))
    assert not C.eligible(nn.Conv2d(1, 8, 5))
    assert not C.eligible(nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"))
    assert fe.first_block_layers(build_model("ConvNet", 1, 10, (28, 28), 0, 1)) == (0,)
    assert fe.first_block_layers(build_model("ConvNet", 3, 10, (32, 32), 0, 1)) == (0,)
    assert fe.first_block_layers(build_model("ResNet18", 1, 10, (28, 28), 0, 1)) == ()


@pytest.mark.parametrize("model", ["ConvNet", "ConvNetNP"] + [  # the others in the slow tier
    pytest.param(m, marks=pytest.mark.slow) for m in ("ConvNetBN", "ConvNetD1", "ConvNetW32")])
@pytest.mark.parametrize("channels,size", [(1, (28, 28)), (1, (8, 8)), (3, (16, 16))])
def test_native_embeds_equal_the_modules(model, channels, size, monkeypatch):
    monkeypatch.setattr(fe, "GRAD_MIN_BATCH", 1)  # Winograd's gradients on these 5 images
    net = build_model(model, channels, 10, size, 0, 1)
    net.train()
    first, layers = fe.first_block_layers(net), fe.winograd_layers(net, size)
    assert first == (0,)  # 1 and 3 channels alike
    x = torch.randn(5, channels, *size, generator=torch.Generator().manual_seed(len(model) + size[0]))
    want = net.embed(x)
    with torch.inference_mode():  # the real branch: fused block and Winograd where they apply
        torch.testing.assert_close(fe.tapped_embed(net, layers, first=first)(x), want,
                                   atol=1e-4, rtol=1e-4)
    # the synthetic branch: gradients to the input; the training step: to the weights; both
    # against the modules in float64. Winograd rounds at ~1e-5 of the outputs, and where ReLU
    # kinks sit that close to zero (ConvNetNP: no pooling averages them out) a 1e-5 change of
    # the weights moves the exact gradient by up to 1e-2: the bound is the larger of 1e-4, 10x
    # the float32 modules' own error and 10x that sensitivity, measured here in float64.
    import copy

    def model64(noise=0.0):
        m = copy.deepcopy(net).double()
        if noise:
            g = torch.Generator().manual_seed(11)
            with torch.no_grad():
                for p in m.parameters():
                    p.mul_(1 + noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return m

    def input_grad(fn, dtype):
        xx = x.detach().to(dtype).clone().requires_grad_()
        fn(xx).square().sum().backward()
        return xx.grad

    ref = input_grad(model64().embed, torch.float64)
    bound = max(1e-4, 10 * _rel(input_grad(net.embed, torch.float32), ref),
                10 * _rel(input_grad(model64(1e-5).embed, torch.float64), ref))
    got = input_grad(fe.tapped_embed(net, layers, first=first, grad=True), torch.float32)
    assert _rel(got, ref) <= bound

    def weight_grads(fn, model, dtype):
        model.zero_grad()
        fn(x.detach().to(dtype)).sum().backward()
        return [p.grad.double() for p in model.parameters()]

    m64, moved = model64(), model64(1e-5)
    ref = weight_grads(m64, m64, torch.float64)
    # against the largest gradient: a conv bias before an instance norm has a true gradient of
    # 0 (the norm removes it), so its computed one is rounding noise
    scale = max(float(r.abs().max()) for r in ref)

    def err(grads):
        return max(float((g - r).abs().max()) for g, r in zip(grads, ref)) / scale
    bound = max(1e-4, 10 * err(weight_grads(net, net, torch.float32)),
                10 * err(weight_grads(moved, moved, torch.float64)))
    assert err(weight_grads(fe.native_forward(net, layers, first), net, torch.float32)) <= bound


def test_a_tapped_first_norm_keeps_the_modules(monkeypatch):
    net = build_model("ConvNet", 1, 10, (12, 12), 0, 1)
    calls = []
    real = C.first_block
    monkeypatch.setattr(C, "first_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        emb, norm = fe.tapped_embed(net, first=(0,), taps=(1,), tap=torch.clone)(x)  # ReLU is in place
        torch.testing.assert_close(norm, net.features[1](net.features[0](x)), atol=1e-5, rtol=1e-5)
        assert calls == []
        emb2, pooled = fe.tapped_embed(net, first=(0,), taps=(3,))(x)  # the block's own output
        assert calls == [1]
        torch.testing.assert_close(pooled, net.features[:4](x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(emb, emb2, atol=1e-5, rtol=1e-5)


def _gray_engine(data, **kw):
    from conftest import engine_for
    return engine_for(data, **{"ipc": 2, "iterations": 6, "batch_real": 7, "model": "ConvNetW32",
                               "device": "cpu", "class_chunk": 3, **kw})


def test_engine_takes_the_native_paths_in_both_branches_and_agrees_with_direct(monkeypatch):
    import fastdm.models.fast_embed as fast_embed
    from conftest import make_dataset
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    data = make_dataset(channels=1, size=(12, 12))
    calls = {"block": 0, "grad": 0}
    real_block, real_grad = C.first_block, fast_embed.winograd_conv2d_grad
    monkeypatch.setattr(C, "first_block",
                        lambda *a, **k: calls.__setitem__("block", calls["block"] + 1) or real_block(*a, **k))
    monkeypatch.setattr(fast_embed, "winograd_conv2d_grad",
                        lambda *a: calls.__setitem__("grad", calls["grad"] + 1) or real_grad(*a))
    monkeypatch.setattr(fast_embed, "GRAD_MIN_BATCH", 1)  # the test's batches are small
    e = _gray_engine(data, compile="off")  # conv auto: the native kernels on the CPU
    assert e.plan.conv == "winograd" and e.plan.first_block_layers == (0,) and e.plan.winograd_layers
    d = _gray_engine(data, compile="off", conv="direct")
    assert d.plan.first_block_layers == () and d.real_embed is d.embed
    images = e.initial_state().images
    got = e.loss_and_grad(images, 3)
    # 2 chunks: the real branch's first block fused, the synthetic branch's Winograd layers
    assert calls == {"block": 2, "grad": 2 * len(e.plan.winograd_layers)}
    want = d.loss_and_grad(images, 3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-6)
    # below GRAD_MIN_BATCH the synthetic branch keeps the modules
    monkeypatch.setattr(fast_embed, "GRAD_MIN_BATCH", 7)
    calls.update(block=0, grad=0)
    _gray_engine(data, compile="off").loss_and_grad(images, 3)
    assert calls == {"block": 2, "grad": 0}


def test_evaluation_trains_and_tests_with_the_native_paths(monkeypatch):
    from conftest import make_dataset
    from fastdm.evaluation import EvalConfig, evaluate_images
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    data = make_dataset(channels=1, size=(12, 12))
    monkeypatch.setattr(fe, "GRAD_MIN_BATCH", 1)  # the test's batches are small
    calls = {"block": 0, "grad": 0}
    real_block, real_grad = C._block, W._winograd_grad_op
    monkeypatch.setattr(C, "_block", lambda *a: calls.__setitem__("block", calls["block"] + 1) or real_block(*a))
    monkeypatch.setattr(W, "_winograd_grad_op",
                        lambda *a: calls.__setitem__("grad", calls["grad"] + 1) or real_grad(*a))
    x = data.normalize(data.train.images[:8], "cpu")
    y = data.train.labels[:8]
    res = {}
    for conv in ("auto", "direct"):
        cfg = EvalConfig(model="ConvNetW32", models=1, epochs=3, batch_train=4, conv=conv,
                         compile="off", strategy="none")
        res[conv] = evaluate_images(x, y, data, cfg, "cpu", progress=False)
        if conv == "auto":
            # epochs + 1 passes (as the reference) x 2 steps: the first block in each step and
            # the test pass; the Winograd layers in each step
            assert res[conv]["test_conv"] == "winograd"
            assert calls == {"block": 8 + 1, "grad": 8 * 2}
    assert res["direct"]["test_conv"] == "direct" and calls["block"] == 9
    assert res["auto"]["accs"] == pytest.approx(res["direct"]["accs"], abs=0.05)
