"""Instance norm (GroupNorm(C, C)) -> ReLU -> 2x2 average pool of a channels_last tensor, forward
only, by a native CPU kernel (kernels/norm_pool.cpp): the ConvNet blocks after the Winograd
convolutions of the real branch and of evaluation's test pass.

Why: in torch the block allocates and fills two full-size temporaries (the centred values and
the normalised ones) and reads the input four times; on a 1024-image MNIST test batch (128 x 14
x 14 floats an image) that was as slow as the layer's Winograd convolution itself. The kernel
reads each image's rows three times while they are in L2 and writes only the pooled quarter
(benchmarks/RESULTS.md, issue 23).

With ``channel_power=p`` the block also returns, per pre-pool pixel, the sum over the channels of
relu(y)^p: DataDAM's attention map before its normalisation, so that a block whose activation an
objective taps stays one native call.

- ``instance_norm_relu_pool``: the functional entry point (checks its inputs);
- ``reference_instance_norm_relu_pool``: the same block by the modules' functions, for the tests.
"""
import torch
import torch.nn.functional as F

from .. import native
from ..errors import FastDMError


@torch.library.custom_op("fastdm::instance_norm_relu_pool", mutates_args=())
def _block(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    return _run(x, gamma, beta, eps, None, 1.0)[0]


@torch.library.custom_op("fastdm::instance_norm_relu_pool_sums", mutates_args=())
def _block_sums(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                power: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(x, gamma, beta, eps, _sums_out(x), power)


def _run(x, gamma, beta, eps, sums, power):
    """The kernel's output (NCHW-indexed, channels_last memory) and ``sums`` (None: not asked)."""
    out = _block_out(x)
    native.load("norm_pool").norm_relu_pool_nhwc(
        x.permute(0, 2, 3, 1).contiguous(), gamma.contiguous(), beta.contiguous(), eps, out,
        sums, power)
    return out.permute(0, 3, 1, 2), sums


def _sums_out(x):
    return x.new_empty((x.shape[0], x.shape[2], x.shape[3]))


@_block_sums.register_fake
def _(x, gamma, beta, eps, power):
    return _block_out(x).permute(0, 3, 1, 2), _sums_out(x)


def _block_out(x):
    n, c, h, w = x.shape
    return x.new_empty((n, h // 2, w // 2, c))


@_block.register_fake
def _(x, gamma, beta, eps):
    return _block_out(x).permute(0, 3, 1, 2)


def instance_norm_relu_pool(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                            eps: float = 1e-5, channel_power: float | None = None):
    """avg_pool2d(relu(group_norm(x, C groups, gamma, beta, eps)), 2) of a float32 CPU x
    [N, C, H, W] (fastest when its memory is channels_last: otherwise it is copied so), without
    gradients; the result's memory is channels_last. With ``channel_power`` p: (that, the sums
    over the channels of relu(group_norm(x))^p [N, H, W])."""
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise FastDMError(f"instance_norm_relu_pool takes a 4-D float32 CPU tensor, got "
                          f"{x.dim()}-D {x.dtype} on {x.device}")
    c = x.shape[1]
    if tuple(gamma.shape) != (c,) or tuple(beta.shape) != (c,):
        raise FastDMError(f"instance_norm_relu_pool: gamma and beta need {c} entries, got "
                          f"{tuple(gamma.shape)} and {tuple(beta.shape)}")
    if min(x.shape[2:]) < 2:
        raise FastDMError(f"instance_norm_relu_pool: the input {tuple(x.shape[2:])} is smaller "
                          f"than the 2x2 pool")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, gamma, beta)):
        raise FastDMError("instance_norm_relu_pool is forward only; use the modules where a "
                          "gradient is needed")
    if channel_power is None:
        return _block(x, gamma.float(), beta.float(), float(eps))
    if not channel_power > 0:
        raise FastDMError(f"instance_norm_relu_pool: channel_power must be positive, got {channel_power}")
    return _block_sums(x, gamma.float(), beta.float(), float(eps), float(channel_power))


def reference_instance_norm_relu_pool(x, gamma, beta, eps=1e-5, channel_power=None):
    """The same block by torch's GroupNorm, ReLU and average pool (the kernel's reference)."""
    a = F.relu(F.group_norm(x, x.shape[1], gamma, beta, eps))
    out = F.avg_pool2d(a, 2)
    return out if channel_power is None else (out, (a ** channel_power).sum(1))
