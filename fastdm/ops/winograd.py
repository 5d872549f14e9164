"""Winograd F(4x4, 3x3) convolution for the CPU embedder (3x3, stride 1, zero padding).

Why: on the CPU fastdm's fp32 DM iteration already ran at the matmul peak (benchmarks/RESULTS.md),
and 93 % of its multiply-adds are the real branch's 3x3 convolutions. Winograd's F(4x4, 3x3)
needs 36 multiplies per 4x4 outputs and input channel instead of 144, so the 128->128 layers
cost about a quarter of the direct convolution's GEMM work. The 36 products are one
torch.bmm; the transforms around it are memory-bound loops, which in plain torch (einsum) and
under inductor (unrolled) took 30x and 6x as long as the native ones in kernels/winograd.cpp
(a one-off prototype at cifar10's 16 px layer; built on first use, see fastdm.native).

``winograd_conv2d`` is forward only (the real branch, under torch.inference_mode; the test
pass); ``winograd_conv2d_grad`` adds gradients (the synthetic branch, the training steps of
evaluation): the input's by Winograd too, the weight's by PyTorch's convolution backward. Results agree with F.conv2d to float32 rounding of the transforms (max error
measured 2e-6 to 8e-6 of the largest output, against float64; the direct convolution's 2e-7 to 2e-6).

- ``winograd_conv2d``, ``winograd_conv2d_grad``: the functional entry points (check their inputs).
- ``reference_winograd_conv2d``: the same algorithm in plain torch, for the tests.
- ``eligible``: whether an nn.Conv2d can take this path.
"""
from typing import Optional

import torch
from torch import nn

from ..errors import FastDMError
from .common import check_conv3x3
from .. import native

TILE = 6         # input tile side
OUT = 4          # output tile side
MIN_OUT = 4  # smaller outputs (2x2 maps) were slower than the direct convolution
MIN_CHANNELS = 16  # fewer input channels (an RGB first layer): the direct NHWC one was faster
BLOCK_BYTES = 4 << 20  # transform buffers per GEMM block: cache-sized blocks measured fastest

# Lavin & Gray (2016), F(4x4, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def eligible(conv: nn.Module, in_hw=None) -> bool:
    """A Conv2d this path computes as nn.Conv2d does, with enough input channels to be faster
    (and, given its input size, outputs of at least MIN_OUT x MIN_OUT): benchmarks/winograd_bench."""
    ok = (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3)
          and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
          and conv.groups == 1 and conv.padding_mode == "zeros"
          and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1]
          and conv.in_channels >= MIN_CHANNELS)
    return ok and (in_hw is None or min(in_hw) + 2 * conv.padding[0] - 2 >= MIN_OUT)


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """G g G^T of every [K, C, 3, 3] filter, as the GEMM's right-hand sides [36, C, K] (in the
    weight's dtype; computed in float64 so that the 1/6, 1/24 entries add no rounding of their own)."""
    G = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", G, weight.double(), G)
    return u.reshape(TILE * TILE, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _tiles(size: int, pad: int):
    out = size + 2 * pad - 2
    return out, -(-out // OUT)


@torch.library.custom_op("fastdm::winograd_conv3x3", mutates_args=())
def _winograd_op(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor], pad: int) -> torch.Tensor:
    ext = native.winograd()
    n, c, h, w = x.shape
    k = u.shape[2]
    (ho, th), (wo, tw) = _tiles(h, pad), _tiles(w, pad)
    xh = x.permute(0, 2, 3, 1).contiguous()  # NHWC: a view when x is channels_last
    out = torch.empty((n, ho, wo, k), dtype=torch.float32, device="cpu")
    if n == 0:
        return out.permute(0, 3, 1, 2)
    per_image = TILE * TILE * th * tw * max(c, k) * 4
    step = min(n, max(1, BLOCK_BYTES // per_image))
    b = None if bias is None else bias.contiguous()
    # blocks that keep the transform buffers in cache; the buffers are reused across blocks
    v_buf = torch.empty(TILE * TILE * step * th * tw * c, dtype=torch.float32, device="cpu")
    m_buf = torch.empty(TILE * TILE * step * th * tw * k, dtype=torch.float32, device="cpu")
    for n0 in range(0, n, step):
        p = (min(n, n0 + step) - n0) * th * tw
        v = v_buf[:TILE * TILE * p * c].view(TILE * TILE, p, c)
        m = m_buf[:TILE * TILE * p * k].view(TILE * TILE, p, k)
        ext.input_transform(xh[n0:n0 + step], v, pad, pad, th, tw)
        torch.bmm(v, u, out=m)
        ext.output_transform(m, b, out[n0:n0 + step], th, tw)
    return out.permute(0, 3, 1, 2)  # [N, K, Ho, Wo] in channels_last memory


@_winograd_op.register_fake
def _(x, u, bias, pad):
    n, _, h, w = x.shape
    return x.new_empty((n, _tiles(h, pad)[0], _tiles(w, pad)[0], u.shape[2])).permute(0, 3, 1, 2)


@torch.library.custom_op("fastdm::winograd_conv3x3_grad", mutates_args=())
def _winograd_grad_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      pad: int) -> torch.Tensor:
    return _winograd_op(x, weight_transform(weight), bias, pad)


@_winograd_grad_op.register_fake
def _(x, weight, bias, pad):
    n, _, h, w = x.shape
    return x.new_empty((n, _tiles(h, pad)[0], _tiles(w, pad)[0], weight.shape[0])).permute(0, 3, 1, 2)


def _grad_setup(ctx, inputs, output):
    x, weight, bias, pad = inputs
    ctx.save_for_backward(x, weight)
    ctx.pad, ctx.has_bias = pad, bias is not None


def _grad_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        # the input gradient of a stride-1 3x3 convolution is one too: the filters turned by
        # 180 degrees, input and output channels swapped, padding 2 - pad
        gx = _winograd_op(grad, weight_transform(weight.flip(2, 3).transpose(0, 1)), None, 2 - ctx.pad)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        _, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [ctx.pad] * 2,
            [1, 1], False, [0, 0], 1, [False, True, ctx.has_bias])
    return gx, gw, gb, None


_winograd_grad_op.register_autograd(_grad_backward, setup_context=_grad_setup)


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    padding: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=padding) for 3x3 filters, stride 1, by Winograd
    F(4x4, 3x3). Forward only: inputs must not need gradients. The result is [N, K, Ho, Wo]
    in channels_last memory."""
    check_conv3x3(x, weight, bias, padding, "winograd_conv2d")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        raise FastDMError("winograd_conv2d is forward-only (the real branch, under inference "
                          "mode); use F.conv2d where gradients are needed")
    return _winograd_op(x, weight_transform(weight), bias, padding)


def winograd_conv2d_grad(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         padding: int = 1) -> torch.Tensor:
    """winograd_conv2d with gradients: the input's by Winograd too (padding at most 2), the
    weight's and bias's by PyTorch's convolution backward."""
    check_conv3x3(x, weight, bias, padding, "winograd_conv2d")
    if padding > 2:
        raise FastDMError(f"winograd_conv2d_grad: padding {padding} > 2 (the input gradient's "
                          f"padding, 2 - padding, would be negative)")
    return _winograd_grad_op(x, weight, bias, padding)


def reference_winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                              padding: int = 1) -> torch.Tensor:
    """The same F(4x4, 3x3) algorithm in plain torch (slow; the kernels' reference)."""
    bt = torch.tensor(_BT, dtype=x.dtype, device=x.device)
    at = torch.tensor(_AT, dtype=x.dtype, device=x.device)
    n, c, h, w = x.shape
    (ho, th), (wo, tw) = _tiles(h, padding), _tiles(w, padding)
    xp = nn.functional.pad(x, (padding, padding + tw * OUT - wo, padding, padding + th * OUT - ho))
    d = xp.unfold(2, TILE, OUT).unfold(3, TILE, OUT)            # N C th tw 6 6
    v = torch.einsum("ai,ncyxij,bj->abncyx", bt, d, bt)
    u = weight_transform(weight).to(x.dtype).view(TILE, TILE, c, -1)
    m = torch.einsum("abncyx,abck->abnkyx", v, u)
    y = torch.einsum("pa,abnkyx,qb->nkypxq", at, m, at)
    y = y.reshape(n, -1, th * OUT, tw * OUT)[:, :, :ho, :wo]
    return y if bias is None else y + bias.view(1, -1, 1, 1)
