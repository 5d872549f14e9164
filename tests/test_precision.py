"""The embedder's precision (fp32 / bf16 autocast) and the real branch under inference mode:
same loss within stated tolerances, and each option really in effect."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import engine_for as build_engine
from conftest import make_dataset
from fastdm.cli import main
from fastdm.errors import FastDMError
from fastdm.precision import resolve_precision


def engine_for(data, **kw):
    return build_engine(data, **{"ipc": 3, "iterations": 4, "batch_real": 24, "model": "ConvNet",
                                 "device": "cpu", "compile": "off", **kw})


@pytest.fixture(scope="module")
def data():
    return make_dataset(per_class=(30, 26, 31, 28), size=(32, 32))


def test_resolve_precision():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"  # the reference's on the CPU
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(FastDMError, match="--precision must be one of"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(FastDMError, match="precision must be one of"):
        engine_for(make_dataset(), precision="half")


@pytest.mark.slow  # 15 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_bf16_loss_and_gradient_match_fp32(data):
    """Tolerances: loss within 1 % (measured <= 0.16 %), gradient direction cosine >= 0.99
    (measured >= 0.997; bf16 keeps ~3 significant digits, so elementwise errors are ~6 %)."""
    a, b = engine_for(data, precision="fp32"), engine_for(data, precision="bf16")
    assert (a.plan.precision, b.plan.precision) == ("fp32", "bf16")
    images = a.initial_state().images
    for it in range(3):
        la, ga = a.loss_and_grad(images, it)
        lb, gb = b.loss_and_grad(images, it)
        assert float(lb) == pytest.approx(float(la), rel=1e-2)
        assert F.cosine_similarity(ga.flatten(), gb.flatten(), 0) > 0.99
        assert not torch.equal(ga, gb)  # bf16 really ran


@pytest.mark.slow  # 7 s; the quick tier runs bf16 end to end (test_cli_records_precision)
def test_bf16_features_are_bf16_and_sums_fp32(data):
    e = engine_for(data, precision="bf16")
    x = torch.randn(5, 3, 32, 32)
    assert e.features(x).dtype == torch.bfloat16
    assert engine_for(data, precision="fp32").features(x).dtype == torch.float32
    loss, grad = e.loss_and_grad(e.initial_state().images, 0)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    # what the engine sums bf16 features into: float32, as exact as a float64 sum of the same
    # bf16 values allows (a bf16 accumulator over 600 rows would be ~1e-2 off)
    from fastdm.ops.segments import segment_sum
    f = torch.randn(600, 64).to(torch.bfloat16) + 3
    sums = segment_sum(f, torch.tensor([600]), backend=e.plan.backends["segment_sum"])
    assert sums.dtype == torch.float32
    torch.testing.assert_close(sums.double(), f.double().sum(0, keepdim=True), atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize("objective", ["dm", "m3d"])
def test_real_branch_runs_in_inference_mode(data, objective):
    e = engine_for(data, objective=objective, class_chunk=2)
    modes = []

    def spy(inner):
        def embed(x):
            modes.append((x.shape[0], torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return inner(x)
        return embed
    assert e.real_embed is not e.embed  # the CPU default: Winograd convolutions in the real branch
    e.embed, e.real_embed = spy(e.embed), spy(e.real_embed)
    e.loss_and_grad(e.initial_state().images, 0)
    real = [m for m in modes if m[0] != 2 * e.ipc]
    syn = [m for m in modes if m[0] == 2 * e.ipc]
    assert len(real) == len(syn) == 2
    assert all(inf for _, inf, _ in real)
    assert all(not inf and grad for _, inf, grad in syn)


@pytest.mark.slow  # a command-line run (6 s)
def test_cli_records_precision(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["condense", "--dataset", "digits", "--iterations", "2", "--out", str(out),
                 "--precision", "bf16", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["plan"]["precision"] == "bf16" and m["run_precision"] == "bf16"
    with pytest.raises(SystemExit):
        main(["condense", "--dataset", "digits", "--precision", "fp8"])


@pytest.mark.parametrize("together", [False, True])
def test_evaluation_trains_in_the_asked_precision(together, caplog):
    """bf16 autocast in the evaluation's training step (one at a time and vmapped together):
    it really runs (other weights than fp32), stays close, and the summary says so."""
    from fastdm.evaluation import EvalConfig, evaluate_images, train_model
    from fastdm.train_batched import train_models_batched
    d = make_dataset(num_classes=3, per_class=(5, 4, 6), size=(12, 12), test_per_class=3)
    x, y = d.normalize(d.train.images), d.train.labels
    cfg = EvalConfig(model="ConvNetW32", models=2, epochs=1, batch_train=6, strategy="none")
    if together:
        args = (x[None].expand(2, *x.shape), y[None].expand(2, -1), 3, cfg, [0, 1], "cpu")
        a, b = train_models_batched(*args), train_models_batched(*args, precision="bf16")
    else:
        a = [train_model(x, y, d, cfg, k, "cpu") for k in (0, 1)]
        b = [train_model(x, y, d, cfg, k, "cpu", precision="bf16") for k in (0, 1)]
    for na, nb in zip(a, b):
        for pa, pb in zip(na.parameters(), nb.parameters()):
            assert pa.dtype == pb.dtype == torch.float32
        diff = max(float((pa - pb).norm() / pa.norm())
                   for pa, pb in zip(na.parameters(), nb.parameters()))
        assert 0 < diff < 0.15, diff  # relative norm per tensor after 6 SGD steps (measured <= 0.06)
    cfg.batched, cfg.precision, cfg.compile = together, "bf16", "off"
    res = evaluate_images(x, y, d, cfg, "cpu", progress=False)
    assert res["precision"] == "bf16" and res["trained_together"] is together
    from fastdm.precision import cpu_native_bf16
    if cpu_native_bf16() is False:
        assert "the evaluation trains in bf16 on a CPU without bf16 instructions" in caplog.text
    cfg.precision = "fp16"
    with pytest.raises(FastDMError, match="--precision must be one of"):
        evaluate_images(x, y, d, cfg, "cpu", progress=False)


@pytest.mark.slow  # two command-line runs (4 s)
def test_a_resume_in_another_precision_is_said_and_recorded(tmp_path, caplog):
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    out = str(tmp_path / "run")
    cfg = CondenseConfig(dataset="digits", iterations=2, precision="fp32", checkpoint_every=1,
                         keep_checkpoint=True)
    condense_dataset(cfg, out, progress=False)
    m = condense_dataset(CondenseConfig(**{**cfg.to_dict(), "iterations": 3, "precision": "bf16"}),
                         out, resume=True, progress=False)["metrics"]
    assert "ran in fp32; this session runs in bf16" in caplog.text
    assert m["plan"]["precision"] == "bf16" and m["run_precision"] == "fp32+bf16"
