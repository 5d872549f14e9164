"""The NHWC instance norm -> ReLU -> 2x2 pool block (fastdm.ops.norm_pool, kernels/norm_pool.cpp)
against the modules in float64 over odd shapes, and its use by the real branch and the test pass."""
import pytest
import torch

from fastdm import native
from fastdm.errors import FastDMError
from fastdm.ops import norm_pool as P

pytestmark = pytest.mark.skipif(native.unavailable() is not None,
                                reason=f"native kernels: {native.unavailable()}")

SHAPES = [(1, 1, 2, 2), (3, 5, 7, 9), (2, 16, 8, 8), (1, 3, 2, 3), (2, 128, 14, 14), (3, 128, 7, 7),
          (1, 33, 5, 4), (4, 7, 3, 11)]


def _case(shape, seed, offset=40.0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    # a large mean: a one-pass E[x^2] - E[x]^2 would lose the variance
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + offset,
            torch.randn(c, generator=g, dtype=torch.float64),
            torch.randn(c, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_block_matches_the_modules_in_float64(shape, channels_last):
    x, gamma, beta = _case(shape, sum(shape))
    want = P.reference_instance_norm_relu_pool(x, gamma, beta, 1e-5)
    xf = x.float().contiguous(memory_format=torch.channels_last) if channels_last else x.float()
    got = P.instance_norm_relu_pool(xf, gamma.float(), beta.float(), 1e-5)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    # the modules' own float32 error here is 1e-4 to 1e-3 (their statistics in float32)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 128, 14, 14), (1, 33, 5, 4), (4, 7, 3, 11)])
@pytest.mark.parametrize("power", [1.0, 3.0])
def test_channel_sums_match_the_modules_in_float64(shape, power):
    """DataDAM's channel sums of relu(y)^p at every pre-pool pixel, odd last rows and columns
    (which the pool drops) included."""
    x, gamma, beta = _case(shape, sum(shape) + 3, offset=1.0)
    want, want_sums = P.reference_instance_norm_relu_pool(x, gamma, beta, 1e-5, channel_power=power)
    got, sums = P.instance_norm_relu_pool(x.float().contiguous(memory_format=torch.channels_last),
                                          gamma.float(), beta.float(), 1e-5, channel_power=power)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    assert sums.shape == (shape[0], shape[2], shape[3]) and sums.dtype == torch.float32
    torch.testing.assert_close(sums.double(), want_sums, atol=1e-5, rtol=2e-6)
    with pytest.raises(FastDMError, match="channel_power must be positive"):
        P.instance_norm_relu_pool(x.float(), gamma.float(), beta.float(), channel_power=-1.0)
    torch.library.opcheck(P._block_sums, (x.float().contiguous(memory_format=torch.channels_last),
                                          gamma.float(), beta.float(), 1e-5, power),
                          test_utils=("test_schema", "test_faketensor"))


def test_constant_planes_and_eps():
    """A constant plane has zero variance: eps alone sets the scale, as GroupNorm's."""
    x = torch.full((2, 3, 4, 6), 5.0)
    x[1, 2] = torch.arange(24.0).view(4, 6)
    gamma, beta = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.2])
    for eps in (1e-5, 0.1):
        want = P.reference_instance_norm_relu_pool(x.double(), gamma.double(), beta.double(), eps)
        got = P.instance_norm_relu_pool(x, gamma, beta, eps)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_errors_and_opcheck():
    x, c = torch.randn(2, 3, 4, 4), torch.ones(3)
    with pytest.raises(FastDMError, match="4-D float32 CPU"):
        P.instance_norm_relu_pool(x.double(), c, c)
    with pytest.raises(FastDMError, match="4-D float32 CPU"):
        P.instance_norm_relu_pool(x[0], c, c)
    with pytest.raises(FastDMError, match="need 3 entries"):
        P.instance_norm_relu_pool(x, torch.ones(4), c)
    with pytest.raises(FastDMError, match="smaller than the 2x2 pool"):
        P.instance_norm_relu_pool(torch.randn(2, 3, 1, 4), c, c)
    with pytest.raises(FastDMError, match="forward only"):
        P.instance_norm_relu_pool(x, c.clone().requires_grad_(), c)
    with torch.no_grad():  # parameters that require grad are fine without autograd
        P.instance_norm_relu_pool(x, c.clone().requires_grad_(), c)
    torch.library.opcheck(P._block, (x.contiguous(memory_format=torch.channels_last), c, c, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))


def test_the_test_pass_takes_the_block(monkeypatch):
    """Evaluation's test pass (conv winograd) on an MNIST-shaped ConvNet calls the block for the
    second and third blocks (the first is the first-block kernel) and agrees with the modules."""
    import fastdm.models.fast_embed as fe
    from fastdm.models import build_model
    net = build_model("ConvNet", 1, 10, (28, 28), 0, 1).eval()
    calls, real = [], fe.instance_norm_relu_pool
    monkeypatch.setattr(fe, "instance_norm_relu_pool",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        embed = fe.winograd_embed(net, fe.winograd_layers(net, (28, 28)), fe.first_block_layers(net))
        got, want = embed(x), net.embed(x)
    assert [tuple(s) for s in calls] == [(5, 128, 16, 16), (5, 128, 8, 8)]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
