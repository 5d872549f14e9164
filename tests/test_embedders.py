"""Embedder sources (random, IDM's queue, DANCE/NCFM banks), their loss terms and calibration,
the pixel-space SGD and ``fastdm pretrain``."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import engine_for, make_dataset, plan_for, resolved
from fastdm import rng
from fastdm.errors import FastDMError

TINY = dict(ipc=1, model="ConvNetW32", conv="direct", device="cpu")


@pytest.fixture(scope="module")
def data():
    return make_dataset(num_classes=3, per_class=(9, 8, 10), size=(12, 12))


@pytest.fixture(scope="module")
def bank(data, tmp_path_factory):
    """A 3-member ConvNetW32 bank of ``data`` (one epoch each)."""
    from fastdm.pretrain import PretrainConfig, pretrain
    out = str(tmp_path_factory.mktemp("bank"))
    cfg = PretrainConfig(dataset="toy", model="ConvNetW32", models=3, epochs=2, batch_size=8,
                         device="cpu")
    pretrain_on(data, cfg, out)
    return out


def pretrain_on(data, cfg, out, **kw):
    """fastdm.pretrain.pretrain on an in-memory dataset."""
    import fastdm.pretrain as pt
    return pt.pretrain(cfg, out, progress=False, data=data, **kw)


# -- settings ------------------------------------------------------------------------------------
def test_source_settings_are_checked(data, tmp_path):
    with pytest.raises(FastDMError, match="random, queue or bank:PATH"):
        resolved(data, ipc=1, embedders="banks")
    with pytest.raises(FastDMError, match="--embedders bank:PATH"):
        resolved(data, ipc=1, method="dance")
    with pytest.raises(FastDMError, match="no bank there"):
        resolved(data, ipc=1, method="dance", embedders=f"bank:{tmp_path}")
    with pytest.raises(FastDMError, match="BatchNorm"):
        resolved(data, ipc=1, method="idm", model="ConvNetBN")
    with pytest.raises(FastDMError, match="--calib-weight needs"):
        resolved(data, ipc=1, calib_weight=1.0)
    with pytest.raises(FastDMError, match="--ce-weight weighs"):
        resolved(data, ipc=1, ce_weight=0.5)
    # a method's own source term follows its source: ncfm with random embedders is part 1's
    cfg = resolved(data, method="ncfm", embedders="random", ipc=1)
    assert (cfg.calib_weight, cfg.image_space, cfg.optimizer) == (0.0, "pixels", "adamw")
    idm = resolved(data, method="idm", ipc=1)
    assert (idm.embedders, idm.ce_weight, idm.batch_real, idm.queue_interval, idm.init_resize,
            idm.image_space, idm.step) == ("queue", 0.5, 5000, 5, "bilinear", "normalized", "class")
    assert resolved(data, method="idm", ipc=2).batch_real == 256
    assert resolved(data, method="dm", ipc=1).image_space == "normalized"


def test_old_records_read_as_random_embedders():
    from fastdm.config import CondenseConfig
    cfg = CondenseConfig.from_dict({"dataset": "digits", "method": "ncfm", "optimizer": "adamw"})
    assert (cfg.embedders, cfg.calib_weight, cfg.image_space) == ("random", 0.0, "pixels")


def test_the_queue_refuses_shards(data):
    with pytest.raises(FastDMError, match="cannot be sharded"):
        plan_for(data, classes=(0, 2), method="idm", **TINY)
    plan_for(data, classes=(0, 2), method="dm", **TINY)  # random embedders shard


# -- pixel-space SGD, IDM's initial tiles ---------------------------------------------------------
def test_sgd_in_pixel_space_is_torch_sgd_on_pixels(data):
    from fastdm.checkpoint import RunState
    from fastdm.optim import ImageOptimizer
    cfg = resolved(data, ipc=1, optimizer="sgd", image_space="pixels", lr_img=0.3, momentum=0.5,
                   clamp=False)
    opt = ImageOptimizer(cfg, data.mean, data.std, "cpu")
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    x = torch.randn(2, 3, 5, 5)
    state = RunState(images=x.clone(), momentum=None)
    leaf = (x * std + mean).clone().requires_grad_(True)
    ref = torch.optim.SGD([leaf], lr=0.3, momentum=0.5)
    for t in range(3):
        g = torch.randn_like(x)
        opt.step(state, g, t + 1)
        leaf.grad = g / std  # d loss / d u = (d loss / d x) / std
        ref.step()
    torch.testing.assert_close(state.images, (leaf.detach() - mean) / std)


def test_bilinear_initial_tiles_are_two_by_two_means():
    from fastdm.augment.partition import encode_init
    real = torch.randn(4, 1, 8, 8)
    stored = encode_init(real, 1, 2, "bilinear")
    want = F.avg_pool2d(real, 2)  # IDM's downscale(x, 0.5)
    torch.testing.assert_close(stored[0, :, :4, :4], want[0])
    torch.testing.assert_close(stored[0, :, 4:, 4:], want[3])


# -- bank --------------------------------------------------------------------------------------
def test_pretrain_writes_initial_and_trained_weights(data, bank):
    from fastdm.embedders.bank import bank_info, load_bank
    from fastdm.models import build_model
    b = load_bank(bank)
    assert b["members"] == 3 and b["model"] == "ConvNetW32"
    for k in range(3):
        net = build_model("ConvNetW32", 3, 3, (12, 12), 0, rng.PRETRAIN_INIT, k)
        for name, p in net.named_parameters():
            assert torch.equal(b["init"][name][k], p.detach()), name
    w = "features.0.weight"
    assert not torch.equal(b["init"][w], b["final"][w])
    info = bank_info(bank)
    assert len(info["accuracies"]) == 3 and all(0 <= a <= 1 for a in info["accuracies"])
    assert not os.path.exists(os.path.join(bank, "pretrain-state.pt"))


def test_pretrain_resumes_to_the_same_bank(data, tmp_path):
    import fastdm.pretrain as pt
    from fastdm.embedders.bank import load_bank
    cfg = pt.PretrainConfig(dataset="toy", model="ConvNetW32", models=2, epochs=2, batch_size=8,
                            device="cpu")
    pretrain_on(data, cfg, str(tmp_path / "straight"))
    calls, orig = [], pt._train_epoch

    def stop_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    pt._train_epoch = stop_on_third
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain_on(data, cfg, str(tmp_path / "cut"))
    finally:
        pt._train_epoch = orig
    assert os.path.exists(tmp_path / "cut" / "pretrain-state.pt")
    pretrain_on(data, cfg, str(tmp_path / "cut"))
    a, b = load_bank(str(tmp_path / "straight")), load_bank(str(tmp_path / "cut"))
    for name in a["final"]:
        assert torch.equal(a["final"][name], b["final"][name]), name
    with pytest.raises(FastDMError, match="already holds a bank"):
        pretrain_on(data, cfg, str(tmp_path / "cut"))


def test_members_train_the_same_together(data, tmp_path):
    from fastdm.embedders.bank import load_bank
    from fastdm.pretrain import PretrainConfig
    kw = dict(dataset="toy", model="ConvNetW32", models=2, epochs=1, batch_size=8, device="cpu")
    pretrain_on(data, PretrainConfig(**kw, together=False), str(tmp_path / "one"))
    pretrain_on(data, PretrainConfig(**kw, together=True), str(tmp_path / "two"))
    a, b = load_bank(str(tmp_path / "one")), load_bank(str(tmp_path / "two"))
    for name in a["final"]:
        torch.testing.assert_close(a["final"][name], b["final"][name], rtol=1e-4, atol=1e-5)


def test_bank_interpolates_parameters_in_place(data, bank):
    from fastdm.embedders.bank import load_bank
    e = engine_for(data, method="dance", embedders=f"bank:{bank}", bank_members=2, **TINY)
    b = load_bank(bank)
    src = e.source
    weights = {id(p) for p in e.net.parameters()}
    seen = set()
    for it in range(6):
        e.draw(it)
        j, lam = src.draw(it)
        assert j < 2
        seen.add(j)
        for name, p in e.net.named_parameters():
            want = lam * b["init"][name][j] + (1 - lam) * b["final"][name][j]
            assert torch.equal(p.detach(), want), name
        for name, p in src.expert.named_parameters():
            assert torch.equal(p.detach(), b["final"][name][j])
    assert {id(p) for p in e.net.parameters()} == weights  # the same tensors: no recompilation
    assert seen == {0, 1}
    j1, l1 = src.draw(3)
    j2, l2 = src.draw(3)
    assert j1 == j2 and torch.equal(l1, l2)


def test_bank_must_match_the_run(data, bank):
    other = make_dataset(num_classes=4, per_class=(9, 8, 10, 9), size=(12, 12))
    with pytest.raises(FastDMError, match="pretrain a bank with --dataset"):
        engine_for(other, method="dance", embedders=f"bank:{bank}", **TINY)
    with pytest.raises(FastDMError, match="has 3"):
        engine_for(data, method="dance", embedders=f"bank:{bank}", bank_members=4, **TINY)


def test_calibration_is_a_cross_entropy_step_per_class(data, bank):
    """After the matching, each class takes one SGD step on [0, 1] pixels (the momentum shared
    with the matching's) on the cross-entropy of the member's trained network on its images."""
    kw = dict(method="dance", embedders=f"bank:{bank}", bank_members=0, strategy="none",
              factor=1, **TINY)
    e = engine_for(data, **kw)
    plain = engine_for(data, **{**kw, "calib_weight": 0.0})
    s, p = e.initial_state(), plain.initial_state()
    plain.step(p)  # the same matching updates, without calibration
    e.step(s)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    leaf = (p.images * std + mean).clone().requires_grad_(True)
    opt = torch.optim.SGD([leaf], lr=0.01, momentum=0.5)
    opt.state[leaf]["momentum_buffer"] = p.momentum.clone()
    for c in range(3):
        loss = F.cross_entropy(e.source.expert(((leaf - mean) / std)[c:c + 1]), torch.tensor([c]))
        (g,) = torch.autograd.grad(loss, leaf)
        leaf.grad = g
        opt.step()
        with torch.no_grad():
            leaf.clamp_(0, 1)
    torch.testing.assert_close(s.images, (leaf.detach() - mean) / std, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(s.images, p.images)


# -- queue -------------------------------------------------------------------------------------
def test_queue_schedule_and_meter(data):
    from fastdm.embedders.queue import INITIAL, QueueSource
    e = engine_for(data, method="idm", queue_interval=2, queue_size=4, queue_batch=5,
                   queue_steps=2, **TINY)
    q = e.source
    assert isinstance(q, QueueSource) and len(q.nets) == INITIAL
    ids = []
    for it in range(5):
        e.source.begin(it)
        ids.append([n["id"] for n in q.nets])
        q.end(it)
    assert ids[0] == [0, 1, 2, 3] and ids[2] == [1, 2, 3, 4] and ids[4] == [2, 3, 4, 5]
    trained = [n for n in q.nets if int(n["count"]) > 0]
    assert trained and all(int(n["count"]) % 5 == 0 for n in trained)
    net = {"correct": torch.tensor(0.0), "count": torch.tensor(0.0)}
    assert float(QueueSource.accuracy_percent(net)) == 0          # no steps yet
    net["count"] += 10
    assert float(QueueSource.accuracy_percent(net)) == 100        # torchnet's and/or quirk
    net["correct"] += 4
    assert float(QueueSource.accuracy_percent(net)) == pytest.approx(40.0)


def test_queue_training_is_sgd_on_real_batches(data):
    """end(): the drawn networks take queue_steps SGD steps (momentum 0.9, weight decay 5e-4)
    on cross-entropy over their real batches, exactly as torch.optim.SGD on one network."""
    from fastdm.models import build_model
    e = engine_for(data, method="idm", queue_train=1, queue_steps=3, queue_batch=7, **TINY)
    q = e.source
    q.begin(1)  # no push at iteration 1 (interval 5): three networks
    order = rng.permutation(len(q.nets), 0, rng.QUEUE_TRAIN, 1, 0)
    target = q.nets[int(order[0])]
    net = build_model("ConvNetW32", 3, 3, (12, 12), 0, device="cpu")
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(target["params"][name])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    total = len(data.train)
    rows, _ = rng.sample_without_replacement(torch.full((3,), total), 7, 0, rng.QUEUE_TRAIN, 1, 1,
                                             classes=torch.arange(3), max_count=total)
    for s in range(3):
        x = data.normalize(data.train.images[rows[s]], "cpu")
        loss = F.cross_entropy(net(x), data.train.labels[rows[s]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.end(1)
    for name, p in net.named_parameters():
        torch.testing.assert_close(target["params"][name], p.detach(), rtol=1e-5, atol=1e-6)


def test_idm_class_term_is_accuracy_weighted_cross_entropy(data):
    kw = dict(method="idm", strategy="none", factor=1, batch_real=4, **TINY)
    e = engine_for(data, **kw)
    plain = engine_for(data, **{**kw, "ce_weight": 0.0})
    table, table2 = e.draw(0), plain.draw(0)
    w = 37.5  # the picked network's meter value (its formula: test_queue_schedule_and_meter)
    e.source.weight = torch.tensor(w)
    images = e.initial_state().images
    for c in range(3):
        e.plan_stream(0, [(c, c + 1)])
        plain.plan_stream(0, [(c, c + 1)])
        rows = slice(c, c + 1)
        loss, g = e.chunk_loss(images[rows], table, 0, c, c + 1)
        loss0, g0 = plain.chunk_loss(images[rows], table2, 0, c, c + 1)
        x = images[rows].clone().requires_grad_(True)
        ce = F.cross_entropy(e.net(x), torch.tensor([c]))
        (gc,) = torch.autograd.grad(0.5 * w * ce, x)
        torch.testing.assert_close(loss - loss0, 0.5 * w * ce.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g - g0, gc, rtol=1e-4, atol=1e-5)


def straight_and_resumed(data, out, **kw):
    """(engine, state) of 4 iterations run straight, and of 2 saved then resumed to 4 (as
    condense resumes: the checkpoint's source state loaded into the new engine's source)."""
    from fastdm.checkpoint import load_checkpoint
    from fastdm.runner import run
    straight = engine_for(data, iterations=4, **kw)
    s = straight.initial_state()
    run(straight, s, progress=False)
    e = engine_for(data, iterations=2, checkpoint_every=1, **kw)
    run(e, e.initial_state(), out=out, progress=False)
    e2 = engine_for(data, iterations=4, **kw)
    s2 = load_checkpoint(out, e2.plan)
    e2.source.load_state_dict(s2.source)
    run(e2, s2, out=out, progress=False)
    return straight, s, e2, s2


def test_queue_runs_resume_bit_identically(data, tmp_path):
    kw = dict(method="idm", queue_interval=2, queue_batch=6, queue_steps=2, batch_real=4, **TINY)
    straight, s, e2, s2 = straight_and_resumed(data, str(tmp_path), **kw)
    assert torch.equal(s2.images, s.images)
    for a, b in zip(straight.source.nets, e2.source.nets):
        assert a["id"] == b["id"] and torch.equal(a["count"], b["count"])
        for name in a["params"]:
            assert torch.equal(a["params"][name], b["params"][name])


def test_same_seed_same_synset(data, bank):
    from fastdm.runner import run
    for kw in (dict(method="idm", queue_batch=6, queue_steps=1, batch_real=4),
               dict(method="dance", embedders=f"bank:{bank}", bank_members=0, batch_real=4)):
        runs = []
        for _ in range(2):
            e = engine_for(data, iterations=2, **kw, **TINY)
            s = e.initial_state()
            run(e, s, progress=False)
            runs.append(s.images)
        assert torch.equal(*runs)


def test_pretrain_cli(tmp_path, capsys):
    from fastdm.cli import main
    out = tmp_path / "bank"
    assert main(["pretrain", "--dataset", "digits", "--models", "2", "--epochs", "1",
                 "--images-per-class", "6", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "bank.json").read_text())
    assert info["members"] == 2 and info["config"]["images_per_class"] == 6
    assert "--embedders bank:" in capsys.readouterr().out
    assert main(["pretrain", "--dataset", "digits", "--models", "0", "--out", str(out)]) == 2


def test_queue_trains_the_same_together(data):
    """The vmapped step (CUDA's path) trains the drawn networks as one after another does."""
    from fastdm.embedders.stacked import stacked_forward
    kw = dict(method="idm", queue_train=2, queue_steps=2, queue_batch=5, **TINY)
    a, b = engine_for(data, **kw).source, engine_for(data, **kw).source
    b.together, b.forward = True, stacked_forward(b.net)
    for q in (a, b):
        q.begin(0)
        q.end(0)
    for x, y in zip(a.nets, b.nets):
        assert torch.equal(x["count"], y["count"])
        for name in x["params"]:
            torch.testing.assert_close(x["params"][name], y["params"][name], rtol=1e-4, atol=1e-6)


def test_bank_runs_shard_like_one_process(data, bank):
    """Every process draws the same member; calibration steps every class in order (zero
    gradient for classes another process owns), so a shard's rows end as one process's do."""
    from fastdm.runner import run
    kw = dict(method="dance", embedders=f"bank:{bank}", bank_members=0, batch_real=4,
              iterations=2, **TINY)
    whole = engine_for(data, **kw)
    s = whole.initial_state()
    run(whole, s, progress=False)
    part = engine_for(data, classes=(1, 3), **kw)
    sp = part.initial_state()
    run(part, sp, progress=False)
    torch.testing.assert_close(sp.images, s.images[1:], rtol=1e-5, atol=1e-6)


def test_plateau_is_torchs_reduce_lr_on_plateau(data):
    from fastdm.optim import ImageOptimizer, Plateau
    cfg = resolved(data, ipc=1, lr_img=0.8)
    opt = ImageOptimizer(cfg, data.mean, data.std, "cpu")
    ours = Plateau(opt, patience=2)
    leaf = torch.zeros(1, requires_grad=True)
    ref_opt = torch.optim.SGD([leaf], lr=0.8)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=2)
    for loss in [5, 4, 4, 4, 4, 3.9999, 3, 3, 3, 3, 3, 3, 2, 2.5, 2.5, 2.5, 2.5]:
        ours.step(loss)
        ref.step(loss)
        assert opt.lr == ref_opt.param_groups[0]["lr"]
    assert opt.lr < 0.8


def test_plateau_state_resumes(data, tmp_path):
    """--lr-plateau's learning rate and counters are in the checkpoint."""
    kw = dict(method="ncfm", embedders="random", frequencies=16, lr_plateau=1, batch_real=4,
              **TINY)
    _, s, _, s2 = straight_and_resumed(data, str(tmp_path), **kw)
    assert s2.lr_schedule is not None
    assert s2.lr_schedule == s.lr_schedule and torch.equal(s2.images, s.images)
