"""DataDAM's spatial attention map, fused: per image A = sum over channels of |a|^p, flattened
and L2-normalised (F.normalize, eps 1e-12), from one read of the activations.

One program per image: a pass over its pixels sums |a|^p over the channels, writes the map and
accumulates its squared norm; a second pass over the (C times smaller) map scales it. The
backward recomputes nothing of the activations but their sign and power: d a = (d A) p |a|^(p-1)
sign(a), with d A the normalisation's transpose, (g - y <y, g>) / ||A||. The per-class means of
the maps then go through the segment ops (``segment_sum``, ``linear_mmd``): the maps are C
times smaller than the activations, so that second read is small. Deterministic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FastDMError
from .common import FLOAT_DTYPES, choose_backend, on_device, register, tl, triton

__all__ = ["attention_map", "normalize_map", "torch_attention_map"]

EPS = 1e-12  # F.normalize's


def normalize_map(sums: torch.Tensor) -> torch.Tensor:
    """The map from its channel sums [N, H, W] (sum_c |a_c|^p): flattened, L2-normalised."""
    return F.normalize(sums.flatten(1), p=2.0, dim=1, eps=EPS)


def torch_attention_map(a: torch.Tensor, p: float = 1.0, nonnegative: bool = False) -> torch.Tensor:
    """The reference: [N, C, H, W] -> [N, H * W] in a's dtype (float32 for half types).
    ``nonnegative``: a is a ReLU's output, so |a| = a: the sum skips the |a| pass (5x faster on
    the CPU, measured), and the input gradient after the ReLU's backward is the same."""
    a = a if a.dtype in (torch.float32, torch.float64) else a.float()
    if nonnegative:
        m = (a if p == 1 else a ** p).sum(1)
    else:
        m = (a.abs() if p == 1 else a.abs() ** p).sum(1)
    return normalize_map(m)


if triton is not None:
    @triton.jit
    def _power(v, p, POW1: tl.constexpr):
        av = tl.abs(v)
        if POW1:
            return av
        return tl.where(av > 0, tl.exp2(p * tl.log2(tl.maximum(av, 1e-30))), 0.0)

    @triton.jit
    def _att_fwd_kernel(a_ptr, y_ptr, norm_ptr, C, HW, W, sn, sc, sh, sw, p, POW1: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        n = tl.program_id(0)
        base = a_ptr + n.to(tl.int64) * sn
        yrow = y_ptr + n.to(tl.int64) * HW
        sq = tl.zeros((BLOCK_P,), tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            pm = pix < HW
            off = (pix // W) * sh + (pix % W) * sw
            acc = tl.zeros((BLOCK_P,), tl.float32)
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                m = (ch < C)[:, None] & pm[None, :]
                v = tl.load(base + ch[:, None] * sc + off[None, :], mask=m, other=0).to(tl.float32)
                acc += tl.sum(tl.where(m, _power(v, p, POW1), 0.0), 0)
            tl.store(yrow + pix, acc, mask=pm)
            sq += acc * acc
        norm = tl.sqrt(tl.sum(sq, 0))
        tl.store(norm_ptr + n, norm)
        scale = 1.0 / tl.maximum(norm, 1e-12)
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            pm = pix < HW
            tl.store(yrow + pix, tl.load(yrow + pix, mask=pm, other=0.0) * scale, mask=pm)

    @triton.jit
    def _att_bwd_kernel(g_ptr, y_ptr, norm_ptr, a_ptr, da_ptr, C, HW, W, sn, sc, sh, sw, p,
                        POW1: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        n = tl.program_id(0)
        yrow = y_ptr + n.to(tl.int64) * HW
        grow = g_ptr + n.to(tl.int64) * HW
        norm = tl.load(norm_ptr + n)
        dot = tl.zeros((BLOCK_P,), tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            pm = pix < HW
            dot += tl.load(yrow + pix, mask=pm, other=0.0) * tl.load(grow + pix, mask=pm, other=0.0)
        proj = tl.where(norm > 1e-12, tl.sum(dot, 0), 0.0)  # a clamped norm is a constant
        inv = 1.0 / tl.maximum(norm, 1e-12)
        base = a_ptr + n.to(tl.int64) * sn
        dbase = da_ptr + n.to(tl.int64) * C * HW
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            pm = pix < HW
            dA = (tl.load(grow + pix, mask=pm, other=0.0) -
                  tl.load(yrow + pix, mask=pm, other=0.0) * proj) * inv
            off = (pix // W) * sh + (pix % W) * sw
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                m = (ch < C)[:, None] & pm[None, :]
                v = tl.load(base + ch[:, None] * sc + off[None, :], mask=m, other=0).to(tl.float32)
                sgn = tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0))
                if POW1:
                    dv = sgn
                else:
                    av = tl.abs(v)
                    dv = tl.where(av > 0, p * tl.exp2((p - 1.0) * tl.log2(tl.maximum(av, 1e-30))),
                                  0.0) * sgn
                tl.store(dbase + ch[:, None] * HW + pix[None, :],
                         (dv * dA[None, :]).to(da_ptr.dtype.element_ty), mask=m)

    register("attention", __name__)


def _blocks(c: int, hw: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(c), 32)
    return block_c, min(triton.next_power_of_2(hw), max(16, 2048 // block_c))


def _triton_forward(a, p):
    with on_device(a):
        n, c, h, w = a.shape
        y = torch.empty((n, h * w), dtype=torch.float32, device=a.device)
        norm = torch.empty(n, dtype=torch.float32, device=a.device)
        block_c, block_p = _blocks(c, h * w)
        if n:
            _att_fwd_kernel[(n,)](a, y, norm, c, h * w, w, *a.stride(), float(p), POW1=p == 1,
                                  BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4)
        return y, norm


@torch.library.custom_op("fastdm::attention_map", mutates_args=())
def _att_op(a: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_forward(a, p)


@_att_op.register_fake
def _(a, p):
    n, c, h, w = a.shape
    return a.new_empty((n, h * w), dtype=torch.float32), a.new_empty((n,), dtype=torch.float32)


@torch.library.custom_op("fastdm::attention_map_backward", mutates_args=())
def _att_backward_op(grad: torch.Tensor, y: torch.Tensor, norm: torch.Tensor, a: torch.Tensor,
                     p: float) -> torch.Tensor:
    with on_device(a):
        n, c, h, w = a.shape
        da = torch.empty((n, c, h, w), dtype=a.dtype, device=a.device)
        block_c, block_p = _blocks(c, h * w)
        if n:
            _att_bwd_kernel[(n,)](grad.float().contiguous(), y, norm, a, da, c, h * w, w,
                                  *a.stride(), float(p), POW1=p == 1, BLOCK_C=block_c,
                                  BLOCK_P=block_p, num_warps=4)
        return da


@_att_backward_op.register_fake
def _(grad, y, norm, a, p):
    return torch.empty(a.shape, dtype=a.dtype, device=a.device)


def _setup(ctx, inputs, output):
    a, p = inputs
    ctx.save_for_backward(a, *output)
    ctx.p = p


def _backward(ctx, grad, _gnorm):
    a, y, norm = ctx.saved_tensors
    return (_att_backward_op(grad, y, norm, a, ctx.p) if ctx.needs_input_grad[0] else None), None


_att_op.register_autograd(_backward, setup_context=_setup)


def attention_map(a: torch.Tensor, p: float = 1.0, *, nonnegative: bool = False,
                  backend: str | None = None) -> torch.Tensor:
    """DataDAM's attention map of each image: a [N, C, H, W] (float32/bf16/fp16, any strides:
    channels_last too) -> float32 [N, H * W], sum_c |a_c|^p, L2-normalised per image.
    Differentiable w.r.t. ``a``. ``nonnegative``: the caller guarantees a >= 0 (a ReLU's
    output), which the torch path uses to save a pass."""
    if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise FastDMError("attention_map expects float activations N x C x H x W, got "
                          f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}")
    if not p > 0:
        raise FastDMError(f"the attention exponent must be positive, got {p}")
    backend = choose_backend("attention", backend, a.device)
    if backend == "torch" or a.dtype == torch.float64:
        return torch_attention_map(a, p, nonnegative)
    return _att_op(a, float(p))[0]
