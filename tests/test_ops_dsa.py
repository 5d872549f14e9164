"""The fused DSA kernels (fastdm.ops.dsa) against the torch path: forward and input gradients for
every op and mode, odd shapes, bf16, uint8 with fused normalisation, opcheck, torch.compile,
the compat DiffAugment and the engine on this backend.

On the CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
FASTDM_TEST_DEVICE=cuda runs the same tests on the compiled kernels. Every test draws fresh
random inputs and tables; the seed is in the failure message.
"""
import dataclasses
import logging

import pytest
import torch

from conftest import TEST_DEVICE as DEVICE
from fastdm import backend, rng
from fastdm.augment import DSAParams, build_table, parse_strategy, sample_siamese
from fastdm.errors import FastDMError

ops_dsa = pytest.importorskip("fastdm.ops.dsa")
if "dsa" not in backend.FUSED_OPS:
    pytest.skip("triton does not import here: no fused kernels to test", allow_module_level=True)

from fastdm.ops.dsa import dsa_augment, segments, torch_reference  # noqa: E402

SINGLE = ["color", "crop", "cutout", "flip", "scale", "rotate"]
FULL = "color_crop_cutout_flip_scale_rotate"
# fp32 tolerance: the kernels compute sampling points and means in another order than
# affine_grid (a bmm) + grid_sample and mean(). A sampling point differs by a few ulp of its
# pixel coordinate (ulp(64) = 7.6e-6), times the image's local slope (inputs ~N(0, 4) differ
# by up to ~15 between neighbours): up to ~1e-4 at 64 px; colour/integer ops differ by ~1e-7.
ATOL, RTOL = 1e-4, 1e-5


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def random_table(ops, mode, groups, hw, gen, wide=False):
    """A table from random draws; ``wide`` stretches the ranges (large shifts, boxes at the
    borders, scale 0.5-2, rotations up to 180 degrees) beyond DM's defaults."""
    p = DSAParams(aug_mode=mode)
    if wide:
        p = DSAParams(aug_mode=mode, ratio_scale=2.0, ratio_rotate=180.0, ratio_crop_pad=0.45,
                      ratio_cutout=0.7, prob_flip=0.5)
    h, w = hw
    words = (int(torch.randint(0, 2**31 - 1, (), generator=gen)), rng.AUG, 0)
    t = sample_siamese(ops, p, hw, *words, keys=torch.arange(groups))
    if wide:  # raw draws over the widened ranges, through the same formulas
        u = lambda: torch.rand(groups, generator=gen)  # noqa: E731
        sh, sw = max(1, int(h * 0.45 + 0.5)), max(1, int(w * 0.45 + 0.5))
        t = build_table(ops, p, hw, op=t.op, b=u(), s=u(), c=u(),
                        tx=torch.randint(-sh, sh + 1, (groups,), generator=gen),
                        ty=torch.randint(-sw, sw + 1, (groups,), generator=gen),
                        oh=torch.randint(0, h + 1, (groups,), generator=gen),
                        ow=torch.randint(0, w + 1, (groups,), generator=gen),
                        f=u(), sx_u=u(), sy_u=u(), rot_u=u())
    return t.to(DEVICE)


def both(x, table, group, dtype=torch.float32, **kw):
    """(torch path, Triton path) outputs and input gradients for one random upstream gradient."""
    outs = []
    up = None
    for name in ("torch", "triton"):
        xi = x.detach().clone().to(dtype).requires_grad_(x.is_floating_point())
        y = dsa_augment(xi, table, group, backend=name, **kw)
        if up is None:
            up = torch.randn(y.shape, device=y.device).to(y.dtype)
        g = torch.autograd.grad(y, xi, up)[0] if xi.requires_grad else None
        outs.append((y, g))
    return outs


def check(x, table, group, seed, atol=ATOL, rtol=RTOL, **kw):
    (yt, gt), (yk, gk) = both(x, table, group, **kw)
    assert yk.shape == yt.shape and yk.dtype == yt.dtype and yk.is_contiguous()
    torch.testing.assert_close(yk, yt, atol=atol, rtol=rtol, msg=lambda m: f"forward, seed {seed}: {m}")
    if gt is not None:
        torch.testing.assert_close(gk, gt, atol=atol, rtol=rtol, msg=lambda m: f"grad, seed {seed}: {m}")


SHAPES = [(1, 1, 28, 28), (3, 3, 7, 9), (2, 3, 32, 32), (2, 3, 64, 64), (3, 1, 9, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", SINGLE)
def test_each_op_matches_the_torch_path(op, shape):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    n = shape[0]
    groups = max(1, n // 2)
    x = (torch.randn(shape, generator=gen) * 2).to(DEVICE)
    group = torch.randint(0, groups, (n,), generator=gen).to(DEVICE)  # Siamese rows by index
    check(x, random_table((op,), "S", groups, shape[2:], gen), group, seed)
    check(x, random_table((op,), "S", groups, shape[2:], gen, wide=True), group, seed)


# the full strategy in the quick tier; the other combinations (2-5 s each in the interpreter) slow
@pytest.mark.parametrize("strategy", [FULL] + [pytest.param(s, marks=pytest.mark.slow) for s in
                                               ("scale_rotate_crop", "crop_color", "flip_cutout_crop_rotate")])
@pytest.mark.parametrize("mode", ["S", "M"])
# 32 x 32 in the slow tier: the quick tier has 32 x 32 in the per-op and DM-chunk tests
@pytest.mark.parametrize("shape", [pytest.param((4, 3, 7, 9), id="7x9"),
                                   pytest.param((3, 3, 32, 32), id="32", marks=pytest.mark.slow)])
def test_strategies_and_modes_match_the_torch_path(strategy, mode, shape):
    """Mode S: a batch of many classes mixing every op (one per row); mode M: all ops in order,
    in as many fused segments as the order needs."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    ops = parse_strategy(strategy)
    groups = 10
    x = torch.randn(shape, generator=gen).to(DEVICE)
    group = torch.randint(0, groups, (shape[0],), generator=gen).to(DEVICE)
    check(x, random_table(ops, mode, groups, shape[2:], gen), group, seed)
    check(x, random_table(ops, mode, groups, shape[2:], gen, wide=True), group, seed)


def test_a_dm_chunk_of_classes_with_every_op_present():
    """The engine's case: ten classes, 3 images each, one row per class, all six ops."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    table = random_table(parse_strategy(FULL), "S", 10, (32, 32), gen)
    table.op = torch.arange(10, device=DEVICE) % 6
    group = torch.arange(10, device=DEVICE).repeat_interleave(3)
    check(torch.randn(30, 3, 32, 32, generator=gen).to(DEVICE), table, group, seed)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 1, 1, 5), (2, 3, 2, 3)])
def test_tiny_images(shape):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(DEVICE)
    for mode in "SM":
        table = random_table(parse_strategy(FULL), mode, shape[0], shape[2:], gen)
        check(x, table, None, seed)


AFFINES = {
    "rot90": [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]],
    "rot180": [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
    "zoom-out 0.05": [[0.05, 0.0, 0.0], [0.0, 0.05, 0.0]],
    "zoom-in 3": [[3.0, 0.0, 0.1], [0.0, 3.0, -0.2]],
    "shear, nearly flat": [[1.0, 0.7, 0.0], [0.02, 0.015, 0.3]],
    "singular": [[1.0, 2.0, 0.0], [0.5, 1.0, 0.0]],
}


# the 16 x 16 cases run 1-7 s each in the interpreter: slow tier (the other shapes reach the
# same code paths in the quick tier)
@pytest.mark.parametrize("shape", [(2, 3, 9, 1), (2, 3, 1, 9), (2, 1, 2, 2),
                                   pytest.param((2, 3, 16, 16), marks=pytest.mark.slow),
                                   (1, 2, 5, 17)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(AFFINES))
def test_extreme_affine_maps_forward_gradient_and_transpose(name, shape):
    """Hand-built matrices far outside DM's ranges: the backward's search window (from the
    inverted map, capped to the image) must still find every output pixel that read a pixel."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    n = shape[0]
    table = random_table(("scale", "rotate"), "S", n, shape[2:], gen)
    theta = torch.tensor(AFFINES[name]).expand(n, 2, 3).clone().to(DEVICE)
    table.scale, table.rotate = theta, theta
    x = torch.randn(shape, generator=gen).to(DEVICE)
    check(x, table, None, seed)
    xg = x.clone().requires_grad_(True)
    y = dsa_augment(xg, table, backend="triton")
    g = torch.randn(y.shape, generator=gen).to(DEVICE)
    (gx,) = torch.autograd.grad(y, xg, g)
    lhs, rhs = (y.double() * g.double()).sum(), (x.double() * gx.double()).sum()
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + 1), (float(lhs), float(rhs), seed)


def test_fp16_inputs():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 12, 12, generator=gen).half().float().to(DEVICE)
    table = random_table(parse_strategy(FULL), "S", 4, (12, 12), gen)
    table.op = torch.arange(4, device=DEVICE) % 6
    y = dsa_augment(x.half(), table, backend="triton")
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), dsa_augment(x, table, backend="torch"), atol=1e-2,
                               rtol=2 ** -10, msg=f"seed {seed}")


@pytest.mark.parametrize("mode", ["S", pytest.param("M", marks=pytest.mark.slow)])  # (time)
def test_bf16_inputs_accumulate_in_fp32(mode):
    """bf16 in, bf16 out, fp32 inside: within 2 bf16 ulp (2^-7 relative) of the fp32 torch path
    on the same (bf16-representable) values."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 16, 16, generator=gen).to(torch.bfloat16).float().to(DEVICE)
    table = random_table(parse_strategy(FULL), mode, 3, (16, 16), gen)
    group = torch.tensor([0, 1, 2, 2, 1, 0], device=DEVICE)
    y32 = dsa_augment(x, table, group, backend="torch")
    xk = x.to(torch.bfloat16).requires_grad_(True)
    yk = dsa_augment(xk, table, group, backend="triton")
    assert yk.dtype == torch.bfloat16
    up = torch.randn(yk.shape, generator=gen).to(DEVICE)
    (gk,) = torch.autograd.grad(yk, xk, up.to(torch.bfloat16))
    xt = x.clone().requires_grad_(True)
    (g32,) = torch.autograd.grad(dsa_augment(xt, table, group, backend="torch"), xt,
                                 up.to(torch.bfloat16).float())
    torch.testing.assert_close(yk.float(), y32, atol=2e-2, rtol=2 ** -7, msg=f"seed {seed}")
    torch.testing.assert_close(gk.float(), g32, atol=2e-2, rtol=2 ** -7, msg=f"seed {seed}")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("mode", ["S", "M"])
def test_uint8_with_fused_normalisation(layout, mode):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (8, 3, 12, 10), generator=gen, dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    table = random_table(parse_strategy(FULL), mode, 4, (12, 10), gen)
    group = torch.randint(0, 4, (8,), generator=gen).to(DEVICE)
    want = torch_reference(u8.to(DEVICE), group, table, torch.tensor(mean), torch.tensor(std))
    arg = u8.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else u8
    got = dsa_augment(arg.to(DEVICE), table, group, mean=mean, std=std,
                      channels_last=layout == "nhwc", backend="triton")
    assert got.dtype == torch.float32 and got.shape == (8, 3, 12, 10)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, msg=f"seed {seed}")
    # and the torch backend with the same arguments is the torch path
    same = dsa_augment(arg.to(DEVICE), table, group, mean=mean, std=std,
                       channels_last=layout == "nhwc", backend="torch")
    assert torch.equal(same, want)


@pytest.mark.parametrize("mode", ["S", pytest.param("M", marks=pytest.mark.slow)])  # (time)
def test_backward_is_the_exact_transpose_of_the_forward(mode):
    """<A x, g> = <x, A^T g> for the kernels themselves (A x = f(x) - f(0): brightness adds a
    constant), summed in float64."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 11, 13, generator=gen).to(DEVICE).requires_grad_(True)
    table = random_table(parse_strategy(FULL), mode, 5, (11, 13), gen, wide=True)
    y = dsa_augment(x, table, backend="triton")
    y0 = dsa_augment(torch.zeros_like(x), table, backend="triton")
    g = torch.randn(y.shape, generator=gen).to(DEVICE)
    (gx,) = torch.autograd.grad(y, x, g)
    lhs = ((y - y0).double() * g.double()).sum()
    rhs = (x.detach().double() * gx.double()).sum()
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + 1), (float(lhs), float(rhs), seed)


def test_segment_plan():
    assert segments(parse_strategy(FULL), "S") == [parse_strategy(FULL)]
    assert segments(parse_strategy(FULL), "M") == [("color", "crop", "cutout", "flip", "scale"), ("rotate",)]
    assert segments(("crop", "color"), "M") == [("crop",), ("color",)]
    assert segments(("scale", "rotate", "crop"), "M") == [("scale",), ("rotate",), ("crop",)]
    assert segments(("crop", "flip", "cutout"), "M") == [("crop", "flip"), ("cutout",)]
    assert segments((), "M") == []


def test_triton_path_launches_kernels(monkeypatch):
    """The Triton backend runs the kernels (not the torch path under another name)."""
    calls = []
    real = ops_dsa._triton_forward
    monkeypatch.setattr(ops_dsa, "_triton_forward", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(ops_dsa, "torch_reference", lambda *a: pytest.fail("torch path used"))
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    table = random_table(("crop",), "S", 2, (8, 8), torch.Generator().manual_seed(0))
    dsa_augment(x, table, backend="triton")
    assert calls == [1]


@pytest.mark.slow  # 27 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_opcheck():
    gen = torch.Generator().manual_seed(fresh_seed())
    table = random_table(parse_strategy(FULL), "S", 3, (6, 5), gen)
    tensors = [getattr(table, f).contiguous() for f in ops_dsa._FIELDS]
    group = torch.tensor([0, 1, 2, 1], device=DEVICE)
    x = torch.randn(4, 3, 6, 5, device=DEVICE, requires_grad=True)
    u8 = torch.randint(0, 256, (4, 3, 6, 5), dtype=torch.uint8, device=DEVICE)
    mean = torch.tensor([0.5, 0.4, 0.3], device=DEVICE)
    std = torch.tensor([0.2, 0.25, 0.3], device=DEVICE)
    from fastdm.augment.partition import partition
    p = partition(2, 1, 2, DEVICE)  # 2 stored images of 6 x 4 -> 8 decoded
    part = [p.source, p.tile, p.index]
    stored = torch.randn(2, 3, 6, 4, device=DEVICE, requires_grad=True)
    dgroup = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0], device=DEVICE)
    for be in ("triton", "torch"):
        for mode in ("S", "M"):
            torch.library.opcheck(torch.ops.fastdm.dsa.default,
                                  (x, group, tensors, None, None, [], 1, FULL, mode, be))
        torch.library.opcheck(torch.ops.fastdm.dsa.default,
                              (u8, group, tensors, mean, std, [], 1, FULL, "S", be))
        torch.library.opcheck(torch.ops.fastdm.dsa.default,
                              (stored, dgroup, tensors, None, None, part, 2, "crop_flip", "M", be))


def test_torch_compile_traces_without_graph_breaks():
    gen = torch.Generator().manual_seed(fresh_seed())
    table = random_table(parse_strategy(FULL), "S", 4, (8, 8), gen)
    group = torch.arange(4, device=DEVICE)

    def f(x):
        return dsa_augment(x, table, group, backend="triton").square().sum()

    x = torch.randn(4, 3, 8, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad(compiled(x), x)
    (g0,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g1, g0)


def test_compat_diffaugment_on_the_triton_backend_gives_the_reference_numbers(monkeypatch):
    from spec_oracle import spec_diffaugment

    from fastdm.compat import DiffAugment, ParamDiffAug
    monkeypatch.setenv("FASTDM_BACKEND", "triton")
    used = []
    real = ops_dsa._triton_forward
    monkeypatch.setattr(ops_dsa, "_triton_forward", lambda *a: used.append(1) or real(*a))
    for mode in ("S", "M"):
        p = ParamDiffAug()
        p.aug_mode = mode
        for seed in (0, 7, 4242):
            x = torch.randn(5, 3, 12, 12)
            state = torch.get_rng_state()
            want, _ = spec_diffaugment(x, FULL, seed, mode)
            torch.set_rng_state(state)
            got = DiffAugment(x.to(DEVICE), FULL, seed=seed, param=p)
            torch.testing.assert_close(got.cpu(), want, atol=ATOL, rtol=RTOL)
    assert len(used) == 6


def test_engine_runs_on_the_triton_backend(monkeypatch):
    """FASTDM_BACKEND=triton: the engine says so and one iteration's loss and gradient equal the
    torch backend's (uint8 real images normalised inside the kernel)."""
    from conftest import engine_for, make_dataset
    data = make_dataset(num_classes=3, per_class=(9, 7, 8), size=(12, 12))
    results = {}
    for be in ("torch", "triton"):
        monkeypatch.setenv("FASTDM_BACKEND", be)
        engine = engine_for(data, ipc=2, iterations=1, batch_real=5, model="ConvNetW32",
                            device=str(DEVICE), conv="direct")  # the same convolutions
        assert engine.plan.backends["dsa"] == be
        state = engine.initial_state()
        results[be] = engine.loss_and_grad(state.images, 0)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-6, rtol=1e-4)


def test_no_ops_and_empty_batches():
    table = random_table((), "S", 3, (5, 5), torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 5, 5, device=DEVICE)
    assert torch.equal(dsa_augment(x, table, backend="triton"), x)
    table = random_table(("crop",), "S", 3, (5, 5), torch.Generator().manual_seed(0))
    empty = torch.zeros(0, 2, 5, 5, device=DEVICE)
    assert dsa_augment(empty, table, torch.zeros(0, dtype=torch.long, device=DEVICE),
                       backend="triton").shape == (0, 2, 5, 5)


def test_bad_input_is_a_clear_error():
    table = random_table(("crop",), "S", 2, (5, 5), torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    cases = [
        (lambda: dsa_augment(x[0], table), "4-D"),
        (lambda: dsa_augment(x.double(), table), "float32, bfloat16"),
        (lambda: dsa_augment(x.to(torch.uint8), table), "mean and std"),
        (lambda: dsa_augment(x.to(torch.uint8), table, mean=[0.5], std=[0.5]), "3 values"),
        (lambda: dsa_augment(x, table, mean=[0.5] * 3, std=[0.5] * 3), "only for uint8"),
        (lambda: dsa_augment(torch.randn(3, 3, 5, 5), table), "pass group="),
        (lambda: dsa_augment(x, table, torch.zeros(3, dtype=torch.long)), "shape \\[2\\]"),
        (lambda: dsa_augment(x, table, torch.zeros(2)), "integer tensor"),
        (lambda: dsa_augment(x.cpu(), table.to("cpu"), torch.tensor([0, 2])), "lie in \\[0, 2\\)"),
        (lambda: dsa_augment(x.cpu(), table.to("cpu"), torch.tensor([-1, 0])), "from -1 to 0"),
        (lambda: dsa_augment(x, table, backend="cuda"), "'torch' or 'triton'"),
        (lambda: dsa_augment(x, "crop"), "DSATable"),
        (lambda: dsa_augment(x, dataclasses.replace(table, mode="m")), "mode must be"),
        (lambda: dsa_augment(x, dataclasses.replace(table, ops=("crop", "zoom"))), "unknown augmentation op"),
        (lambda: dsa_augment(x, dataclasses.replace(table, scale=table.scale[:1])), "field scale"),
        (lambda: dsa_augment(x, dataclasses.replace(table, crop=table.crop.float())), "integer tensor"),
        (lambda: dsa_augment(x.cpu(), dataclasses.replace(table.to("cpu"), op=torch.tensor([0, 1]))),
         "op indices"),
    ]
    for fn, msg in cases:
        with pytest.raises(FastDMError, match=msg):
            fn()


def test_triton_request_that_cannot_run_is_an_error_or_a_logged_fallback(monkeypatch, caplog):
    """Explicit backend='triton' where it cannot run raises; the automatic choice logs."""
    if DEVICE.type == "cuda":
        pytest.skip("on CUDA the Triton path can always run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    table = random_table(("crop",), "S", 2, (5, 5), torch.Generator().manual_seed(0))
    with pytest.raises(FastDMError, match="TRITON_INTERPRET"):
        dsa_augment(torch.randn(2, 3, 5, 5), table, backend="triton")
    monkeypatch.setenv("FASTDM_BACKEND", "triton")
    monkeypatch.setattr(backend, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        assert backend.backend_for("dsa", "cpu") == "torch"
    assert "Triton backend requested for 'dsa'" in caplog.text and "TRITON_INTERPRET" in caplog.text


def test_strided_float_input_and_its_gradient():
    """Float images in another layout (a channels-last view) go through the kernels' strides."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    nhwc = torch.randn(4, 9, 11, 3, generator=gen).to(DEVICE)
    table = random_table(parse_strategy(FULL), "S", 4, (9, 11), gen)
    outs = []
    for be in ("torch", "triton"):
        x = nhwc.clone().requires_grad_(True)
        y = dsa_augment(x, table, channels_last=True, backend=be)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert g.shape == nhwc.shape
        outs.append((y, g))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=ATOL, rtol=RTOL, msg=f"seed {seed}")
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=ATOL, rtol=RTOL, msg=f"seed {seed}")
