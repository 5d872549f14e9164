"""The embedder: a ConvNet forward (real side, no grad) and forward + input gradient (synthetic)."""
import pytest
import torch

from fastdm import rng
from fastdm.models import build_model

# model, batch, channels, pixels
SIZES = {"tiny": ("ConvNetD2", 4, 3, 16), "small": ("ConvNet", 256, 3, 32),
         "large": ("ConvNetD4", 512, 3, 64)}


@pytest.fixture
def net_and_batch(device, size):
    model, n, ch, px = SIZES[size]
    net = build_model(model, ch, 10, (px, px), 0, rng.NET, device=device).requires_grad_(False)
    return net, torch.randn(n, ch, px, px, device=device)


def test_embed_forward(timed, net_and_batch):
    net, x = net_and_batch
    with torch.no_grad():
        out = timed(net.embed, x)
    assert out.shape[0] == x.shape[0]


def test_embed_forward_backward(timed, net_and_batch):
    net, x = net_and_batch
    x = x.requires_grad_(True)

    def fwd_bwd():
        return torch.autograd.grad(net.embed(x).mean(0).square().sum(), x)[0]

    assert timed(fwd_bwd).shape == x.shape
