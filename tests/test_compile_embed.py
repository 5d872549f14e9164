"""The compiled embedder: fresh weights every iteration without recompiling, the same results as
eager PyTorch, the auto rule, and clear errors when compilation cannot run."""
import json
import logging

import pytest
import torch
import torch._dynamo.utils as dynamo_utils

from conftest import engine_for as build_engine
from conftest import make_dataset, resolved
from fastdm.cli import main
from fastdm.errors import FastDMError
from fastdm.models import compiled


def engine_for(data, compile_mode, backend="inductor", **kw):
    return build_engine(data, compile_backend=backend, **{
        "ipc": 2, "iterations": 20, "batch_real": 6, "model": "ConvNetW32", "class_chunk": 2,
        "compile": compile_mode, "device": "cpu", **kw})


@pytest.fixture
def data():
    # five classes in chunks of two: full chunks and a smaller last one, unequal real counts
    return make_dataset(num_classes=5, per_class=(9, 4, 8, 7, 6), size=(12, 12))


@pytest.mark.slow  # 7 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_no_recompilation_after_warm_up(data):
    """20 iterations, each with freshly drawn weights: graphs are compiled in the first
    iterations (real/synthetic batches, the last chunk's sizes) and never again."""
    dynamo_utils.counters.clear()
    e = engine_for(data, "on", backend="aot_eager")
    assert e.plan.compiled
    state = e.initial_state()
    graphs = []
    for _ in range(20):
        e.step(state)
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[0] >= 2 and graphs[-1] == graphs[2], graphs
    eager = engine_for(data, "off")
    s2 = eager.initial_state()
    for _ in range(20):
        eager.step(s2)
    torch.testing.assert_close(state.images, s2.images, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # long compiles
def test_many_engines_in_one_process_keep_compiling():
    """Engines share the embedder's code object, whose graphs dynamo counts together: ten
    engines over five image sizes (with fullgraph, torch's default limit of 8 graphs per code
    object was a hard failure at the fifth) run."""
    import torch._dynamo
    torch._dynamo.reset()  # graphs of earlier tests would count against the limit or make sizes dynamic
    dynamo_utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=8):  # torch's default: fastdm raises it
        for size in (8, 10, 12, 14, 16, 8, 10, 12, 14, 16):
            d = make_dataset(num_classes=3, per_class=(5, 4, 6), size=(size, size))
            e = engine_for(d, "on", backend="aot_eager", ipc=1, batch_real=4)
            state = e.initial_state()
            for _ in range(3):
                e.step(state)
    assert dynamo_utils.counters["stats"]["unique_graphs"] > 8, dict(dynamo_utils.counters["stats"])


@pytest.mark.slow  # an inductor compile (30 s cold)
def test_inductor_matches_eager(data):
    """The real compiler (C++ on the CPU): one iteration's loss and gradient as eager."""
    e = engine_for(data, "on")
    images = e.initial_state().images
    got = e.loss_and_grad(images, 3)
    want = engine_for(data, "off").loss_and_grad(images, 3)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-4)


def test_auto_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiled.wants_compile("auto", cpu, (8, 8))
    assert compiled.wants_compile("auto", cpu, (32, 32)) and compiled.wants_compile("auto", cpu, (28, 28))
    # the evaluation's step: when it trains on enough images to repay the compile
    few, many = compiled.CPU_COMPILE_MIN_IMAGES - 1, compiled.CPU_COMPILE_MIN_IMAGES
    assert not compiled.wants_compile("auto", cpu, (28, 28), few)
    assert compiled.wants_compile("auto", cpu, (28, 28), many)
    assert not compiled.wants_compile("auto", cpu, (8, 8), 10 ** 9)
    assert compiled.wants_compile("auto", cuda, (8, 8), 1)
    assert compiled.wants_compile("auto", cuda, (8, 8))
    assert compiled.wants_compile("on", cpu, (8, 8)) and not compiled.wants_compile("off", cuda, (64, 64))


def test_unavailable_compiler_is_an_error_or_a_warning(data, monkeypatch, caplog):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(FastDMError, match="C\\+\\+ compiler"):
        engine_for(data, "on")
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        e = engine_for(data, "auto", image_size=None, model="ConvNetW32")
    # 12 px on the CPU: auto does not compile, so nothing to warn about
    assert not e.plan.compiled and "not compiling" not in caplog.text
    monkeypatch.setattr(compiled, "wants_compile", lambda *a, **k: True)
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        e = engine_for(data, "auto")
    assert not e.plan.compiled and "not compiling the embedder" in caplog.text


def test_cli_flags(tmp_path, capsys):
    with pytest.raises(FastDMError, match="compile must be"):
        resolved(make_dataset(), compile="yes")
    out = tmp_path / "run"
    assert main(["condense", "--dataset", "digits", "--iterations", "2", "--compile", "off",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    m = json.load(open(out / "metrics.json"))
    assert m["config"]["compile"] == "off" and m["plan"]["compiled"] is False
