"""The first block of a ConvNet on images of few channels (1 to 4: MNIST's gray, CIFAR's RGB) by
native CPU kernels (kernels/first_block.cpp): 3x3 convolution -> GroupNorm(K, K) -> ReLU -> 2x2
average pool, per image for 32 output channels at a time, and its backward to the block's
parameters (not to the images), per (image, output channel) plane.

Why: the modules write the convolution's full-size output (128 x 32 x 32 floats per image, 335 MB
for a 640-image real batch) and read it back for the norm, the ReLU and the pool; the block keeps
each group's output in cache and writes the pooled quarter: 40 ms against 288 ms for 500 MNIST images on the
2-core CPU (benchmarks/RESULTS.md, issue 23). The backward recomputes each plane instead of
keeping the full-size activations, and replaces five passes of the modules' backward (pool,
ReLU, GroupNorm, convolution, and the zero fill) over that full-size gradient. Used by the real
branch of condensation and evaluation's test pass (forward only) and by evaluation's training
step (the images need no gradient there); the synthetic branch, whose images need one, keeps
the modules. With more input channels a per-plane direct convolution would lose to oneDNN's and
Winograd's, so wider first layers keep them (``MAX_CHANNELS``).

With ``channel_power=p`` (forward only) the block also returns, per pre-pool pixel, the sum over
the output channels of relu(y)^p: DataDAM's attention map before its normalisation.

- ``first_block``: the functional entry point (checks its inputs);
- ``reference_first_block``: the same block in plain torch, for the tests;
- ``eligible``: whether an nn.Conv2d is such a first convolution.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import native
from ..errors import FastDMError
from .common import check_conv3x3


MAX_CHANNELS = 4  # the kernels' limit (their weight-gradient sums are sized for it)


def eligible(conv: nn.Module) -> bool:
    """An nn.Conv2d these kernels compute as it does: 1 to MAX_CHANNELS input channels, 3x3,
    stride 1, zero padding."""
    return (isinstance(conv, nn.Conv2d) and 1 <= conv.in_channels <= MAX_CHANNELS and conv.groups == 1
            and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1])


def _out_hw(x: torch.Tensor, pad: int) -> tuple[int, int]:
    return x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2


@torch.library.custom_op("fastdm::first_block", mutates_args=())
def _block(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: torch.Tensor,
           beta: torch.Tensor, eps: float, pad: int, nhwc: bool) -> torch.Tensor:
    return _run(x, weight, bias, gamma, beta, eps, pad, nhwc, None, 1.0)[0]


@torch.library.custom_op("fastdm::first_block_sums", mutates_args=())
def _block_sums(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                gamma: torch.Tensor, beta: torch.Tensor, eps: float, pad: int, nhwc: bool,
                power: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(x, weight, bias, gamma, beta, eps, pad, nhwc, _sums_out(x, pad), power)


def _run(x, weight, bias, gamma, beta, eps, pad, nhwc, sums, power):
    """The kernel's output (NCHW-indexed) and ``sums`` (None: not asked for)."""
    out = _block_out(x, weight, pad, nhwc)
    native.load("first_block").first_block(
        x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        gamma.contiguous(), beta.contiguous(), eps, out, pad, nhwc, sums, power)
    return (out.permute(0, 3, 1, 2) if nhwc else out), sums


def _sums_out(x, pad):
    return x.new_empty((x.shape[0], *_out_hw(x, pad)))


@_block_sums.register_fake
def _(x, weight, bias, gamma, beta, eps, pad, nhwc, power):
    out = _block_out(x, weight, pad, nhwc)
    return (out.permute(0, 3, 1, 2) if nhwc else out), _sums_out(x, pad)


def _block_out(x, weight, pad, nhwc):
    ho, wo = _out_hw(x, pad)
    n, k = x.shape[0], weight.shape[0]
    return x.new_empty((n, ho // 2, wo // 2, k) if nhwc else (n, k, ho // 2, wo // 2))


@_block.register_fake
def _(x, weight, bias, gamma, beta, eps, pad, nhwc):
    out = _block_out(x, weight, pad, nhwc)
    return out.permute(0, 3, 1, 2) if nhwc else out


@torch.library.custom_op("fastdm::first_block_grads", mutates_args=())
def _block_grads(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 gamma: torch.Tensor, beta: torch.Tensor, eps: float, pad: int,
                 gout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """d loss / d (weight, bias, gamma, beta) from d loss / d out (bias' even without a bias)."""
    gw, gb = torch.empty_like(weight), weight.new_empty(weight.shape[0])
    ggamma, gbeta = torch.empty_like(gamma), torch.empty_like(beta)
    native.load("first_block").first_block_backward(
        x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        gamma.contiguous(), beta.contiguous(), eps, pad, gout.contiguous(), gw, gb, ggamma, gbeta)
    return gw, gb, ggamma, gbeta


@_block_grads.register_fake
def _(x, weight, bias, gamma, beta, eps, pad, gout):
    return (torch.empty_like(weight), weight.new_empty(weight.shape[0]), torch.empty_like(gamma),
            torch.empty_like(beta))


def _setup_context(ctx, inputs, output):
    x, weight, bias, gamma, beta, eps, pad, _ = inputs
    ctx.save_for_backward(x, weight, bias, gamma, beta)
    ctx.meta = (eps, pad)


def _backward(ctx, gout):
    if ctx.needs_input_grad[0]:  # the entry point refuses this; a direct op call must too
        raise FastDMError("first_block has no gradient for its input x")
    x, weight, bias, gamma, beta = ctx.saved_tensors
    gw, gb, ggamma, gbeta = _block_grads(x, weight, bias, gamma, beta, *ctx.meta, gout)
    return None, gw, gb if bias is not None else None, ggamma, gbeta, None, None, None


_block.register_autograd(_backward, setup_context=_setup_context)


def first_block(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5, padding: int = 1,
                channels_last: bool = False, channel_power: float | None = None):
    """avg_pool2d(relu(group_norm(conv2d(x, weight, bias, padding), K groups, gamma, beta, eps)), 2)
    for an x of 1 to MAX_CHANNELS channels, with gradients for weight, bias, gamma and beta (not
    for x); ``channels_last``: the result's memory is NHWC. With ``channel_power`` p (forward
    only): (that, the sums over the channels of relu(group_norm(conv2d(x)))^p [N, Ho, Wo])."""
    check_conv3x3(x, weight, bias, padding, "first_block")
    if x.shape[1] > MAX_CHANNELS:
        raise FastDMError(f"first_block takes 1 to {MAX_CHANNELS} input channels, got {x.shape[1]}")
    k = weight.shape[0]
    if tuple(gamma.shape) != (k,) or tuple(beta.shape) != (k,):
        raise FastDMError(f"first_block: gamma and beta need {k} entries, got "
                          f"{tuple(gamma.shape)} and {tuple(beta.shape)}")
    if min(_out_hw(x, padding)) < 2:
        raise FastDMError("first_block: the convolution's output is smaller than the 2x2 pool")
    if torch.is_grad_enabled() and x.requires_grad:
        raise FastDMError("first_block has no gradient for its input x; use the "
                          "modules where the images need one")
    if channel_power is None:
        return _block(x, weight, bias, gamma.float(), beta.float(), float(eps), padding,
                      channels_last)
    if not channel_power > 0:
        raise FastDMError(f"first_block: channel_power must be positive, got {channel_power}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (weight, bias, gamma, beta)):
        raise FastDMError("first_block with channel sums is forward only; use the modules where "
                          "a gradient is needed")
    return _block_sums(x, weight, bias, gamma.float(), beta.float(), float(eps), padding,
                       channels_last, float(channel_power))


def reference_first_block(x, weight, bias, gamma, beta, eps=1e-5, padding=1, channel_power=None):
    """The same block in plain torch (the kernels' reference)."""
    y = F.conv2d(x, weight, bias, padding=padding)
    a = F.relu(F.group_norm(y, weight.shape[0], gamma, beta, eps))
    out = F.avg_pool2d(a, 2)
    return out if channel_power is None else (out, (a ** channel_power).sum(1))
