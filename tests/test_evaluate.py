import pytest
import torch

import fastdm.evaluation as ev
from fastdm.errors import FastDMError
from fastdm.evaluation import EvalConfig, evaluate_images, random_subset, accuracy, train_model

from conftest import class_images, make_dataset


@pytest.fixture
def data():
    return make_dataset(per_class=(40, 40, 40, 40), size=(8, 8))


def _cfg(**kw):
    return EvalConfig(**{"model": "ConvNetW32", "models": 2, "epochs": 2,
                         "strategy": "color_crop_cutout_flip_scale_rotate", **kw})


def test_protocol_optimiser_and_learning_rate_schedule(data, monkeypatch):
    made, steps = [], [0]
    real_sgd = torch.optim.SGD

    class SpySGD(real_sgd):
        def __init__(self, params, **kw):
            made.append((kw["lr"], kw["momentum"], kw["weight_decay"], steps[0]))
            super().__init__(params, **kw)

        def step(self, *a, **k):
            steps[0] += 1
            return super().step(*a, **k)
    monkeypatch.setattr(ev.torch.optim, "SGD", SpySGD)
    images, labels = random_subset(data, 20, 0, 0)  # 80 images: one batch per epoch
    train_model(images, labels, data, _cfg(epochs=4), 0, "cpu")
    # epochs + 1 passes (the reference's range(epochs + 1)); lr x0.1 with a fresh optimiser
    # (momentum restarts) after pass epochs // 2 + 1 = 3, i.e. after 4 steps
    assert steps[0] == 5
    assert made[0] == (0.01, 0.9, 5e-4, 0)
    assert made[1][0] == pytest.approx(0.001) and made[1][1:] == (0.9, 5e-4, 4)


def test_batches_of_256_with_one_augmentation_op_per_batch(monkeypatch):
    data = make_dataset(per_class=(80, 80, 80, 80), size=(8, 8))
    seen = []
    real_apply = ev.dsa_augment

    def spy(x, table, group=None, **kw):
        seen.append((x.shape[0], set(table.op.tolist()), table.groups))
        return real_apply(x, table, group, **kw)
    monkeypatch.setattr(ev, "dsa_augment", spy)
    images, labels = random_subset(data, 75, 0, 0)  # 300 images
    train_model(images, labels, data, _cfg(epochs=1), 0, "cpu")
    assert [n for n, _, _ in seen] == [256, 44, 256, 44]
    assert all(len(ops) == 1 and g == n for n, ops, g in seen)  # per-sample rows, one op


def test_random_subset_balanced_distinct_and_reproducible(data):
    a, la = random_subset(data, 3, 0, 0)
    b, _ = random_subset(data, 3, 0, 0)
    c, _ = random_subset(data, 3, 0, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert la.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for k in range(4):
        cls = data.normalize(class_images(data.train, k))
        for img in a[3 * k:3 * k + 3]:
            assert any(torch.equal(img, x) for x in cls)
    with pytest.raises(FastDMError, match="larger than the smallest class"):
        random_subset(data, 41, 0, 0)


def test_accuracy_counts_the_whole_test_split(data):
    class Always(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            out = torch.zeros(x.shape[0], 4)
            out[:, self.c] = 1
            return out
    assert accuracy(Always(1), data, "cpu", batch=3) == pytest.approx(0.25)


def test_evaluation_is_reproducible_and_reports_fractions(data):
    images, labels = random_subset(data, 5, 0, 0)
    a = evaluate_images(images, labels, data, _cfg(epochs=40), "cpu", progress=False)
    b = evaluate_images(images, labels, data, _cfg(epochs=40), "cpu", progress=False)
    assert a["accs"] == b["accs"] and len(a["accs"]) == 2
    assert all(0 <= x <= 1 for x in a["accs"])
    assert a["acc_mean"] == pytest.approx(sum(a["accs"]) / 2)
    # each class has its own bright band, so a trained model beats chance (0.25) clearly
    assert a["acc_mean"] > 0.5


def test_cross_architecture_and_bad_configs(data):
    images, labels = random_subset(data, 2, 0, 0)
    r = evaluate_images(images, labels, data, _cfg(model="MLP", models=1), "cpu", progress=False)
    assert len(r["accs"]) == 1
    with pytest.raises(FastDMError, match="cannot take 8x8"):
        evaluate_images(images, labels, data, _cfg(model="ResNet18"), "cpu", progress=False)
    with pytest.raises(FastDMError, match="--models"):
        evaluate_images(images, labels, data, _cfg(models=0), "cpu", progress=False)
    with pytest.raises(FastDMError, match="unknown model"):
        evaluate_images(images, labels, data, _cfg(model="VGG99"), "cpu", progress=False)


def test_evaluation_uses_the_synsets_dsa_mode(tmp_path, monkeypatch):
    """One DSA setting for condensing and evaluating, as the reference's single dsa_param."""
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    modes = []
    real = ev.DSAParams

    def spy(**kw):
        modes.append(kw.get("aug_mode"))
        return real(**kw)
    monkeypatch.setattr(ev, "DSAParams", spy)
    condense_dataset(CondenseConfig(dataset="digits", ipc=1, iterations=1, aug_mode="M"),
                     out=str(tmp_path), progress=False)
    ev.evaluate_synset(str(tmp_path / "synset.pt"), models=1, epochs=0, progress=False)
    assert modes == ["M"]
