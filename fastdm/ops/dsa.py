"""Fused DSA augmentation: Triton kernels, their autograd, and the ``fastdm::dsa`` torch.library op.

A batch from many classes is augmented in one pass: program (n, tile) reads, for each output
pixel of sample n, the few input pixels its transform needs (through the sample's table row
``group[n]``), applies the colour ops to them and writes the result. uint8 input (NCHW or NHWC)
is normalised on the fly, so the real stream goes from the store's bytes to augmented floats in
one read.

Ops are fused per *segment*: colour, then crop, cutout, flip (integer maps), then at most one
bilinear op (scale or rotate) -- the order they compose in one gather. Mode 'S' (DM: one op per
sample, chosen per row at run time) is one segment; mode 'M' splits the strategy into segments
whenever an op comes before one already fused (the default order
color_crop_cutout_flip_scale_rotate is two segments: ...scale, then rotate). Each segment is
one launch, plus one per-sample reduction launch when colour is in it (contrast needs the
image mean before any pixel can be written).

Backward (w.r.t. the input, for synthetic images) is written here in gather form, so it is
deterministic: input pixel q sums the gradient of every output pixel that read it, with the
forward's own bilinear weights recomputed bit for bit (the exact transpose of the forward).
DSA is affine in x, so the backward needs the table only, never the images.

Partitioned synthetic images (--factor F, fastdm.augment.partition): the first segment reads
each decoded image's pixels straight from its stored image's tile, bilinearly upsampled by F,
so no decoded tensor is made; its backward runs one program per (stored image, tile, block of
tile pixels) and gathers, through the transposed upsample (a window of 2F + 2 decoded pixels
per side), the DSA input gradient at those decoded pixels: still a gather, still deterministic.

The torch path (decode, then ``fastdm.augment.apply_dsa``) is the reference and the op's implementation
whenever the backend is 'torch'; ``fastdm.backend.backend_for('dsa', device)`` picks.
"""
from __future__ import annotations

import torch

from ..augment import DSATable, apply_dsa, parse_strategy
from ..augment.partition import Partition, decode
from ..backend import interpreting
from ..data.images import normalize
from ..errors import FastDMError
from .common import FLOAT_DTYPES, choose_backend, on_device, register, tl, triton

__all__ = ["dsa_augment", "segments", "torch_reference"]

# Flag bits of a packed row: which ops a sample applies in this launch.
COLOR, CROP, CUTOUT, FLIP, SCALE, ROTATE = 1, 2, 4, 8, 16, 32
BIT = {"color": COLOR, "crop": CROP, "cutout": CUTOUT, "flip": FLIP, "scale": SCALE, "rotate": ROTATE}
# The order ops compose in within one fused segment (scale and rotate share the bilinear slot).
RANK = {"color": 0, "crop": 1, "cutout": 2, "flip": 3, "scale": 4, "rotate": 4}


def segments(ops, mode: str) -> list[tuple[str, ...]]:
    """Launch plan: mode 'S' is one segment (one op per sample); mode 'M' starts a new segment
    whenever an op cannot follow the previous ones in the fused order."""
    if mode == "S":
        return [tuple(ops)] if ops else []
    out, cur, last = [], [], -1
    for op in ops:
        if cur and RANK[op] <= last:
            out.append(tuple(cur))
            cur = []
        cur.append(op)
        last = RANK[op]
    return out + [tuple(cur)] if cur else out


def _pack(t: DSATable, seg: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows as the kernels read them: int32 [G, 8] (flags, crop row/col shift, cutout box, flip)
    and float32 [G, 9] (brightness, saturation, contrast, the affine matrix); plus the union of
    flags, which selects the code compiled into the kernel."""
    g, dev = t.groups, t.op.device
    union = 0
    for o in seg:
        union |= BIT[o]
    if t.mode == "S":
        bits = torch.tensor([BIT[o] for o in t.ops], dtype=torch.int32, device=dev)
        flags = bits[t.op]
        theta = torch.where((flags == ROTATE)[:, None, None], t.rotate, t.scale)
    else:
        flags = torch.full((g,), union, dtype=torch.int32, device=dev)
        theta = t.rotate if "rotate" in seg else t.scale
    ip = torch.cat([flags[:, None], t.crop.to(torch.int32), t.cutout.to(torch.int32),
                    t.flip.to(torch.int32)[:, None]], 1).contiguous()
    fp = torch.cat([t.brightness.float()[:, None], t.saturation.float()[:, None],
                    t.contrast.float()[:, None], theta.float().reshape(g, 6)], 1).contiguous()
    return ip, fp, union


# -- the torch path (the reference every fast path is tested against) ------------------------
def torch_reference(x, group, table: DSATable, mean=None, std=None,
                    partition: Partition | None = None) -> torch.Tensor:
    """The same augmentation with torch ops: normalise uint8 (fastdm.data.images.normalize),
    decode stored images (fastdm.augment.partition.decode), then ``apply_dsa``."""
    if not x.is_floating_point():  # NCHW first: same reduction order for every input layout
        x = normalize(x.contiguous(), mean.tolist(), std.tolist())
    if partition is not None:
        x = decode(x, partition)
    return apply_dsa(x, table, group)


def _torch_backward(grad, group, table: DSATable, partition=None, stored=None) -> torch.Tensor:
    # DSA is affine in x, so its input gradient does not depend on x: the vjp at zero. (func.vjp,
    # not autograd.grad: inside a custom op's backward the autograd keys are excluded.)
    shape = grad.shape if partition is None else (partition.index.shape[0], *grad.shape[1:])
    _, vjp = torch.func.vjp(lambda z: torch_reference(z, group, table, partition=partition),
                            grad.new_zeros(shape))
    return vjp(grad)[0]


# -- Triton kernels ---------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _source_point(i, j, H, W, t00, t01, t02, t10, t11, t12):
        """Input (row, col) in pixels sampled by output pixel (i, j): affine_grid's normalised
        coordinates through the matrix, then grid_sample's unnormalisation (align_corners=False).
        The forward and the backward both call this, so their weights agree bit for bit."""
        xn = (2 * j + 1).to(tl.float32) / W - 1.0
        yn = (2 * i + 1).to(tl.float32) / H - 1.0
        xs = t00 * xn + t01 * yn + t02
        ys = t10 * xn + t11 * yn + t12
        return ((ys + 1.0) * H - 1.0) * 0.5, ((xs + 1.0) * W - 1.0) * 0.5

    @triton.jit
    def _int_row(ip_ptr, g):
        """A packed row's integers: flags, crop shift (rows, cols), cutout box, flip."""
        row = ip_ptr + g * 8
        return (tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
                tl.load(row + 4), tl.load(row + 5), tl.load(row + 6), tl.load(row + 7))

    @triton.jit
    def _matrix(fp_ptr, g):
        """A packed row's affine matrix (t00, t01, t02, t10, t11, t12)."""
        row = fp_ptr + g * 9 + 3
        return (tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
                tl.load(row + 4), tl.load(row + 5))

    @triton.jit
    def _sample_points(i, j, H, W, fp_ptr, g, ANY: tl.constexpr):
        """Where output pixels (i, j) sample their input, if the launch has a bilinear op."""
        if ANY & 48:
            t00, t01, t02, t10, t11, t12 = _matrix(fp_ptr, g)
            iy, ix = _source_point(i, j, H, W, t00, t01, t02, t10, t11, t12)
        else:
            iy = i.to(tl.float32)
            ix = j.to(tl.float32)
        return iy, ix

    @triton.jit
    def _tap(T: tl.constexpr, i, j, pmask, flags, is_aff, iy, ix, H, W, tx, ty, r0, r1, c0, c1, fl,
             ANY: tl.constexpr):
        """Tap T (of 4) of output pixels (i, j): the input pixel it reads, its weight and whether
        it reads anything (zero padding, crop fill and cutout read nothing)."""
        if ANY & 48:  # bilinear: taps (y0 + T // 2, x0 + T % 2)
            y0 = tl.floor(iy)
            x0 = tl.floor(ix)
            if T // 2 == 0:
                ryf = y0
                wy = (y0 + 1.0) - iy
            else:
                ryf = y0 + 1.0
                wy = iy - y0
            if T % 2 == 0:
                rxf = x0
                wx = (x0 + 1.0) - ix
            else:
                rxf = x0 + 1.0
                wx = ix - x0
            inside = (ryf >= 0) & (ryf <= H - 1) & (rxf >= 0) & (rxf <= W - 1)
            ry = tl.where(inside, ryf, 0.0).to(tl.int32)
            rx = tl.where(inside, rxf, 0.0).to(tl.int32)
            w = wy * wx
            valid = pmask & is_aff & inside
            if T == 0:  # samples without a bilinear op read their own pixel, weight 1
                ry = tl.where(is_aff, ry, i)
                rx = tl.where(is_aff, rx, j)
                w = tl.where(is_aff, w, 1.0)
                valid = valid | (pmask & (is_aff == 0))
        else:
            ry = i
            rx = j
            w = tl.full(i.shape, 1.0, tl.float32)
            valid = pmask
        # then undo flip, cutout and crop (they were applied before the bilinear op)
        if ANY & 8:
            rx = tl.where(((flags & 8) != 0) & (fl != 0), W - 1 - rx, rx)
        if ANY & 4:
            cut = ((flags & 4) != 0) & (ry >= r0) & (ry < r1) & (rx >= c0) & (rx < c1)
            valid = valid & (cut == 0)
        if ANY & 2:
            cr = (flags & 2) != 0
            ry = ry + tl.where(cr, tx, 0)
            rx = rx + tl.where(cr, ty, 0)
            valid = valid & (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
        return ry, rx, w, valid

    @triton.jit
    def _load_norm(x_ptr, base, ch, cmask, ry, rx, valid, sxc, sxh, sxw, mean_ptr, std_ptr,
                   NORM: tl.constexpr):
        m = cmask[:, None] & valid[None, :]
        ptrs = x_ptr + base + ch[:, None] * sxc + ry[None, :] * sxh + rx[None, :] * sxw
        v = tl.load(ptrs, mask=m, other=0).to(tl.float32)
        if NORM:  # ToTensor + Normalize, in the torch path's order
            mu = tl.load(mean_ptr + ch, mask=cmask, other=0.0)
            sd = tl.load(std_ptr + ch, mask=cmask, other=1.0)
            v = (v / 255.0 - mu[:, None]) / sd[:, None]
        return tl.where(m, v, 0.0), m

    @triton.jit
    def _load_decoded(x_ptr, base, ch, cmask, ry, rx, valid, sxc, sxh, sxw, ti, tj, H, W,
                      F: tl.constexpr):
        """Decoded pixels (ry, rx): tile (ti, tj) of the stored image upsampled x F, bilinear
        with align_corners=False, in upsample_bilinear2d's order of operations."""
        SH = H // F
        SW = W // F
        sy = tl.maximum((ry.to(tl.float32) + 0.5) * (1.0 / F) - 0.5, 0.0)
        sx = tl.maximum((rx.to(tl.float32) + 0.5) * (1.0 / F) - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        y1 = tl.minimum(y0 + 1, SH - 1)
        x1 = tl.minimum(x0 + 1, SW - 1)
        h1 = sy - y0.to(tl.float32)
        w1 = sx - x0.to(tl.float32)
        h0 = 1.0 - h1
        w0 = 1.0 - w1
        m = cmask[:, None] & valid[None, :]
        row = x_ptr + base + ch[:, None] * sxc
        Y0 = (ti * SH + y0)[None, :] * sxh
        Y1 = (ti * SH + y1)[None, :] * sxh
        X0 = (tj * SW + x0)[None, :] * sxw
        X1 = (tj * SW + x1)[None, :] * sxw
        v00 = tl.load(row + Y0 + X0, mask=m, other=0).to(tl.float32)
        v01 = tl.load(row + Y0 + X1, mask=m, other=0).to(tl.float32)
        v10 = tl.load(row + Y1 + X0, mask=m, other=0).to(tl.float32)
        v11 = tl.load(row + Y1 + X1, mask=m, other=0).to(tl.float32)
        v = h0[None, :] * (w0[None, :] * v00 + w1[None, :] * v01) + \
            h1[None, :] * (w0[None, :] * v10 + w1[None, :] * v11)
        return tl.where(m, v, 0.0), m

    @triton.jit
    def _load_px(x_ptr, n, source_ptr, tile_ptr, ch, cmask, ry, rx, valid, sxn, sxc, sxh, sxw,
                 mean_ptr, std_ptr, H, W, NORM: tl.constexpr, F: tl.constexpr):
        """Input pixels (ry, rx) of sample n: read directly, or decoded from its stored image."""
        if F > 1:
            src = tl.load(source_ptr + n)
            k = tl.load(tile_ptr + n)
            return _load_decoded(x_ptr, src.to(tl.int64) * sxn, ch, cmask, ry, rx, valid, sxc,
                                 sxh, sxw, k // F, k % F, H, W, F)
        else:
            return _load_norm(x_ptr, n.to(tl.int64) * sxn, ch, cmask, ry, rx, valid, sxc, sxh,
                              sxw, mean_ptr, std_ptr, NORM)

    @triton.jit
    def _sum_kernel(x_ptr, sum_ptr, group_ptr, ip_ptr, mean_ptr, std_ptr, source_ptr, tile_ptr,
                    C, H, W, sxn, sxc, sxh, sxw, NORM: tl.constexpr, F: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Per-sample sum of the (normalised) input, for the contrast mean; one program per
        sample, so the sum is deterministic. Samples without colour are skipped."""
        n = tl.program_id(0)
        g = tl.load(group_ptr + n)
        flags = tl.load(ip_ptr + g * 8)
        tiles = tl.where((flags & 1) != 0, tl.cdiv(H * W, BLOCK_P), 0)
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        acc = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
        for t in range(0, tiles):
            p = t * BLOCK_P + tl.arange(0, BLOCK_P)
            v, m = _load_px(x_ptr, n, source_ptr, tile_ptr, ch, cmask, p // W, p % W, p < H * W,
                            sxn, sxc, sxh, sxw, mean_ptr, std_ptr, H, W, NORM, F)
            acc += v
        tl.store(sum_ptr + n, tl.sum(tl.sum(acc, axis=1), axis=0))

    @triton.jit
    def _fwd_kernel(x_ptr, out_ptr, group_ptr, ip_ptr, fp_ptr, mean_ptr, std_ptr, sum_ptr,
                    source_ptr, tile_ptr, C, H, W, sxn, sxc, sxh, sxw, ANY: tl.constexpr,
                    NTAPS: tl.constexpr, NORM: tl.constexpr, F: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        n = tl.program_id(0)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < H * W
        i = p // W
        j = p % W
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        g = tl.load(group_ptr + n)
        flags, tx, ty, r0, r1, c0, c1, fl = _int_row(ip_ptr, g)
        b = tl.load(fp_ptr + g * 9)
        s = tl.load(fp_ptr + g * 9 + 1)
        c = tl.load(fp_ptr + g * 9 + 2)
        is_aff = (flags & 48) != 0
        iy, ix = _sample_points(i, j, H, W, fp_ptr, g, ANY)
        col = (flags & 1) != 0
        m2 = b
        if ANY & 1:  # contrast's mean: mean(x) + b (saturation keeps the mean)
            m2 = tl.load(sum_ptr + n) / (C * H * W) + b
        acc = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
        for T in tl.static_range(NTAPS):
            ry, rx, w, valid = _tap(T, i, j, pmask, flags, is_aff, iy, ix, H, W, tx, ty, r0, r1,
                                    c0, c1, fl, ANY)
            v, m = _load_px(x_ptr, n, source_ptr, tile_ptr, ch, cmask, ry, rx, valid, sxn, sxc,
                            sxh, sxw, mean_ptr, std_ptr, H, W, NORM, F)
            if ANY & 1:  # brightness, saturation, contrast on the pixel read (before any fill)
                y1 = v + b
                m1 = tl.sum(tl.where(cmask[:, None], y1, 0.0), axis=0) / C
                y2 = (y1 - m1[None, :]) * s + m1[None, :]
                y3 = (y2 - m2) * c + m2
                v = tl.where(m & col, y3, v)
            acc += w[None, :] * v
        optr = out_ptr + n.to(tl.int64) * C * H * W + ch[:, None] * (H * W) + p[None, :]
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])

    @triton.jit
    def _grad_sum_kernel(g_ptr, sum_ptr, group_ptr, ip_ptr, fp_ptr, C, H, W,
                         ANY: tl.constexpr, NTAPS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Per-sample sum of the gradient reaching the colour output: sum over output pixels of
        grad x (total weight of the taps that read a pixel). Colour samples only."""
        n = tl.program_id(0)
        g = tl.load(group_ptr + n)
        flags, tx, ty, r0, r1, c0, c1, fl = _int_row(ip_ptr, g)
        is_aff = (flags & 48) != 0
        tiles = tl.where((flags & 1) != 0, tl.cdiv(H * W, BLOCK_P), 0)
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        base = n.to(tl.int64) * C * H * W
        acc = tl.zeros((BLOCK_P,), tl.float32)
        for t in range(0, tiles):
            p = t * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = p < H * W
            i = p // W
            j = p % W
            iy, ix = _sample_points(i, j, H, W, fp_ptr, g, ANY)
            wsum = tl.zeros((BLOCK_P,), tl.float32)
            for T in tl.static_range(NTAPS):
                ry, rx, w, valid = _tap(T, i, j, pmask, flags, is_aff, iy, ix, H, W, tx, ty, r0,
                                        r1, c0, c1, fl, ANY)
                wsum += tl.where(valid, w, 0.0)
            gv = tl.load(g_ptr + base + ch[:, None] * (H * W) + p[None, :],
                         mask=cmask[:, None] & pmask[None, :], other=0).to(tl.float32)
            acc += tl.sum(gv, axis=0) * wsum
        tl.store(sum_ptr + n, tl.sum(acc, axis=0))

    @triton.jit
    def _grad_at(g_ptr, base, ry, rx, valid, flags, tx, ty, r0, r1, c0, c1, fl, fp_ptr, g, gsum_ptr,
                 n, C, H, W, ch, cmask, ANY: tl.constexpr):
        """d loss / d (the DSA input) at pixels (ry, rx) of sample n: forward the integer ops to
        the pixel r of the bilinear op's input, gather every output pixel whose taps read r (a
        window found by inverting the affine map), then the colour ops' transpose with their
        mean terms."""
        if ANY & 2:
            cr = (flags & 2) != 0
            ry = ry - tl.where(cr, tx, 0)
            rx = rx - tl.where(cr, ty, 0)
            valid = valid & (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
        if ANY & 4:
            cut = ((flags & 4) != 0) & (ry >= r0) & (ry < r1) & (rx >= c0) & (rx < c1)
            valid = valid & (cut == 0)
        if ANY & 8:
            rx = tl.where(((flags & 8) != 0) & (fl != 0), W - 1 - rx, rx)
        gptr = g_ptr + base + ch[:, None] * (H * W)
        is_aff = (flags & 48) != 0
        direct = valid & (is_aff == 0)
        acc = tl.load(gptr + (ry * W + rx)[None, :], mask=cmask[:, None] & direct[None, :],
                      other=0).to(tl.float32)
        if ANY & 48:
            t00, t01, t02, t10, t11, t12 = _matrix(fp_ptr, g)
            # source point = A (i, j) + o in pixels; invert A to find the output window of r
            a = t11
            bb = t10 * H / W
            cc = t01 * W / H
            d = t00
            oy, ox = _source_point(ry * 0, ry * 0, H, W, t00, t01, t02, t10, t11, t12)
            det = a * d - bb * cc
            full = tl.abs(det) < 1e-6  # (near-)singular: search the whole image
            sdet = tl.where(full, 1.0, det)
            ei = tl.where(full, 0.0, (tl.abs(d) + tl.abs(bb)) / tl.abs(sdet))
            ej = tl.where(full, 0.0, (tl.abs(cc) + tl.abs(a)) / tl.abs(sdet))
            ki = tl.where(full, H, tl.minimum(tl.floor(2.0 * ei), H * 1.0).to(tl.int32) + 4)
            kj = tl.where(full, W, tl.minimum(tl.floor(2.0 * ej), W * 1.0).to(tl.int32) + 4)
            dy = ry.to(tl.float32) - oy
            dxp = rx.to(tl.float32) - ox
            pi_c = (d * dy - bb * dxp) / sdet
            pj_c = (a * dxp - cc * dy) / sdet
            i0 = tl.where(full, 0, tl.floor(pi_c - ei).to(tl.int32) - 1)
            j0 = tl.where(full, 0, tl.floor(pj_c - ej).to(tl.int32) - 1)
            # keep the window inside the image: a shifted or capped window still covers every
            # in-image candidate (large zoom-outs, 1-2 px sides under rotation)
            ki = tl.minimum(ki, H)
            kj = tl.minimum(kj, W)
            i0 = tl.minimum(tl.maximum(i0, 0), H - ki)
            j0 = tl.minimum(tl.maximum(j0, 0), W - kj)
            want = valid & is_aff
            ki = tl.where(is_aff, ki, 0)
            ryf = ry.to(tl.float32)
            rxf = rx.to(tl.float32)
            for di in range(0, ki):
                pi = i0 + di
                for dj in range(0, kj):
                    pj = j0 + dj
                    ok = want & (pi >= 0) & (pi < H) & (pj >= 0) & (pj < W)
                    iy, ix = _source_point(pi, pj, H, W, t00, t01, t02, t10, t11, t12)
                    y0 = tl.floor(iy)
                    x0 = tl.floor(ix)
                    wy = tl.where(ryf == y0, (y0 + 1.0) - iy, tl.where(ryf == y0 + 1.0, iy - y0, 0.0))
                    wx = tl.where(rxf == x0, (x0 + 1.0) - ix, tl.where(rxf == x0 + 1.0, ix - x0, 0.0))
                    ok = ok & ((ryf == y0) | (ryf == y0 + 1.0)) & ((rxf == x0) | (rxf == x0 + 1.0))
                    gv = tl.load(gptr + (pi * W + pj)[None, :], mask=cmask[:, None] & ok[None, :],
                                 other=0).to(tl.float32)
                    acc += (wy * wx)[None, :] * gv
        if ANY & 1:
            s = tl.load(fp_ptr + g * 9 + 1)
            c = tl.load(fp_ptr + g * 9 + 2)
            gbar = tl.load(gsum_ptr + n) / (C * H * W)
            dy2 = c * acc + (1.0 - c) * gbar
            md = tl.sum(tl.where(cmask[:, None], dy2, 0.0), axis=0) / C
            dx = s * dy2 + (1.0 - s) * md[None, :]
            acc = tl.where((flags & 1) != 0, dx, acc)
        return acc

    @triton.jit
    def _bwd_kernel(g_ptr, dx_ptr, group_ptr, ip_ptr, fp_ptr, gsum_ptr, C, H, W,
                    ANY: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """d loss / d x at input pixels q of sample n."""
        n = tl.program_id(0)
        q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        qmask = q < H * W
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        g = tl.load(group_ptr + n)
        flags, tx, ty, r0, r1, c0, c1, fl = _int_row(ip_ptr, g)
        base = n.to(tl.int64) * C * H * W
        acc = _grad_at(g_ptr, base, q // W, q % W, qmask, flags, tx, ty, r0, r1, c0, c1, fl,
                       fp_ptr, g, gsum_ptr, n, C, H, W, ch, cmask, ANY)
        optr = dx_ptr + base + ch[:, None] * (H * W) + q[None, :]
        tl.store(optr, acc.to(dx_ptr.dtype.element_ty), mask=cmask[:, None] & qmask[None, :])

    @triton.jit
    def _up_weight(y, u, F: tl.constexpr, S):
        """Weight of tile pixel u in decoded pixel y of a bilinear x F upsample of S pixels
        (align_corners=False, as torch's upsample_bilinear2d: edges clamp)."""
        sy = tl.maximum((y.to(tl.float32) + 0.5) * (1.0 / F) - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        y1 = tl.minimum(y0 + 1, S - 1)
        ly = sy - y0.to(tl.float32)
        return tl.where(y0 == u, 1.0 - ly, 0.0) + tl.where(y1 == u, ly, 0.0)

    @triton.jit
    def _bwd_decode_kernel(g_ptr, dx_ptr, group_ptr, index_ptr, ip_ptr, fp_ptr, gsum_ptr, C, H, W,
                           F: tl.constexpr, ANY: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_P: tl.constexpr):
        """d loss / d (stored image s) at the pixels of its tile k: the transpose of the
        decode's upsample (every decoded pixel whose bilinear taps read the tile pixel, a
        window of 2F + 2 per side) of the DSA input gradient at those decoded pixels."""
        sk = tl.program_id(0)
        s_idx = sk // (F * F)
        k = sk % (F * F)
        SH = H // F
        SW = W // F
        q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        qmask = q < SH * SW
        u = q // SW
        v = q % SW
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        n = tl.load(index_ptr + sk)  # the decoded row of (s, k)
        g = tl.load(group_ptr + n)
        flags, tx, ty, r0, r1, c0, c1, fl = _int_row(ip_ptr, g)
        base = n.to(tl.int64) * C * H * W
        # decoded rows y with floor(source(y)) in {u - 1, u}: y >= F (u - 0.5) - 0.5
        y_lo = tl.maximum(((u.to(tl.float32) - 0.5) * F - 0.5).to(tl.int32) - 1, 0)
        x_lo = tl.maximum(((v.to(tl.float32) - 0.5) * F - 0.5).to(tl.int32) - 1, 0)
        acc = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
        for dy in range(0, 2 * F + 2):  # a runtime loop: unrolled, the kernel grows 4(F + 1)^2 times
            y = y_lo + dy
            wy = tl.where(y < H, _up_weight(y, u, F, SH), 0.0)
            for dx in range(0, 2 * F + 2):
                x = x_lo + dx
                wx = tl.where(x < W, _up_weight(x, v, F, SW), 0.0)
                w = wy * wx
                ok = qmask & (w > 0.0)
                gd = _grad_at(g_ptr, base, tl.minimum(y, H - 1), tl.minimum(x, W - 1), ok, flags,
                              tx, ty, r0, r1, c0, c1, fl, fp_ptr, g, gsum_ptr, n, C, H, W, ch,
                              cmask, ANY)
                acc += tl.where(ok[None, :], w[None, :] * gd, 0.0)
        ti = k // F
        tj = k % F
        pix = (ti * SH + u) * W + tj * SW + v
        optr = dx_ptr + s_idx.to(tl.int64) * C * H * W + ch[:, None] * (H * W) + pix[None, :]
        tl.store(optr, acc.to(dx_ptr.dtype.element_ty), mask=cmask[:, None] & qmask[None, :])

    register("dsa", __name__)


def _blocks(c: int, hw: int) -> tuple[int, int, int]:
    block_c = triton.next_power_of_2(c)
    # the interpreter pays per program, a GPU wants ~1k elements per program
    cap = 4096 if interpreting() else max(32, 1024 // block_c)
    block_p = min(triton.next_power_of_2(hw), cap)
    return block_c, block_p, 4


def _taps(union: int) -> int:
    return 4 if union & (SCALE | ROTATE) else 1


def _triton_forward(x, group, t: DSATable, mean, std, part=None) -> torch.Tensor:
    """``part``: (source, tile, index, factor) to decode x's stored images in the first
    segment's read."""
    with on_device(x):
        _, c, h, w = x.shape
        n = group.shape[0]
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        block_c, block_p, warps = _blocks(c, h * w)
        cur, norm = x, not x.is_floating_point()
        dummy = torch.empty(1, dtype=torch.float32, device=x.device)
        source, tile, factor = (part[0], part[1], part[3]) if part is not None else (dummy, dummy, 1)
        for seg in segments(t.ops, t.mode):
            ip, fp, union = _pack(t, seg)
            out = torch.empty((n, c, h, w), dtype=out_dtype, device=x.device)
            sums = torch.empty(n, dtype=torch.float32, device=x.device) if union & COLOR else dummy
            mu = mean if norm else dummy
            sd = std if norm else dummy
            strides = cur.stride()
            if union & COLOR:
                _sum_kernel[(n,)](cur, sums, group, ip, mu, sd, source, tile, c, h, w, *strides,
                                  NORM=norm, F=factor, BLOCK_C=block_c, BLOCK_P=block_p,
                                  num_warps=warps)
            _fwd_kernel[(n, triton.cdiv(h * w, block_p))](
                cur, out, group, ip, fp, mu, sd, sums, source, tile, c, h, w, *strides, ANY=union,
                NTAPS=_taps(union), NORM=norm, F=factor, BLOCK_C=block_c, BLOCK_P=block_p,
                num_warps=warps)
            cur, norm, factor = out, False, 1
        return cur


def _triton_backward(grad, group, t: DSATable, part=None) -> torch.Tensor:
    """``part``: as the forward's; the first segment's gradient then lands in the stored images."""
    with on_device(grad):
        n, c, h, w = grad.shape
        block_c, block_p, warps = _blocks(c, h * w)
        dummy = torch.empty(1, dtype=torch.float32, device=grad.device)
        cur = grad.contiguous()
        segs = segments(t.ops, t.mode)
        for i, seg in enumerate(reversed(segs)):
            ip, fp, union = _pack(t, seg)
            sums = dummy
            if union & COLOR:
                sums = torch.empty(n, dtype=torch.float32, device=grad.device)
                _grad_sum_kernel[(n,)](cur, sums, group, ip, fp, c, h, w, ANY=union,
                                       NTAPS=_taps(union), BLOCK_C=block_c, BLOCK_P=block_p,
                                       num_warps=warps)
            if part is not None and i == len(segs) - 1:
                index, factor = part[2], part[3]
                out = torch.empty((index.shape[0], c, h, w), dtype=cur.dtype, device=cur.device)
                side = (h // factor) * (w // factor)
                bp = min(block_p, triton.next_power_of_2(side))
                _bwd_decode_kernel[(index.numel(), triton.cdiv(side, bp))](
                    cur, out, group, index, ip, fp, sums, c, h, w, F=factor, ANY=union,
                    BLOCK_C=block_c, BLOCK_P=bp, num_warps=warps)
            else:
                out = torch.empty_like(cur)
                _bwd_kernel[(n, triton.cdiv(h * w, block_p))](cur, out, group, ip, fp, sums, c, h,
                                                              w, ANY=union, BLOCK_C=block_c,
                                                              BLOCK_P=block_p, num_warps=warps)
            cur = out
        return cur


# -- the torch.library op ---------------------------------------------------------------------
def _table(tensors, strategy: str, mode: str) -> DSATable:
    return DSATable(parse_strategy(strategy), mode, *tensors)


def _partition(part: list[torch.Tensor], factor: int) -> Partition | None:
    return Partition(factor, *part) if part else None


@torch.library.custom_op("fastdm::dsa", mutates_args=())
def _dsa_op(x: torch.Tensor, group: torch.Tensor, table: list[torch.Tensor],
            mean: torch.Tensor | None, std: torch.Tensor | None, part: list[torch.Tensor],
            factor: int, strategy: str, mode: str, backend: str) -> torch.Tensor:
    t = _table(table, strategy, mode)
    if backend == "triton":
        out = _triton_forward(x, group, t, mean, std, (*part, factor) if part else None)
    else:
        out = torch_reference(x, group, t, mean, std, _partition(part, factor))
    return out.clone() if out is x else out.contiguous()


@_dsa_op.register_fake
def _(x, group, table, mean, std, part, factor, strategy, mode, backend):
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return x.new_empty((group.shape[0], *x.shape[1:]), dtype=dtype)


@torch.library.custom_op("fastdm::dsa_backward", mutates_args=())
def _dsa_backward_op(grad: torch.Tensor, group: torch.Tensor, table: list[torch.Tensor],
                     part: list[torch.Tensor], factor: int, strategy: str, mode: str,
                     backend: str) -> torch.Tensor:
    t = _table(table, strategy, mode)
    if backend == "triton":
        return _triton_backward(grad, group, t, (*part, factor) if part else None)
    return _torch_backward(grad.contiguous(), group, t, _partition(part, factor))


@_dsa_backward_op.register_fake
def _(grad, group, table, part, factor, strategy, mode, backend):
    rows = part[2].shape[0] if part else grad.shape[0]
    return grad.new_empty((rows, *grad.shape[1:]))


def _setup_context(ctx, inputs, output):
    x, group, table, mean, std, part, factor, strategy, mode, backend = inputs
    ctx.save_for_backward(group, *part, *table)
    ctx.meta = (len(part), factor, strategy, mode, backend)


def _backward(ctx, grad):
    np_, factor, *meta = ctx.meta
    group, *rest = ctx.saved_tensors
    part, table = rest[:np_], rest[np_:]
    gx = _dsa_backward_op(grad, group, table, part, factor, *meta) \
        if ctx.needs_input_grad[0] else None
    return gx, None, [None] * len(table), None, None, [None] * np_, None, None, None, None


_dsa_op.register_autograd(_backward, setup_context=_setup_context)


# -- the functional entry point ---------------------------------------------------------------
_DTYPES = FLOAT_DTYPES + (torch.uint8,)
# DSATable's tensor fields in constructor order, with each row's shape
_SHAPES = {"op": (), "brightness": (), "saturation": (), "contrast": (), "crop": (2,),
           "cutout": (4,), "flip": (), "scale": (2, 3), "rotate": (2, 3)}
_FIELDS = tuple(_SHAPES)


def _check_table(t: DSATable) -> None:
    """A hand-built table must look like build_table's: both backends then read it alike."""
    if t.mode not in ("S", "M"):
        raise FastDMError(f"table mode must be 'S' or 'M', got {t.mode!r}")
    try:
        parse_strategy("_".join(t.ops))
    except FastDMError as e:
        raise FastDMError(f"table ops: {e}") from None
    g = t.groups
    for name, tail in _SHAPES.items():
        v = getattr(t, name)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (g, *tail):
            raise FastDMError(f"table field {name} must have shape {(g, *tail)} (one row per "
                              f"group), got {tuple(v.shape) if isinstance(v, torch.Tensor) else v}")
    for name in ("op", "crop", "cutout"):
        if getattr(t, name).dtype.is_floating_point:
            raise FastDMError(f"table field {name} must be an integer tensor")
    if t.op.device.type == "cpu" and g and not torch.compiler.is_compiling():
        if int(t.op.min()) < 0 or int(t.op.max()) >= max(1, len(t.ops)):
            raise FastDMError(f"table op indices must lie in [0, {len(t.ops)})")


def dsa_augment(x: torch.Tensor, table: DSATable, group: torch.Tensor | None = None, *,
                mean=None, std=None, channels_last: bool = False,
                partition: Partition | None = None, backend: str | None = None) -> torch.Tensor:
    """Augment ``x`` with table rows ``group[i]`` (default row i), on the chosen backend.

    x: float32/bf16/fp16 N x C x H x W (differentiable), or uint8 N x C x H x W (or N x H x W x C
    with ``channels_last=True``) together with per-channel ``mean`` and ``std``: the result is
    then ``(x / 255 - mean) / std`` augmented, in float32, from one read of the bytes.
    backend: 'torch' or 'triton'; default ``fastdm.backend.backend_for('dsa', x.device)``.
    Returns a contiguous N x C x H x W tensor (x's dtype; float32 for uint8 input); with no
    ops and float input, x itself (as the reference's DiffAugment). Group indices must lie in
    [0, table.groups): checked on the CPU, by a device-side assert on CUDA (which, like any
    device assert, ends the CUDA context). The Triton path differentiates w.r.t. x only (not the
    table) and has no double backward.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise FastDMError("dsa_augment expects a 4-D image tensor, got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise FastDMError(f"dsa_augment takes float32, bfloat16, float16 or uint8 images, got {x.dtype}")
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    n, c, h, w = x.shape
    if partition is not None:
        if not x.is_floating_point():
            raise FastDMError("partitioned (stored) images must be float: real uint8 images are "
                              "never decoded")
        if partition.index.shape[0] != n or h % partition.factor or w % partition.factor:
            raise FastDMError(f"the partition maps {partition.index.shape[0]} stored images of "
                              f"sides divisible by {partition.factor}; got {n} of {h}x{w}")
        n = partition.decoded
    if x.dtype == torch.uint8:
        if mean is None or std is None:
            raise FastDMError("uint8 images need the per-channel mean and std to normalise with")
        mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1)
        if mean.numel() != c or std.numel() != c:
            raise FastDMError(f"mean and std need {c} values (one per channel), got "
                              f"{mean.numel()} and {std.numel()}")
    elif mean is not None or std is not None:
        raise FastDMError("mean/std are fused only for uint8 input; float images are used as given")
    if not isinstance(table, DSATable):
        raise FastDMError(f"table must be a fastdm.augment.DSATable, got {type(table).__name__}")
    _check_table(table)
    table = table.to(x.device)
    if group is None:
        if table.groups != n:
            raise FastDMError(f"the table has {table.groups} rows for {n} images; pass group=")
        group = torch.arange(n, device=x.device)
    elif not isinstance(group, torch.Tensor) or group.dim() != 1 or group.shape[0] != n \
            or group.dtype.is_floating_point or group.dtype == torch.bool:
        raise FastDMError(f"group must be an integer tensor of shape [{n}] (one table row per image)")
    group = group.to(device=x.device, dtype=torch.int64)
    if n and x.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = int(group.min()), int(group.max())
        if lo < 0 or hi >= table.groups:
            raise FastDMError(f"group indices must lie in [0, {table.groups}) (the table's rows), "
                              f"got values from {lo} to {hi}")
    elif n:  # no host sync on the GPU (or in a traced graph): an assert on the device instead
        torch._assert_async(((group >= 0) & (group < table.groups)).all())
    backend = choose_backend("dsa", backend, x.device)
    if backend == "torch" or not table.ops or n == 0:
        # native ops and autograd: no custom-op dispatch, and torch.compile sees (and fuses)
        # the ops themselves; fastdm::dsa runs this same code for backend='torch'
        return torch_reference(x, group, table, mean, std, partition).contiguous()
    tensors = [getattr(table, f).contiguous() for f in _FIELDS]
    part = [] if partition is None else \
        [t.to(device=x.device, dtype=torch.int64).contiguous()
         for t in (partition.source, partition.tile, partition.index)]
    return _dsa_op(x, group.contiguous(), tensors, mean, std, part,
                   1 if partition is None else partition.factor, "_".join(table.ops), table.mode,
                   backend)
