"""Evaluation under torch.compile: one graph for all models trained one after another (no
recompilation per model), the same weights as eager training, the vmapped stack compiled too,
and evaluate_images compiling where the rule says."""
import pytest
import torch._dynamo.utils as dynamo_utils

from conftest import make_dataset
from fastdm import evaluation as ev
from fastdm.errors import FastDMError
from fastdm.evaluation import EvalConfig, train_model
from fastdm.models import build_model
from fastdm.models import compiled as compiled_mod
from fastdm.models.compiled import SharedCompiled

DEFAULT_MIN_IMAGES = compiled_mod.CPU_COMPILE_MIN_IMAGES
from fastdm.train_batched import train_models_batched


@pytest.fixture
def data():
    return make_dataset(num_classes=3, per_class=(5, 4, 6), size=(12, 12), test_per_class=3)


def _max_rel_diff(xs, ys):
    return max(((a - b).abs().max() / a.abs().max()).item()
               for n1, n2 in zip(xs, ys) for a, b in zip(n1.parameters(), n2.parameters()))


@pytest.mark.slow  # compiles evaluation models (8 s)
def test_models_share_one_graph_and_train_as_eager(data):
    x = data.normalize(data.train.images)
    cfg = EvalConfig(model="ConvNetW32", models=3, epochs=2, batch_train=6,
                     strategy="color_crop_cutout_flip_scale_rotate")
    eager = [train_model(x, data.train.labels, data, cfg, k, "cpu") for k in range(3)]
    dynamo_utils.counters.clear()
    shared = SharedCompiled(build_model("ConvNetW32", 3, 3, (12, 12)), backend="aot_eager")
    graphs, nets = [], []
    for k in range(3):
        nets.append(train_model(x, data.train.labels, data, cfg, k, "cpu", compiled=shared))
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[2] == graphs[0], graphs  # models 2 and 3: no new graph
    assert _max_rel_diff(eager, nets) < 1e-5
    assert all(n is not shared.net for n in nets)  # each model keeps its own weights


@pytest.mark.slow  # an inductor compile
def test_inductor_training_matches_eager(data):
    x = data.normalize(data.train.images)
    cfg = EvalConfig(model="ConvNetW32", models=1, epochs=1, batch_train=6, strategy="none")
    eager = train_model(x, data.train.labels, data, cfg, 0, "cpu")
    shared = SharedCompiled(build_model("ConvNetW32", 3, 3, (12, 12)))
    comp = train_model(x, data.train.labels, data, cfg, 0, "cpu", compiled=shared)
    assert _max_rel_diff([eager], [comp]) < 1e-4  # 6 SGD steps; inductor reorders float sums


@pytest.mark.slow  # 15 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_compiled_stack_matches_uncompiled(data):
    x = data.normalize(data.train.images)
    cfg = EvalConfig(model="ConvNetW32", models=2, epochs=1, batch_train=6,
                     strategy="color_crop_cutout_flip_scale_rotate")
    args = (x[None].expand(2, *x.shape), data.train.labels[None].expand(2, -1), 3, cfg, [0, 1], "cpu")
    plain = train_models_batched(*args)
    comp = train_models_batched(*args, compile_backend="aot_eager")
    assert _max_rel_diff(plain, comp) < 1e-5
    # later evaluations in the same process with other shapes (dynamo then makes sizes dynamic,
    # which vmapped group_norm cannot trace: the compile must stay static)
    for size in (8, 16):
        d = make_dataset(num_classes=3, per_class=(5, 4, 6), size=(size, size))
        y = d.normalize(d.train.images)
        train_models_batched(y[None].expand(3, *y.shape), d.train.labels[None].expand(3, -1), 3,
                             cfg, [0, 1, 2], "cpu", compile_backend="aot_eager")


@pytest.mark.slow  # long compiles
def test_many_evaluations_in_one_process_keep_compiling():
    """Every evaluation's shapes are new static graphs of the one vmapped code object: twelve
    training-set sizes (past torch's default limit of 8, a hard failure with fullgraph) run."""
    import torch._dynamo
    torch._dynamo.reset()  # a fresh cache, as in a new process
    cfg = EvalConfig(model="ConvNetW32", models=2, epochs=0, batch_train=256, strategy="none")
    with torch._dynamo.config.patch(recompile_limit=8):  # torch's default: fastdm raises it
        for per in range(1, 13):
            d = make_dataset(num_classes=3, per_class=(per,) * 3, size=(8, 8))
            x = d.normalize(d.train.images)
            train_models_batched(x[None].expand(2, *x.shape), d.train.labels[None].expand(2, -1), 3,
                                 cfg, [0, 1], "cpu", compile_backend="aot_eager")


@pytest.mark.slow  # 9 s on the 2-core CI machine: the quick tier stays under 5 minutes
def test_evaluate_images_compiles_by_rule(monkeypatch):
    made = []

    class Spy(SharedCompiled):
        def __init__(self, net, backend="aot_eager", forward=None):
            made.append(net)
            super().__init__(net, backend, forward)
    monkeypatch.setattr(ev, "SharedCompiled", Spy)
    small = make_dataset(num_classes=3, per_class=(5, 4, 6), size=(16, 16), test_per_class=3)
    big = make_dataset(num_classes=3, per_class=(5, 4, 6), size=(32, 32), test_per_class=3)
    # auto at 32 px: not for 2 models x 2 passes x 15 images (far below the images that repay
    # a compile), yes when the rule's minimum is that low
    for d, mode, want, least in ((small, "auto", False, 1), (big, "auto", False, None),
                                 (big, "auto", True, 60), (small, "on", True, None),
                                 (big, "off", False, 1)):
        made.clear()
        monkeypatch.setattr(compiled_mod, "CPU_COMPILE_MIN_IMAGES",
                            DEFAULT_MIN_IMAGES if least is None else least)
        cfg = EvalConfig(model="ConvNetW32", models=2, epochs=1, strategy="none", compile=mode)
        res = ev.evaluate_images(d.normalize(d.train.images), d.train.labels, d, cfg, "cpu",
                                 progress=False)
        assert res["compiled"] is want and len(made) == int(want), (d.image_size, mode)
    with pytest.raises(FastDMError, match="--compile must be"):
        EvalConfig(compile="yes").check()
