"""The benchmark harness itself: FLOP counts, baseline == engine, the compare report."""
import copy
import json
import math
import sys
from dataclasses import fields, replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import compare, profile
from benchmarks.reference_loop import ReferenceLoop, upstream_impl
from benchmarks.settings import SETTINGS
from conftest import class_images, engine_for, make_dataset
from fastdm import engine as engine_module
from fastdm import rng
from fastdm.compat import draw_reference_table
from fastdm.errors import FastDMError
from fastdm.footprint import embed_flops_per_image, iteration_flops
from fastdm.models import create_model, init_parameters_
from spec_oracle import spec_diffaugment


# -- FLOP counter ---------------------------------------------------------------------------------
def conv_flops(h, w, cin, cout, k=3):
    return 2 * h * w * cout * cin * k * k


def test_convnet_32px_hand_count():
    f = embed_flops_per_image("ConvNet", 3, 32)
    want = conv_flops(32, 32, 3, 128) + conv_flops(16, 16, 128, 128) + conv_flops(8, 8, 128, 128)
    assert f.matmul == want == 101_449_728  # "about 101.5 MFLOP" per 32 px image
    # per conv output element: bias 1, GroupNorm 5, ReLU 1; AvgPool 4 per pooled element
    outs = 128 * (32 * 32 + 16 * 16 + 8 * 8)
    pooled = 128 * (16 * 16 + 8 * 8 + 4 * 4)
    assert f.elementwise == outs * (1 + 5 + 1) + 4 * pooled


def test_mnist_and_d4_hand_counts():
    # 1x28x28: the first conv pads by 3, so it outputs 32x32 maps from 1 channel
    f = embed_flops_per_image("ConvNet", 1, 28)
    assert f.matmul == conv_flops(32, 32, 1, 128) + conv_flops(16, 16, 128, 128) + conv_flops(8, 8, 128, 128)
    f = embed_flops_per_image("ConvNetD4", 3, 64)
    assert f.matmul == (conv_flops(64, 64, 3, 128) + conv_flops(32, 32, 128, 128)
                        + conv_flops(16, 16, 128, 128) + conv_flops(8, 8, 128, 128))


@pytest.mark.parametrize("model,ch,size", [("ConvNet", 3, 32), ("ConvNetD2", 1, 12), ("ConvNetW32", 3, 20),
                                           ("AlexNet", 3, 32), ("VGG11", 1, 28)])
def test_matmul_flops_agree_with_torch_flop_counter(model, ch, size):
    torch.manual_seed(0)
    net = create_model(model, ch, 10, (size, size))
    mode = FlopCounterMode(display=False)
    with mode:
        net.embed(torch.randn(2, ch, size, size))
    assert embed_flops_per_image(model, ch, size).matmul * 2 == mode.get_total_flops()


def test_iteration_flops_agree_with_a_measured_iteration():
    """fwd(real) + fwd(syn) + input-gradient bwd(syn), counted by torch on a real run."""
    torch.manual_seed(0)
    net = create_model("ConvNetD2", 3, 4, (12, 12)).requires_grad_(False)
    real, syn = torch.randn(6, 3, 12, 12), torch.randn(2, 3, 12, 12, requires_grad=True)
    mode = FlopCounterMode(display=False)
    with mode:
        with torch.no_grad():
            fr = net.embed(real).mean(0)
        loss = ((fr - net.embed(syn).mean(0)) ** 2).sum()
        loss.backward()
    per_image = embed_flops_per_image("ConvNetD2", 3, 12).matmul
    assert iteration_flops(per_image, 6, 2) == mode.get_total_flops()


# -- baseline loop == engine ----------------------------------------------------------------------
def _stack_tables(tables):
    t0 = tables[0]
    return replace(t0, **{f.name: torch.cat([getattr(t, f.name) for t in tables])
                          for f in fields(t0) if isinstance(getattr(t0, f.name), torch.Tensor)})


# tolerances (loss, gradient, images): the direct convolution is the reference's arithmetic;
# Winograd real-branch convolutions (the CPU default) differ by float32 rounding of their
# transforms (fastdm.ops.winograd: up to 8e-6 of a layer's largest output)
TOLERANCE = {"direct": (1e-5, (1e-4, 1e-7), (1e-4, 1e-6)),
             "winograd": (1e-4, (1e-3, 1e-6), (1e-3, 1e-5))}


@pytest.mark.parametrize("model,augment,conv", [("ConvNet", "oracle", "direct"),
                                                ("ConvNetBN", "oracle", "direct"),
                                                ("ConvNet", "default", "direct"),
                                                ("ConvNet", "oracle", "winograd"),
                                                ("ConvNetBN", "default", "winograd")])
def test_baseline_loop_and_engine_agree(model, augment, conv, monkeypatch):
    """Same weights, real images and augmentation draws: same loss, gradient and SGD step.

    The engine draws its DSA rows from the per-class reference seeds (through fastdm.compat);
    the baseline augments with the spec oracle (an implementation written from the spec alone)
    or with its own default (two DiffAugment calls per class sharing the class's seed), and
    runs the per-class reference loop with torch.optim.SGD."""
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    data = make_dataset()
    strategy = "color_crop_cutout_flip_scale_rotate"
    engine = engine_for(data, ipc=2, batch_real=8, model=model, strategy=strategy, iterations=10,
                        conv=conv)
    cfg = engine.cfg
    assert engine.plan.conv == conv
    loss_tol, (grad_rtol, grad_atol), (img_rtol, img_atol) = TOLERANCE[conv]
    state = engine.initial_state()
    it = 3
    state.iteration = it
    seeds = [1000 + 37 * c for c in range(data.num_classes)]
    probe = torch.zeros(cfg.ipc, data.channels, *data.image_size)
    table = _stack_tables([draw_reference_table(probe, strategy, s)[0] for s in seeds])
    monkeypatch.setattr(engine_module, "sample_siamese", lambda *a, **k: table)

    base = ReferenceLoop(data.normalize(data.train.images), data.train.labels, data.num_classes,
                         cfg.ipc, cfg.batch_real, model, strategy)
    base.image_syn = state.images.clone().requires_grad_(True)
    base.optimizer = torch.optim.SGD([base.image_syn], lr=cfg.lr_img, momentum=cfg.momentum)
    cur = [it]  # the baseline's iteration, for its weights and real batches
    base.new_network = lambda: init_parameters_(copy.deepcopy(engine.net), cfg.seed, rng.NET, cur[0])
    base.get_images = lambda c, n: data.normalize(engine.stream.take((cur[0], c, c + 1))[0])
    base.seed = lambda c: seeds[c]
    if augment == "oracle":
        base.augment = lambda x, seed, c: spec_diffaugment(x, strategy, seed)[0]

    loss_b = base.loss(base.new_network())
    loss_b.backward()
    loss_e, grad_e = engine.loss_and_grad(state.images, it)
    assert loss_e.item() > 0
    assert torch.allclose(loss_e, loss_b, rtol=loss_tol)
    assert torch.allclose(grad_e, base.image_syn.grad, rtol=grad_rtol, atol=grad_atol)
    # two full iterations on both sides (the second exercises the momentum buffer)
    base.image_syn.grad = None
    for _ in range(2):
        base.step()
        engine.step(state)
        cur[0] += 1
    assert torch.allclose(state.images, base.image_syn.detach(), rtol=img_rtol, atol=img_atol)


def test_baseline_draws_like_the_reference():
    """Default hooks: a new network per step, np.random batches of the class, loss finite."""
    data = make_dataset()
    base = ReferenceLoop(data.normalize(data.train.images), data.train.labels, data.num_classes, 2, 5,
                         "ConvNetD2", "color_crop_cutout_flip_scale_rotate")
    before = base.image_syn.detach().clone()
    batch = base.get_images(1, 5)
    members = data.normalize(class_images(data.train, 1))
    assert batch.shape[0] == 5 and all(any(torch.equal(b, m) for m in members) for b in batch)
    made, seeds = [], []
    new_network, seed = base.new_network, base.seed
    base.new_network = lambda: made.append(new_network()) or made[-1]
    base.seed = lambda c: seeds.append(seed(c)) or seeds[-1]
    for _ in range(2):
        assert math.isfinite(base.step())
    assert len(made) == 2 and made[0] is not made[1]  # a new network every iteration
    assert not torch.equal(made[0].features[0].weight, made[1].features[0].weight)
    assert len(seeds) == 2 * data.num_classes  # one seed per class per iteration
    assert not torch.equal(before, base.image_syn.detach())


def test_upstream_impl_needs_a_checkout(tmp_path):
    with pytest.raises(FastDMError, match="no utils.py"):
        upstream_impl(str(tmp_path))
    (tmp_path / "utils.py").write_text("def broken(:\n")
    (tmp_path / "networks.py").write_text("")
    with pytest.raises(FastDMError, match="importing the upstream utils.py"):
        upstream_impl(str(tmp_path))


FAKE_UTILS = """
import networks  # as the upstream utils.py does
from fastdm.compat import DiffAugment, ParamDiffAug
from fastdm.models import create_model

def get_network(model, channel, num_classes, im_size=(32, 32)):
    import os
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write(model + "\\n")
    return create_model(model, channel, num_classes, im_size)
"""


def test_compare_times_a_reference_checkout(tmp_path):
    """--reference-repo imports utils.py/networks.py from the checkout and the loop calls them."""
    repo = tmp_path / "DatasetCondensation"
    repo.mkdir()
    (repo / "utils.py").write_text(FAKE_UTILS)
    (repo / "networks.py").write_text("")
    impl = upstream_impl(str(repo))
    assert impl.source == f"upstream:{repo}" and "utils" not in sys.modules
    r = compare.main(["--settings", "toy-ipc2", "--device", "cpu", "--iters", "2", "--warmup", "0",
                      "--no-memory", "--reference-repo", str(repo), "--baseline-process", "shared"])
    assert r["baseline_impl"] == f"upstream:{repo}"
    assert r["settings"]["toy-ipc2"]["sides"]["baseline"]["impl"] == f"upstream:{repo}"
    # a new upstream network per baseline iteration (2 timed, none for warm-up)
    assert (repo / "calls.txt").read_text().split() == ["ConvNetD2"] * 2
    assert sys.modules.get("utils") is None


def test_flops_follow_the_stored_real_images():
    s = SETTINGS["toy-ipc2"]  # batch_real 16
    per_image = s.flops()["per_image_forward"]
    assert s.flops()["per_iteration"] == per_image * s.classes * (16 + 2 * s.ipc)
    assert s.flops(8)["per_iteration"] == per_image * s.classes * (8 + 2 * s.ipc)


# -- compare report -------------------------------------------------------------------------------
@pytest.mark.slow  # subprocess memory probes
def test_compare_report_schema(tmp_path, capsys):
    path = tmp_path / "r.json"
    compare.main(["--settings", "toy-ipc2", "--device", "cpu", "--iters", "3", "--warmup", "0",
                  "--json", str(path), "--peak-tflops", "0.5"])
    r = json.loads(path.read_text())
    assert r["schema"] == compare.SCHEMA
    for key in ("date", "commit", "device", "device_name", "threads", "torch", "triton", "python"):
        assert key in r
    assert r["device"] == "cpu" and r["peak_tflops_used"] == 0.5 and r["peak_source"] == "--peak-tflops"
    assert r["peaks_tflops"]["fp32"] > 0
    assert r["baseline_process"] == "own (glibc's malloc)"  # the CPU default: a child times it
    s = r["settings"]["toy-ipc2"]
    want_flops = SETTINGS["toy-ipc2"].flops()
    assert s["flops"] == want_flops
    assert s["floor_ms"] == pytest.approx(want_flops["per_iteration"] / 0.5e12 * 1e3, rel=1e-3)
    for side in ("baseline", "fastdm"):
        d = s["sides"][side]
        assert len(d["times_ms"]) == 3 and d["ms_per_iter"] == sorted(d["times_ms"])[1]
        # the report rounds TFLOP/s to 4 decimals: a slow toy iteration (0.002) is 1 % off by that alone
        assert d["tflops"] == pytest.approx(want_flops["per_iteration"] / d["ms_per_iter"] / 1e9,
                                            rel=1e-2, abs=5e-5)
        assert d["x_floor"] == pytest.approx(d["ms_per_iter"] / s["floor_ms"], rel=1e-2)
        assert d["peak_mem_mb"] >= d["data_mb"] > 0 and d["mem_kind"].startswith("cpu_peak_rss")
    assert s["speedup"] == pytest.approx(s["sides"]["baseline"]["ms_per_iter"]
                                         / s["sides"]["fastdm"]["ms_per_iter"], rel=1e-2)
    assert s["sides"]["fastdm"]["backends"] == {"dsa": "torch", "segment_sum": "torch",
                                                "linear_mmd": "torch"}
    assert s["sides"]["fastdm"]["compiled"] is False  # toy images are 16 px: auto stays eager on the CPU
    assert "| toy-ipc2 | fastdm" in capsys.readouterr().out


def test_compare_one_side_and_bad_arguments(tmp_path, capsys):
    r = compare.main(["--settings", "toy-ipc2", "--device", "cpu", "--iters", "1", "--warmup", "0",
                      "--sides", "fastdm", "--peak-tflops", "1", "--no-memory"])
    s = r["settings"]["toy-ipc2"]
    assert s["sides"]["baseline"] == {"skipped": "not selected (--sides)"} and s["speedup"] is None
    for bad in (["--settings", "cifar7"], ["--iters", "0"], ["--sides", "both"],
                ["--json", str(tmp_path / "missing" / "r.json")], ["--json", str(tmp_path)],
                ["--peak-tflops", "inf"], ["--settings", "toy-ipc2", "--real-per-class", "1"]):
        with pytest.raises(SystemExit) as e:
            compare.main(bad)
        assert e.value.code == 2
    assert "unknown setting 'cifar7'" in capsys.readouterr().err


def test_compare_skips_a_baseline_that_does_not_fit(monkeypatch, capsys):
    monkeypatch.setattr(compare, "baseline_fits", lambda *a: "needs 64.0 GB")
    r = compare.main(["--settings", "toy-ipc2", "--device", "cpu", "--iters", "1", "--warmup", "0",
                      "--no-memory", "--baseline-process", "shared"])
    s = r["settings"]["toy-ipc2"]
    assert s["sides"]["baseline"] == {"skipped": "needs 64.0 GB"} and s["speedup"] is None
    assert s["sides"]["fastdm"]["ms_per_iter"] > 0
    assert "| toy-ipc2 | baseline | skipped" in capsys.readouterr().out


def test_profile_refuses_bad_arguments(tmp_path, capsys):
    for bad in (["toy-ipc2", "--side", "fastdm", "--reference-repo", str(tmp_path)],
                ["toy-ipc2", "--real-per-class", "1"], ["toy-ipc2", "--iters", "0"], ["cifar7"]):
        with pytest.raises(SystemExit) as e:
            profile.main(bad + ["--out", str(tmp_path)])
        assert e.value.code == 2
    with pytest.raises(SystemExit, match="no utils.py"):
        profile.main(["toy-ipc2", "--side", "baseline", "--reference-repo", str(tmp_path),
                      "--out", str(tmp_path)])


def test_profile_writes_a_trace(tmp_path, capsys):
    trace = profile.main(["toy-ipc2", "--side", "baseline", "--iters", "1", "--device", "cpu",
                          "--out", str(tmp_path)])
    events = json.loads(open(trace).read())["traceEvents"]
    assert any("conv" in e.get("name", "") for e in events)
    assert "aten::" in capsys.readouterr().out
