"""The DM loss and the Gaussian MMD, forward + backward for the synthetic side: fused (Triton)
and torch paths, the plain torch expression, and a cdist-based Gaussian MMD.

Triton rows need CUDA; on the CPU they run only under TRITON_INTERPRET=1 (CI executes them once;
interpreter times are not speed figures). Bytes per second against a copy are in
``python -m benchmarks.mmd_bench``.
"""
import os

import pytest
import torch

from fastdm.ops import gaussian_mmd as gauss
from fastdm.ops import linear_mmd as lin
from fastdm.ops import segments as seg

from .mmd_bench import cdist_gaussian, plain_linear

# classes, real per class, synthetic per class, feature dim
SIZES = {"tiny": (3, 8, 2, 32), "small": (100, 64, 10, 2048), "large": (1000, 256, 10, 2048)}
GAUSS_SIZES = {"tiny": (3, 8, 2, 32), "small": (10, 256, 10, 2048), "large": (100, 256, 10, 2048)}
BACKENDS = ["torch", "triton"]


def skip_unless_runs(backend, device):
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1 for a smoke run)")


def features(shape, device):
    classes, n_real, ipc, d = shape
    real = torch.randn(classes * n_real, d, device=device) * d ** -0.5
    syn = (torch.randn(classes * ipc, d, device=device) * d ** -0.5).requires_grad_(True)
    return real, syn, torch.full((classes,), n_real), torch.full((classes,), ipc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_loss_and_grad(timed, device, size, backend):
    skip_unless_runs(backend, device)
    real, syn, counts, syn_counts = features(SIZES[size], device)

    def loss_and_grad():
        sums = seg.segment_sum(real, counts, backend=backend)
        loss = lin.linear_mmd(sums, counts, syn, syn_counts, backend=backend).sum()
        return torch.autograd.grad(loss, syn)[0]

    assert timed(loss_and_grad).shape == syn.shape


def test_linear_plain_torch_expression(timed, device, size):
    classes, n_real, ipc, _ = SIZES[size]
    real, syn, _, _ = features(SIZES[size], device)

    def loss_and_grad():
        return torch.autograd.grad(plain_linear(real, syn, classes, n_real, ipc), syn)[0]

    assert timed(loss_and_grad).shape == syn.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_sums(timed, device, size, backend):
    skip_unless_runs(backend, device)
    real, _, counts, _ = features(SIZES[size], device)
    assert timed(lambda: seg.segment_sum(real, counts, backend=backend)).shape[0] == counts.numel()


@pytest.mark.parametrize("backend", BACKENDS + ["cdist"])
def test_gaussian_grad(timed, device, size, backend):
    """Forward without the real-real term + backward: what a DM iteration needs."""
    skip_unless_runs(backend, device)
    classes, n_real, ipc, _ = GAUSS_SIZES[size]
    real, syn, counts, syn_counts = features(GAUSS_SIZES[size], device)
    bws = [0.5, 1.0, 2.0]

    def loss():
        if backend == "cdist":
            return cdist_gaussian(real, syn, classes, n_real, ipc, bws, False)
        return gauss.gaussian_mmd(real, counts, syn, syn_counts, bws, real_term=False,
                                backend=backend).sum()

    assert timed(lambda: torch.autograd.grad(loss(), syn)[0]).shape == syn.shape
