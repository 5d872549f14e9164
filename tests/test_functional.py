"""fastdm.functional: each public op against a plain-torch computation written here, on small
random inputs, on both backends (Triton runs in its CPU interpreter, see conftest)."""
import math

import pytest
import torch
import torch.nn.functional as TF

import fastdm.functional as F
from fastdm.backend import triton_unusable
from fastdm.errors import FastDMError

from conftest import TEST_DEVICE

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    triton_unusable("dsa", TEST_DEVICE) is not None, reason="Triton cannot run here"))]
REAL_COUNTS, SYN_COUNTS = [3, 1, 4], [2, 2, 1]  # unequal on purpose


def _rows(counts, d, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), d, generator=g, dtype=torch.float64).to(TEST_DEVICE)
    return x.float().requires_grad_(grad)


def _split(x, counts):
    return list(torch.split(x, counts))


def _close(a, b, tol=1e-5):
    assert torch.allclose(a.double().cpu(), b.double().cpu(), rtol=tol, atol=tol), (a, b)


# -- DSA -----------------------------------------------------------------------------------------
def _shift(x, tx, ty):
    """out[r, c] = x[r + tx, c + ty], zero outside (the reference's padded crop)."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for r in range(h):
        for c in range(w):
            if 0 <= r + tx < h and 0 <= c + ty < w:
                out[:, r, c] = x[:, r + tx, c + ty]
    return out


def _cut(x, oh, ow, size):
    """Zero the reference's cutout box: rows clamp(k + oh - size // 2) for k < size (cols alike)."""
    h, w = x.shape[-2:]
    out = x.clone()
    rows = {min(max(k + oh - size[0] // 2, 0), h - 1) for k in range(size[0])}
    cols = {min(max(k + ow - size[1] // 2, 0), w - 1) for k in range(size[1])}
    for r in rows:
        for c in cols:
            out[:, r, c] = 0
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_dsa_table_from_draws_matches_the_ops_written_out(backend):
    """Mode M: colour, crop, cutout and flip in order, each by the reference's formula."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 4, 8, 8
    x = torch.randn(n, 3, h, w, generator=g)
    u = {k: torch.rand(n, generator=g) for k in ("brightness", "saturation", "contrast", "flip")}
    u["flip"] = torch.tensor([0.1, 0.7, 0.4, 0.9])
    crop = torch.tensor([[-1, 0], [1, 1], [0, -1], [1, -1]])  # shifts in [-1, 1] at 8 px
    cut = torch.tensor([[0, 0], [3, 5], [7, 8], [4, 1]])      # centres in [0, 9) at 8 px
    params = F.DSAParams(aug_mode="M")
    table = F.dsa_table("color_crop_cutout_flip", (h, w), crop_x=crop[:, 0], crop_y=crop[:, 1],
                        cutout_x=cut[:, 0], cutout_y=cut[:, 1], params=params, **u)
    got = F.dsa_augment(x.to(TEST_DEVICE), table, backend=backend)
    for i in range(n):
        y = x[i] + (u["brightness"][i] - 0.5) * 1.0
        m = y.mean(0, keepdim=True)
        y = (y - m) * (u["saturation"][i] * 2.0) + m
        m = y.mean()
        y = (y - m) * (u["contrast"][i] + 0.5) + m
        y = _shift(y, int(crop[i, 0]), int(crop[i, 1]))
        y = _cut(y, int(cut[i, 0]), int(cut[i, 1]), (4, 4))
        y = y.flip(2) if u["flip"][i] < 0.5 else y
        _close(got[i], y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dsa_scale_and_rotate_rows_match_affine_grid_sample(backend):
    """Mode S: each row applies its own op; scale and rotate are the reference's affine warps."""
    g = torch.Generator().manual_seed(1)
    n = 4
    x = torch.randn(n, 2, 9, 7, generator=g)
    sx, sy, rot = (torch.rand(n, generator=g) for _ in range(3))
    op = torch.tensor([0, 1, 1, 0])
    table = F.dsa_table("scale_rotate", (9, 7), op=op, scale_x=sx, scale_y=sy, rotate=rot)
    got = F.dsa_augment(x.to(TEST_DEVICE), table, backend=backend)
    for i in range(n):
        if op[i] == 0:
            lo = 1 / 1.2
            theta = torch.tensor([[sx[i] * (1.2 - lo) + lo, 0, 0], [0, sy[i] * (1.2 - lo) + lo, 0]])
        else:
            a = (rot[i] - 0.5) * 2 * 15.0 / 180 * math.pi
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]])
        grid = TF.affine_grid(theta[None], [1, 2, 9, 7], align_corners=False)  # torch's default,
        _close(got[i], TF.grid_sample(x[i:i + 1], grid, align_corners=False)[0], 1e-4)  # as used


def test_dsa_uint8_input_is_normalised_then_augmented():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (3, 3, 6, 6), generator=g, dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    table = F.dsa_table("flip", 6, op=torch.zeros(3, dtype=torch.long), flip=torch.tensor([0.2, 0.8, 0.1]))
    got = F.dsa_augment(x, table, mean=mean, std=std)
    want = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    want = torch.stack([want[0].flip(2), want[1], want[2].flip(2)])
    _close(got, want, 1e-6)


def test_sample_dsa_table_rows_are_per_class_and_siamese():
    full = F.sample_dsa_table("color_crop_cutout_flip_scale_rotate", 8, 6, seed=3, iteration=7)
    some = F.sample_dsa_table("color_crop_cutout_flip_scale_rotate", 8, torch.tensor([4, 1]),
                              seed=3, iteration=7)
    for name in ("op", "brightness", "crop", "cutout", "flip", "scale", "rotate"):
        assert torch.equal(getattr(some, name), getattr(full, name)[[4, 1]]), name
    later = F.sample_dsa_table("color_crop_cutout_flip_scale_rotate", 8, 6, seed=3, iteration=8)
    assert not torch.equal(later.brightness, full.brightness)
    # a class's real and synthetic images share its row: the same image gives the same output
    img = torch.randn(6, 3, 8, 8)
    both = torch.cat([img, img[[5, 0]]])
    group = torch.cat([torch.arange(6), torch.tensor([5, 0])])
    out = F.dsa_augment(both, full, group)
    assert torch.equal(out[6], out[5]) and torch.equal(out[7], out[0])


def test_dsa_table_errors_are_one_line():
    with pytest.raises(FastDMError, match="missing: crop_y"):
        F.dsa_table("crop", 8, op=torch.zeros(2, dtype=torch.long), crop_x=torch.zeros(2, dtype=torch.long))
    with pytest.raises(FastDMError, match="must be a 1-D tensor of"):
        F.dsa_table("flip", 8, op=torch.zeros(2, dtype=torch.long), flip=torch.zeros(3))
    with pytest.raises(FastDMError, match="op indices"):
        F.dsa_table("flip", 8, op=torch.tensor([1]), flip=torch.zeros(1))
    with pytest.raises(FastDMError, match="classes must be"):
        F.sample_dsa_table("flip", 8, [0, 1])
    with pytest.raises(FastDMError, match="unknown augmentation op"):
        F.sample_dsa_table("blur", 8, 2)


# -- per-class distances -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_sum_and_accumulation(backend):
    x = _rows(REAL_COUNTS, 5, 0)
    want = torch.stack([c.sum(0) for c in _split(x, REAL_COUNTS)])
    _close(F.segment_sum(x, REAL_COUNTS, backend=backend), want)
    out = torch.ones(3, 5, device=TEST_DEVICE)
    assert F.segment_sum(x, REAL_COUNTS, out=out, backend=backend) is out
    _close(out, want + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_mmd_and_dm_loss_match_the_reference_formula(backend):
    real, syn = _rows(REAL_COUNTS, 6, 1), _rows(SYN_COUNTS, 6, 2, grad=True)
    # the reference: per class sum((mean(real_c) - mean(syn_c))^2), summed over classes
    per = torch.stack([((r.mean(0) - s.mean(0)) ** 2).sum()
                       for r, s in zip(_split(real, REAL_COUNTS), _split(syn, SYN_COUNTS))])
    want_grad, = torch.autograd.grad(per.sum(), syn)
    sums = F.segment_sum(real, REAL_COUNTS, backend=backend)
    _close(F.linear_mmd(sums, REAL_COUNTS, syn, SYN_COUNTS, backend=backend), per)
    loss = F.dm_loss(real, REAL_COUNTS, syn, SYN_COUNTS, backend=backend)
    assert loss.dim() == 0
    _close(loss, per.sum())
    grad, = torch.autograd.grad(loss, syn)
    _close(grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("real_term", [True, False])
def test_gaussian_mmd_matches_pairwise_kernels(backend, real_term):
    real, syn = _rows(REAL_COUNTS, 4, 3), _rows(SYN_COUNTS, 4, 4, grad=True)
    bws = [0.5, 2.0]

    def k(a, b):
        d2 = torch.cdist(a.double(), b.double()) ** 2
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bws).sum()
    per = []
    for r, s in zip(_split(real, REAL_COUNTS), _split(syn, SYN_COUNTS)):
        v = k(s, s) / len(s) ** 2 - 2 * k(r, s) / (len(r) * len(s))
        per.append(v + k(r, r) / len(r) ** 2 if real_term else v)
    per = torch.stack(per)
    want_grad, = torch.autograd.grad(per.sum(), syn)
    got = F.gaussian_mmd(real, REAL_COUNTS, syn, SYN_COUNTS, bws, real_term=real_term, backend=backend)
    _close(got, per, 1e-4)
    grad, = torch.autograd.grad(got.sum(), syn)
    _close(grad, want_grad, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relative_bandwidths_are_multiples_of_the_class_spread(backend):
    real = _rows([3, 4], 5, 5)
    want = torch.stack([(torch.cdist(r, r) ** 2).mean().sqrt() for r in _split(real, [3, 4])])
    got = F.relative_bandwidths(real, [3, 4], [0.5, 1.0, 2.0], backend=backend)
    _close(got, want[:, None] * torch.tensor([0.5, 1.0, 2.0], device=TEST_DEVICE), 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_characteristic_function_distance_matches_its_formula(backend):
    real, syn = _rows(REAL_COUNTS, 4, 6), _rows(SYN_COUNTS, 4, 7, grad=True)
    t = _rows([5], 4, 8)
    alpha, beta = 0.3, 0.7

    def ecf(x):  # per class: mean over rows of cos and sin of x t^T
        ph = x.double() @ t.double().T
        return ph.cos().mean(0), ph.sin().mean(0)
    per = []
    for r, s in zip(_split(real, REAL_COUNTS), _split(syn, SYN_COUNTS)):
        (rr, ri), (sr, si) = ecf(r), ecf(s)
        a, b = torch.sqrt(rr ** 2 + ri ** 2), torch.sqrt(sr ** 2 + si ** 2)
        phase = (2 * (a * b - rr * sr - ri * si)).clamp(min=1e-12)
        per.append(torch.sqrt(alpha * (a - b) ** 2 + beta * phase).mean())
    per = torch.stack(per)
    want_grad, = torch.autograd.grad(per.sum(), syn)
    sums = F.cf_sums(real, REAL_COUNTS, t, backend=backend)
    want_sums = torch.stack([torch.stack([(r.double() @ t.double().T).cos().sum(0),
                                          (r.double() @ t.double().T).sin().sum(0)])
                             for r in _split(real, REAL_COUNTS)])
    _close(sums, want_sums)
    got = F.cf_distance(sums, REAL_COUNTS, syn, SYN_COUNTS, t, alpha, beta, backend=backend)
    _close(got, per, 1e-4)
    grad, = torch.autograd.grad(got.sum(), syn)
    _close(grad, want_grad, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_attention_map_matches_its_formula(backend, p):
    g = torch.Generator().manual_seed(9)
    a = torch.randn(3, 4, 5, 6, generator=g).to(TEST_DEVICE).requires_grad_(True)
    want = TF.normalize((a.abs() ** p).sum(1).flatten(1), dim=1)
    w = torch.randn_like(want)
    want_grad, = torch.autograd.grad((want * w).sum(), a)
    got = F.attention_map(a, p, backend=backend)
    _close(got, want)
    grad, = torch.autograd.grad((got * w).sum(), a)
    _close(grad, want_grad)


def test_docs_recipe_equals_the_per_class_loop():
    """docs/compat.md's fused DM step: loss and gradient of the reference's per-class loop."""
    from fastdm.compat import ParamDiffAug, get_network
    k, n_real, ipc = 3, 4, 2
    g = torch.Generator().manual_seed(10)
    real = torch.randn(k * n_real, 3, 8, 8, generator=g)
    image_syn = torch.randn(k * ipc, 3, 8, 8, generator=g, requires_grad=True)
    torch.manual_seed(0)
    embed = get_network("ConvNetW32", 3, k, (8, 8)).cpu().embed
    table = F.sample_dsa_table("color_crop_cutout_flip_scale_rotate", (8, 8), k, seed=1,
                               iteration=5, params=ParamDiffAug())
    loop = torch.zeros(())
    for c in range(k):  # the reference's loop, each class with its own row
        img_real = F.dsa_augment(real[c * n_real:(c + 1) * n_real], table, torch.full((n_real,), c))
        img_syn = F.dsa_augment(image_syn[c * ipc:(c + 1) * ipc], table, torch.full((ipc,), c))
        loop = loop + torch.sum((embed(img_real).detach().mean(0) - embed(img_syn).mean(0)) ** 2)
    want_grad, = torch.autograd.grad(loop, image_syn)
    classes = torch.arange(k)
    r = F.dsa_augment(real, table, classes.repeat_interleave(n_real))
    s = F.dsa_augment(image_syn, table, classes.repeat_interleave(ipc))
    with torch.no_grad():
        f_real = embed(r)
    loss = F.dm_loss(f_real, [n_real] * k, embed(s), [ipc] * k)
    grad, = torch.autograd.grad(loss, image_syn)
    _close(loss, loop)
    _close(grad, want_grad)


def test_bad_inputs_are_fastdm_errors():
    x = torch.randn(4, 3)
    with pytest.raises(FastDMError):
        F.segment_sum(x, [2, 1])  # counts sum to 3, not 4
    with pytest.raises(FastDMError):
        F.dm_loss(x, [4], torch.randn(2, 5), [2])  # different embedders
    with pytest.raises(FastDMError):
        F.attention_map(torch.randn(2, 3))
    with pytest.raises(FastDMError):
        F.dsa_augment(torch.randn(2, 3, 4, 4), F.sample_dsa_table("crop", 4, 3))  # 3 rows, 2 images
