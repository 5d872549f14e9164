"""Winograd F(4x4, 3x3) convolution (fastdm.ops.winograd, kernels/winograd.cpp) against
F.conv2d in float64, over odd shapes, paddings and block boundaries; its errors; its use by
the engine's real branch."""
import logging

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdm import native
from fastdm.backend import conv_for
from fastdm.errors import FastDMError
from fastdm.models import build_model
from fastdm.models.fast_embed import winograd_embed, winograd_layers
from fastdm.ops import winograd as W
from fastdm.ops.winograd import eligible, reference_winograd_conv2d, winograd_conv2d

SHAPES = [  # N, C, K, H, W, padding
    (1, 1, 1, 3, 3, 0), (3, 19, 5, 13, 7, 1), (2, 64, 70, 9, 17, 0), (1, 130, 16, 3, 3, 1),
    (4, 3, 128, 32, 32, 1), (2, 67, 33, 5, 4, 2), (3, 1, 8, 28, 28, 3), (5, 16, 129, 6, 11, 1),
]


def _case(n, c, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(k, c, 3, 3, generator=g) / (9 * c) ** 0.5
    b = torch.randn(k, generator=g)
    return x, wt, b


def _rel(a, ref):
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_conv2d_in_float64(shape, with_bias):
    n, c, k, h, w, pad = shape
    x, wt, b = _case(n, c, k, h, w, seed=sum(shape))
    b = b if with_bias else None
    ref = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), padding=pad)
    got = winograd_conv2d(x, wt, b, pad)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    # float32 rounding of the transforms: measured <= 8e-6 of the largest output
    assert _rel(got, ref) < 2e-5
    # the plain-torch algorithm in float64 checks the matrices themselves (exact to rounding)
    assert _rel(reference_winograd_conv2d(x.double(), wt.double(),
                                          None if b is None else b.double(), pad), ref) < 1e-12


def test_input_memory_format_and_many_blocks(monkeypatch):
    x, wt, b = _case(11, 24, 40, 10, 9, seed=1)
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=1)
    whole = winograd_conv2d(x, wt, b, 1)
    # tiny blocks: one image per block, and blocks of 4 with a partial last block of 3
    for block in (1, 4 * 36 * 9 * 40 * 4):
        monkeypatch.setattr(W, "BLOCK_BYTES", block)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            got = winograd_conv2d(inp, wt, b, 1)
            assert _rel(got, ref) < 2e-5
            assert torch.equal(got, whole)  # blocking changes no arithmetic


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_transforms_match_their_definitions(seed):
    """The kernels' transforms, one at a time, against B^T d B and A^T m A written out (float64),
    to float32 rounding relative to the largest value (the transforms sum up to 25 terms with
    coefficients up to 25, so absolute errors scale with the largest value)."""
    ext = native.winograd()
    g = torch.Generator().manual_seed(seed)
    bt = torch.tensor(W._BT, dtype=torch.float64)
    at = torch.tensor(W._AT, dtype=torch.float64)
    n, c, k, h, w, pad = 2, 70, 67, 7, 10, 1
    x = torch.randn(n, h, w, c, generator=g)
    (ho, th), (wo, tw) = W._tiles(h, pad), W._tiles(w, pad)
    v = torch.empty(36, n * th * tw, c)
    ext.input_transform(x, v, pad, pad, th, tw)
    xp = F.pad(x.double().permute(0, 3, 1, 2), (pad, pad + tw * 4 - wo, pad, pad + th * 4 - ho))
    d = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # N C th tw 6 6
    want = torch.einsum("ai,ncyxij,bj->abnyxc", bt, d, bt).reshape(36, -1, c)
    assert _rel(v, want) < 2e-6
    m = torch.randn(36, n * th * tw, k, generator=g)
    bias = torch.randn(k, generator=g)
    out = torch.empty(n, ho, wo, k)
    ext.output_transform(m, bias, out, th, tw)
    y = torch.einsum("pa,abnyxk,qb->nypxqk", at, m.double().view(6, 6, n, th, tw, k), at)
    y = y.reshape(n, th * 4, tw * 4, k)[:, :ho, :wo] + bias.double()
    assert _rel(out, y) < 2e-6


def test_clear_errors():
    x, wt, b = _case(2, 8, 4, 6, 6, seed=2)
    cases = [
        ((x[0], wt, b, 1), "x \\[N, C, H, W\\]"),
        ((x, wt[..., :2], b, 1), "3x3 weight"),
        ((x[:, :5], wt, b, 1), "x has 5 channels"),
        ((x.double(), wt.double(), b.double(), 1), "float32 only"),
        ((x, wt, b[:3], 1), "bias of shape"),
        ((x, wt, b, -1), "padding"),
        ((x[:, :, :2, :2], wt, b, 0), "smaller than the 3x3 kernel"),
    ]
    for args, msg in cases:
        with pytest.raises(FastDMError, match=msg):
            winograd_conv2d(*args)
    with pytest.raises(FastDMError, match="forward-only"):
        winograd_conv2d(x.requires_grad_(True), wt, b, 1)


def test_eligibility():
    ok = nn.Conv2d(16, 8, 3, padding=1)
    assert eligible(ok) and eligible(ok, (4, 4)) and not eligible(ok, (3, 3))
    for bad in (nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.Conv2d(16, 8, 3, dilation=2),
                nn.Conv2d(16, 8, 3, groups=2), nn.Conv2d(16, 8, 5, padding=2),
                nn.Conv2d(16, 8, 3, padding=(1, 0)), nn.Conv2d(16, 8, 3, padding=1, padding_mode="reflect"),
                nn.Conv2d(3, 8, 3, padding=1), nn.Linear(3, 3)):
        assert not eligible(bad)


def test_layers_chosen_by_model_and_size():
    cifar = build_model("ConvNet", 3, 10, (32, 32), 0, 1)
    # conv, norm, relu, pool per block; the RGB first layer stays direct
    assert winograd_layers(cifar, (32, 32)) == (4, 8)
    # digits 8x8: one channel first, and the last block's 2x2 output, stay direct
    assert winograd_layers(build_model("ConvNet", 1, 10, (8, 8), 0, 1), (8, 8)) == (4,)
    assert winograd_layers(build_model("ResNet18", 3, 10, (32, 32), 0, 1), (32, 32)) == ()


@pytest.mark.parametrize("model", ["ConvNet", "ConvNetBN", "ConvNetNP", "ConvNetD4"])
def test_winograd_embed_matches_embed(model):
    net = build_model(model, 3, 10, (16, 16), 3, 1)
    net.train()
    layers = winograd_layers(net, (16, 16))
    assert layers
    x = torch.randn(6, 3, 16, 16)
    with torch.inference_mode():
        ref = net.embed(x)
        got = winograd_embed(net, layers)(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_under_torch_compile_one_graph():
    """The custom op is opaque to dynamo: one fullgraph compile around it, equal results."""
    import torch._dynamo as dynamo
    from torch._dynamo.testing import CompileCounter
    dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda x, w, b: torch.relu(winograd_conv2d(x, w, b, 1)).mean((2, 3)),
                       backend=counter, fullgraph=True)
    with torch.inference_mode():
        for seed in range(3):  # new weights each call, as in the engine: no recompile
            x, wt, b = _case(3, 16, 8, 9, 9, seed=seed)
            got = fn(x, wt, b)
            assert torch.allclose(got, torch.relu(F.conv2d(x, wt, b, padding=1)).mean((2, 3)),
                                  rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 1


def test_conv_choice(monkeypatch, caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    assert conv_for("auto", cpu, "fp32") == "winograd"
    assert conv_for("direct", cpu, "fp32") == "direct"
    assert conv_for("auto", cuda, "bf16") == "direct"
    assert conv_for("auto", cpu, "bf16") == "direct"
    assert conv_for("auto", cpu, "fp32", "ResNet18 has none") == "direct"
    for args, msg in (((cuda, "fp32"), "CPU kernel"), ((cpu, "bf16"), "float32 only"),
                      ((cpu, "fp32", "ResNet18 has none"), "ResNet18")):
        with pytest.raises(FastDMError, match=msg):
            conv_for("winograd", *args)
    with pytest.raises(FastDMError, match="--conv must be"):
        conv_for("fast", cpu, "fp32")
    monkeypatch.setenv("FASTDM_BACKEND", "torch")
    assert conv_for("auto", cpu, "fp32") == "direct"


def test_native_unavailable_is_loud(monkeypatch, caplog):
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("FASTDM_NATIVE", "off")
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        assert conv_for("auto", torch.device("cpu"), "fp32") == "direct"
    assert "not Winograd" in caplog.text and "FASTDM_NATIVE=off" in caplog.text
    with pytest.raises(FastDMError, match="FASTDM_NATIVE=off"):
        conv_for("winograd", torch.device("cpu"), "fp32")


def test_a_library_built_for_another_torch_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build_record", lambda folder: {"torch": "0.0.1", "cxx11_abi": 1})
    why = native.unavailable()
    if native._prebuilt_spec() is None:
        pytest.skip("no installed library (a source-tree run)")
    assert "built for torch 0.0.1" in why and "pip install --no-build-isolation" in why
    with pytest.raises(FastDMError, match="built for torch 0.0.1"):
        native.load()
    assert native.origin().startswith("unavailable: ")


def test_no_library_and_no_source_tree_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_prebuilt_spec", lambda: None)
    monkeypatch.setattr(native, "ROOT", tmp_path)
    assert "installed without its native library" in native.unavailable()
    assert not native.built()


def test_a_failed_source_build_is_reported_once(monkeypatch, tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("no cmake")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "CMakeLists.txt").write_text("this_is_not_cmake(\n")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_prebuilt_spec", lambda: None)
    monkeypatch.setattr(native, "ROOT", tmp_path)
    monkeypatch.setenv("FASTDM_NATIVE_CACHE", str(tmp_path / "cache"))
    assert native.unavailable() is None and native.origin() == "jit"
    with pytest.raises(FastDMError, match="cmake -S failed"):
        native.load()
    assert "cmake -S failed" in native.unavailable()  # remembered, not rebuilt


def test_only_the_isa_builds_use_avx_instructions():
    """The library's baseline code (the dispatcher, torch's inline functions, the generic
    build) has no AVX instruction, so it runs on any x86-64 CPU; the avx2/avx512 builds have."""
    import re
    import subprocess
    spec = native._prebuilt_spec()
    if spec is None or shutil.which("objdump") is None or "x86_64" not in os.uname().machine:
        pytest.skip("needs the installed library, objdump and x86-64")
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", spec.origin],
                          capture_output=True, text=True, check=True).stdout
    avx, fn = set(), None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            fn = m.group(1)
        elif fn and re.search(r"%[yz]mm|\tv[a-z0-9]+\s.*%xmm", line):
            avx.add(fn)
    isa = {f for f in avx if "fastdm::avx2::" in f or "fastdm::avx512::" in f}
    assert avx - isa == set()
    assert any("fastdm::avx2::" in f for f in isa) and any("fastdm::avx512::" in f for f in isa)


_ISA_SCRIPT = """
import sys, torch
from fastdm import native
ops = native.winograd()
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 7, 10, 70, generator=g)
v = torch.empty(36, 2 * 2 * 3, 70)
ops.input_transform(x, v, 1, 1, 2, 3)
m = torch.randn(36, 2 * 2 * 3, 67, generator=g)
out = torch.empty(2, 7, 10, 67)
ops.output_transform(m, torch.randn(67, generator=g), out, 2, 3)
x1 = torch.randn(3, 1, 11, 9, generator=g)
w1, b1 = torch.randn(20, 1, 3, 3, generator=g), torch.randn(20, generator=g)
blk = torch.empty(3, 6, 5, 20)
blk_sums = torch.empty(3, 13, 11)
ops.first_block(x1, w1, b1, torch.rand(20, generator=g), torch.randn(20, generator=g), 1e-5, blk, 2, True,
                blk_sums, 2.0)
gout = torch.randn(3, 20, 6, 5, generator=g)
grads = [torch.empty(20, 1, 3, 3)] + [torch.empty(20) for _ in range(3)]
ops.first_block_backward(x1, w1, b1, torch.rand(20, generator=g) + 0.5,
                                    torch.randn(20, generator=g), 1e-5, 2, gout, *grads)
pooled = torch.empty(2, 3, 2, 19)
pooled_sums = torch.empty(2, 7, 5)
ops.norm_relu_pool_nhwc(torch.randn(2, 7, 5, 19, generator=g) * 3 + 40, torch.randn(19, generator=g),
                        torch.randn(19, generator=g), 1e-5, pooled, pooled_sums, 3.0)
sums = torch.empty(2, 33)
ops.phase_sums(torch.randn(33, 70, generator=g) * 4, sums, False)
torch.save({"isa": ops.isa(), "v": v, "out": out, "blk": blk, "blk_grads": grads, "pooled": pooled,
            "blk_sums": blk_sums, "pooled_sums": pooled_sums, "phase_sums": sums}, sys.argv[1])
"""


def _isa_run(tmp_path, isa):
    import subprocess
    import sys
    path = tmp_path / f"{isa or 'auto'}.pt"
    env = {**os.environ, "FASTDM_NATIVE_ISA": isa or ""}
    p = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], env=env, capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return p, (torch.load(path) if p.returncode == 0 else None)


@pytest.mark.slow  # subprocesses (one per build), 12 s
def test_the_cpu_picks_its_build_and_every_build_computes_the_same(tmp_path):
    """Run-time dispatch: the generic build (any x86-64) and the one this CPU picks agree; a
    build this CPU cannot run is refused by name, not run into an illegal instruction."""
    if native.unavailable() is not None:
        pytest.skip(native.unavailable())
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    p, auto = _isa_run(tmp_path, None)
    assert p.returncode == 0, p.stderr[-2000:]
    want = "avx512" if " avx512f" in flags and " avx512vl" in flags else "avx2" if " avx2" in flags else "generic"
    assert auto["isa"] == want
    p, generic = _isa_run(tmp_path, "generic")
    assert p.returncode == 0 and generic["isa"] == "generic", p.stderr[-2000:]
    for key in ("v", "out", "blk", "pooled", "blk_sums", "pooled_sums", "phase_sums"):  # FMA contraction may round differently: float32 rounding apart
        torch.testing.assert_close(generic[key], auto[key], rtol=1e-5, atol=1e-4)
    for a, b in zip(generic["blk_grads"], auto["blk_grads"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if " avx512f" not in flags:
        p, _ = _isa_run(tmp_path, "avx512")
        assert p.returncode != 0 and "lacks those instructions" in p.stderr


# -- the engine's real branch --------------------------------------------------------------------
def _engine(data, **kw):
    from conftest import engine_for
    return engine_for(data, **{"ipc": 2, "iterations": 6, "batch_real": 7, "model": "ConvNetW32",
                               "device": "cpu", "class_chunk": 3, **kw})


def test_engine_real_branch_takes_winograd_and_agrees_with_direct(toy_dataset, monkeypatch):
    import fastdm.models.fast_embed as fast_embed
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    calls = []
    real = fast_embed.winograd_conv2d
    monkeypatch.setattr(fast_embed, "winograd_conv2d",
                        lambda *a: calls.append(torch.is_inference_mode_enabled()) or real(*a))
    e = _engine(toy_dataset, compile="off")  # auto
    assert e.plan.conv == "winograd" and e.plan.winograd_layers == (4, 8)
    d = _engine(toy_dataset, compile="off", conv="direct")
    assert d.plan.conv == "direct" and d.plan.winograd_layers == () and d.real_embed is d.embed
    images = e.initial_state().images
    for it in (0, 5):
        calls.clear()
        got = e.loss_and_grad(images, it)
        # 2 layers x 2 chunks (4 classes in chunks of 3), all in the real branch's inference mode
        assert calls == [True] * 4
        want = d.loss_and_grad(images, it)
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-6)


@pytest.mark.slow  # an inductor compile (40 s cold)
def test_compiled_real_branch_does_not_recompile(toy_dataset, monkeypatch):
    import torch._dynamo.utils as dynamo_utils
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    dynamo_utils.counters.clear()
    e = _engine(toy_dataset, compile="on", conv="winograd")
    assert e.plan.compiled and e.real_embed is not e.embed and e.plan.winograd_layers
    state = e.initial_state()
    graphs = []
    for _ in range(6):
        e.step(state)
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[2], graphs
    direct = _engine(toy_dataset, compile="off", conv="direct")
    s2 = direct.initial_state()
    for _ in range(6):
        direct.step(s2)
    torch.testing.assert_close(state.images, s2.images, rtol=1e-4, atol=1e-4)


def test_engine_conv_errors(toy_dataset, monkeypatch):
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    with pytest.raises(FastDMError, match="conv must be"):
        _engine(toy_dataset, conv="fft")
    with pytest.raises(FastDMError, match="float32 only"):
        _engine(toy_dataset, conv="winograd", precision="bf16", compile="off")
    with pytest.raises(FastDMError, match="no layers for the native kernels"):
        _engine(toy_dataset, conv="winograd", model="MLP", compile="off")
    monkeypatch.setenv("FASTDM_BACKEND", "torch")
    assert _engine(toy_dataset, compile="off").plan.conv == "direct"  # the pure-PyTorch path


def test_cli_records_the_convolution(tmp_path, capsys):
    import json
    import os
    from fastdm.cli import main
    for flag, conv, layers in ((), "winograd", [4]), (("--conv", "direct"), "direct", []):
        out = str(tmp_path / conv)
        assert main(["condense", "--dataset", "digits", "--iterations", "2", "--out", out,
                     "--no-progress", *flag]) == 0
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        assert metrics["plan"]["conv"] == conv and metrics["plan"]["winograd_layers"] == layers
        assert metrics["config"]["conv"] == (flag[1] if flag else "auto")



def test_opcheck_empty_batch_and_default_dtype():
    """The fake implementation agrees with the real one (torch.library.opcheck: shapes,
    strides, schema); an empty batch; a float64 default dtype does not leak into the buffers."""
    x, wt, b = _case(3, 17, 6, 7, 9, seed=4)
    torch.library.opcheck(W._winograd_op, (x, W.weight_transform(wt), b, 1))
    assert winograd_conv2d(x[:0], wt, b, 1).shape == (0, 6, 7, 9)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = winograd_conv2d(x, wt, b, 1)
    finally:
        torch.set_default_dtype(old)
    assert _rel(got, F.conv2d(x.double(), wt.double(), b.double(), padding=1)) < 2e-5


def test_device_error_and_tile_grid_checks():
    x, wt, b = _case(2, 16, 4, 6, 6, seed=5)
    with pytest.raises(FastDMError, match="runs on the CPU"):
        winograd_conv2d(x.to("meta"), wt.to("meta"), None, 1)
    ext = native.winograd()
    with pytest.raises(RuntimeError, match="tile grid does not cover"):
        ext.output_transform(torch.zeros(36, 2, 4), None, torch.empty(2, 6, 6, 4), 1, 1)


def test_a_subclass_with_its_own_embed_keeps_the_direct_path():
    from fastdm.models.convnet import ConvNet

    class Mine(ConvNet):
        def embed(self, x):
            return super().embed(x) * 2
    assert winograd_layers(Mine(3, 10, im_size=(16, 16)), (16, 16)) == ()


def test_a_resume_with_other_convolutions_is_said_and_recorded(tmp_path, caplog, monkeypatch):
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    out = str(tmp_path / "run")
    cfg = CondenseConfig(dataset="digits", iterations=2, checkpoint_every=1,  # auto: winograd
                         keep_checkpoint=True)
    assert condense_dataset(cfg, out, progress=False)["metrics"]["run_conv"] == "winograd"
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        m = condense_dataset(CondenseConfig(**{**cfg.to_dict(), "iterations": 3, "conv": "direct"}),
                             out, resume=True, progress=False)["metrics"]
    assert "ran with winograd real-branch convolutions; this session runs direct" in caplog.text
    assert m["plan"]["conv"] == "direct" and m["run_conv"] == "winograd+direct"


def test_the_real_branch_takes_the_nhwc_block_where_it_applies(monkeypatch):
    """ConvNet: every norm-ReLU-pool triple becomes the block, unless a tap needs its output."""
    import fastdm.models.fast_embed as fe
    from fastdm.models import create_model
    net = create_model("ConvNet", 3, 10, (16, 16))
    layers = fe.winograd_layers(net, (16, 16))
    x = torch.randn(4, 3, 16, 16)
    calls, real = [], fe.instance_norm_relu_pool

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(fe, "instance_norm_relu_pool", spy)
    with torch.no_grad():
        torch.testing.assert_close(fe.tapped_embed(net, layers)(x), net.embed(x), atol=1e-4, rtol=1e-4)
        assert len(calls) == 3
        calls.clear()
        fe.tapped_embed(net, layers, taps=(1,))(x)  # the first norm's output is tapped
        assert len(calls) == 2
        calls.clear()
        fe.tapped_embed(net, ())(x)  # no Winograd layers: NCHW modules as they are
        assert not calls
