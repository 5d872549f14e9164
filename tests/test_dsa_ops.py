"""Each DSA op against hand-computed expectations, gradients, Siamese sharing, modes S/M."""
import itertools
import math

import pytest
import torch

from fastdm import rng
from fastdm.augment import (DSAParams, apply_dsa, apply_op, build_table, functional as Fn,
                            parse_strategy, sample_per_sample, sample_siamese)
from fastdm.errors import FastDMError


def test_crop_is_integer_shift_with_zero_fill():
    x = torch.randn(4, 3, 7, 9)
    shifts = torch.tensor([[0, 0], [2, -3], [-7, 1], [3, 9]])
    out = Fn.crop(x, shifts)
    for n, (dr, dc) in enumerate(shifts.tolist()):
        for i, j in itertools.product(range(7), range(9)):
            si, sj = i + dr, j + dc
            want = x[n, :, si, sj] if 0 <= si < 7 and 0 <= sj < 9 else torch.zeros(3)
            assert torch.equal(out[n, :, i, j], want)


def test_cutout_box_clipping_at_borders():
    x = torch.randn(3, 2, 6, 5) + 10
    boxes = torch.tensor([[0, 2, 0, 3], [4, 6, 3, 5], [1, 1, 0, 5]])  # the last one is empty
    out = Fn.cutout(x, boxes)
    for n, (r0, r1, c0, c1) in enumerate(boxes.tolist()):
        mask = torch.ones(6, 5)
        mask[r0:r1, c0:c1] = 0
        assert torch.equal(out[n], x[n] * mask)


@pytest.mark.parametrize("h,w", [(32, 32), (28, 28), (7, 9), (8, 8), (1, 1), (2, 3)])
def test_cutout_box_from_draws_matches_clamped_index_set(h, w):
    """The table's box equals the set {clamp(o - size//2 + k, 0, n-1) : k < size} (spec)."""
    p = DSAParams()
    size_h, size_w = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    oh = torch.arange(0, h + (1 - size_h % 2))
    ow = torch.arange(0, w + (1 - size_w % 2))
    oh, ow = torch.cartesian_prod(oh, ow).unbind(1)
    g = oh.numel()
    z = torch.zeros(g)
    t = build_table(("cutout",), p, (h, w), op=torch.zeros(g, dtype=torch.long), b=z, s=z, c=z,
                    tx=oh * 0, ty=oh * 0, oh=oh, ow=ow, f=z, sx_u=z, sy_u=z, rot_u=z)
    for i in range(g):
        rows = {min(max(int(oh[i]) - size_h // 2 + k, 0), h - 1) for k in range(size_h)}
        cols = {min(max(int(ow[i]) - size_w // 2 + k, 0), w - 1) for k in range(size_w)}
        r0, r1, c0, c1 = t.cutout[i].tolist()
        assert set(range(r0, r1)) == rows and set(range(c0, c1)) == cols


def test_identity_affine_is_identity_up_to_bilinear_rounding():
    x = torch.randn(2, 3, 9, 7)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(Fn.affine(x, eye), x, atol=1e-5)
    # rotation by 0 and scale 1 through the table formulas
    p = DSAParams()
    z = torch.zeros(2)
    half = torch.full((2,), 0.5)
    ratio = p.ratio_scale
    one_u = torch.full((2,), (1 - 1 / ratio) / (ratio - 1 / ratio))  # sx = 1
    t = build_table(("scale", "rotate"), p, (9, 7), op=torch.zeros(2, dtype=torch.long), b=z, s=z, c=z,
                    tx=z.long(), ty=z.long(), oh=z.long(), ow=z.long(), f=z, sx_u=one_u, sy_u=one_u,
                    rot_u=half)
    assert torch.allclose(t.rotate, eye)
    assert torch.allclose(t.scale, eye, atol=1e-6)
    assert torch.allclose(apply_op("rotate", x, t, torch.arange(2)), x, atol=1e-5)
    assert torch.allclose(apply_op("scale", x, t, torch.arange(2)), x, atol=1e-5)


def test_rotation_by_90_degrees_moves_pixels():
    # A square image rotated by +90 deg through the affine grid: exact permutation of pixels.
    x = torch.arange(16.0).view(1, 1, 4, 4)
    t = math.pi / 2
    theta = torch.tensor([[[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0]]])
    out = Fn.affine(x, theta)
    # output (x, y) samples the input at (cos t x - sin t y, sin t x + cos t y) = (-y, x), so
    # out[i, j] = in[j, n - 1 - i]
    want = torch.tensor([[x[0, 0, j, 3 - i] for j in range(4)] for i in range(4)])
    assert torch.allclose(out[0, 0], want, atol=1e-4)


def test_colour_formulas():
    x = torch.randn(3, 3, 5, 4)
    shift = torch.tensor([0.25, -0.5, 0.0])
    assert torch.allclose(Fn.brightness(x, shift), x + shift.view(3, 1, 1, 1))
    f = torch.tensor([0.0, 1.0, 2.0])
    sat = Fn.saturation(x, f)
    gray = x.mean(1, keepdim=True)
    assert torch.allclose(sat[0], gray[0].expand(3, 5, 4))          # factor 0: grey
    assert torch.allclose(sat[1], x[1], atol=1e-6)                  # factor 1: unchanged
    assert torch.allclose(sat[2], 2 * x[2] - gray[2], atol=1e-6)
    con = Fn.contrast(x, f)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(con[0], m[0].expand(3, 5, 4))
    assert torch.allclose(con[2], 2 * x[2] - m[2], atol=1e-6)
    # factors from draws: (b - 0.5) * 1.0, s * 2.0, c + 0.5
    p = DSAParams()
    u = torch.tensor([0.0, 0.25, 0.9])
    zl = torch.zeros(3, dtype=torch.long)
    t = build_table(("color",), p, (5, 4), op=zl, b=u, s=u, c=u, tx=zl, ty=zl, oh=zl, ow=zl, f=u,
                    sx_u=u, sy_u=u, rot_u=u)
    assert torch.allclose(t.brightness, u - 0.5)
    assert torch.allclose(t.saturation, u * 2)
    assert torch.allclose(t.contrast, u + 0.5)


def test_flip():
    x = torch.randn(2, 1, 3, 4)
    out = Fn.flip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def _table(ops, g, hw, seed=3, mode="S"):
    return sample_siamese(ops, DSAParams(aug_mode=mode), hw, seed, rng.AUG, 0, keys=torch.arange(g))


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_gradcheck_every_op(op):
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    t = _table((op,), 3, (5, 6))
    t.flip = torch.tensor([True, False, True])  # exercise both branches of flip
    torch.autograd.gradcheck(lambda y: apply_op(op, y, t, torch.arange(3)), (x,))


def test_gradcheck_mixed_mode_s_batch():
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = _table(ops, 6, (6, 5), seed=11)
    t.op = torch.arange(6)  # every op present once
    x = torch.randn(6, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda y: apply_dsa(y, t), (x,))


def test_mode_s_applies_exactly_the_rows_op():
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = _table(ops, 40, (8, 8), seed=5)
    x = torch.randn(40, 3, 8, 8)
    out = apply_dsa(x, t)
    for i in range(40):
        want = apply_op(ops[int(t.op[i])], x[i:i + 1], t, torch.tensor([i]))
        assert torch.allclose(out[i:i + 1], want, atol=1e-6)


def test_mode_m_applies_all_ops_in_order():
    ops = parse_strategy("crop_color_flip_rotate")
    t = _table(ops, 4, (9, 9), mode="M")
    x = torch.randn(4, 3, 9, 9)
    want = x
    for op in ops:
        want = apply_op(op, want, t, torch.arange(4))
    assert torch.allclose(apply_dsa(x, t), want)
    assert not torch.allclose(apply_dsa(x, _table(ops, 4, (9, 9), mode="S")), want)


def test_siamese_groups_share_the_transform():
    """Real and synthetic images of a class, augmented with the class's row, get the same
    transform: identical inputs give identical outputs, across two separate calls."""
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = _table(ops, 5, (8, 8), seed=2)
    base = torch.randn(5, 3, 8, 8)
    real = base.repeat_interleave(7, 0)           # 7 "real" copies per class
    syn = base.repeat_interleave(2, 0)            # 2 "synthetic" copies per class
    out_r = apply_dsa(real, t, torch.arange(5).repeat_interleave(7))
    out_s = apply_dsa(syn, t, torch.arange(5).repeat_interleave(2))
    for c in range(5):
        for k in range(7):
            assert torch.allclose(out_r[7 * c + k], out_s[2 * c], atol=1e-6)
    # and different rows (classes) do get different transforms
    assert not torch.allclose(out_s[0::2][0], apply_dsa(base[:1], t, torch.tensor([1]))[0])


def test_batched_equals_per_class_application():
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = _table(ops, 12, (10, 10), seed=8)
    x = torch.randn(36, 3, 10, 10)
    group = torch.arange(12).repeat_interleave(3)
    out = apply_dsa(x, t, group)
    for c in range(12):
        one = apply_dsa(x[3 * c:3 * c + 3], t.rows(torch.tensor([c])), torch.zeros(3, dtype=torch.long))
        assert torch.allclose(out[3 * c:3 * c + 3], one, atol=1e-6)


def test_per_sample_table_shares_one_op():
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = sample_per_sample(ops, DSAParams(), (8, 8), 50, 1, rng.EVAL_AUG, 0, 7)
    assert t.groups == 50 and len(set(t.op.tolist())) == 1
    assert len(set(t.brightness.tolist())) > 40


def test_batch_of_one_and_empty_batch():
    t = _table(parse_strategy("scale"), 1, (4, 4))
    x = torch.randn(1, 1, 4, 4)
    assert apply_dsa(x, t).shape == x.shape
    assert apply_dsa(x[:0], t).shape == (0, 1, 4, 4)


def test_strategy_parsing():
    assert parse_strategy("none") == () and parse_strategy("") == ()
    assert parse_strategy("crop_flip") == ("crop", "flip")
    with pytest.raises(FastDMError, match="unknown augmentation op 'blur'"):
        parse_strategy("crop_blur")
    with pytest.raises(FastDMError, match="augmentation mode"):
        DSAParams(aug_mode="X")


def test_sampled_parameter_ranges():
    ops = parse_strategy("color_crop_cutout_flip_scale_rotate")
    t = sample_siamese(ops, DSAParams(), (32, 32), 0, rng.AUG, 0, keys=torch.arange(5000))
    assert set(t.op.tolist()) == set(range(6))
    assert t.brightness.min() >= -0.5 and t.brightness.max() < 0.5
    assert t.saturation.min() >= 0 and t.saturation.max() < 2
    assert t.contrast.min() >= 0.5 and t.contrast.max() < 1.5
    assert t.crop.min() == -4 and t.crop.max() == 4
    assert 0.4 < t.flip.float().mean() < 0.6
    sx = t.scale[:, 0, 0]
    assert sx.min() >= 1 / 1.2 - 1e-6 and sx.max() <= 1.2
    ang = torch.atan2(t.rotate[:, 1, 0], t.rotate[:, 0, 0])
    assert ang.abs().max() <= 15 / 180 * math.pi + 1e-6
    # cutout boxes are 16x16 clipped to the image
    r = t.cutout[:, 1] - t.cutout[:, 0]
    assert r.max() == 16 and r.min() >= 8
