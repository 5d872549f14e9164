"""Evaluation protocols (fastdm.protocols, fastdm.training), soft labels, the teacher cache,
DD-Ranking's scores, the reproduction table and the pictures, against torch-level references
written here from the recipes (torch's own optimisers and schedulers, DD-Ranking's loss)."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastdm import rng
from fastdm.augment import DSAParams, parse_strategy, sample_per_sample
from fastdm.augment.cutmix import cutmix_
from fastdm.errors import FastDMError
from fastdm.evaluation import EvalConfig, random_subset, train_model
from fastdm.models import build_model
from fastdm.ops.dsa import dsa_augment
from fastdm.protocols import PROTOCOLS, get_protocol
from fastdm.training import lr_at

from conftest import make_dataset


@pytest.fixture
def data():
    return make_dataset(per_class=(10, 10, 10, 10), size=(8, 8))


# the methods' own milestones: DANCE's train.py [2E // 3, 5E // 6]; NCFM's fixed epochs at 2000
MILESTONES = {"dance": lambda e: [2 * e // 3, 5 * e // 6],
              "ncfm": lambda e: [e // 5, 2 * e // 5, 3 * e // 5, 4 * e // 5]}


@pytest.mark.parametrize("name,epochs", [("dance", 4), ("dance", 100), ("dance", 1500), ("ncfm", 2000),
                                         ("ncfm", 7), ("soft", 30)])
def test_learning_rates_follow_torchs_schedulers(name, epochs):
    cfg = EvalConfig.for_protocol(name, epochs=epochs)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    if cfg.schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, MILESTONES[name](epochs), gamma=cfg.gamma)
    else:  # DD-Ranking's "cosine": LambdaLR(0.5 (1 + cos(pi e / E / 2))), stepped per epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / cfg.epochs / 2)))
    for ep in range(cfg.epochs):
        assert lr_at(cfg, ep) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), ep
        opt.step()
        sched.step()


def test_protocol_recipes_and_overrides():
    dance = EvalConfig.for_protocol("dance", epochs=9, batch_train=None)
    assert (dance.epochs, dance.batch_train, dance.cutmix, dance.gamma) == (9, 64, 0.5, 0.2)
    assert dance.strategy == "color_crop_flip_scale_rotate" and dance.aug_mode == "M"
    ncfm = EvalConfig.for_protocol("ncfm")
    assert (ncfm.optimizer, ncfm.lr, ncfm.weight_decay, ncfm.epochs, ncfm.batch_train) == \
        ("adamw", 1e-3, 0.01, 2000, 128)
    assert [2000 * a // b for a, b in ncfm.milestones] == [400, 800, 1200, 1600]
    assert EvalConfig.for_protocol("dm") == EvalConfig(protocol="dm")  # the defaults are dm's
    assert get_protocol("idm") is PROTOCOLS["dm"] and get_protocol(None) is PROTOCOLS["dm"]
    with pytest.raises(FastDMError, match="unknown protocol 'kd'"):
        get_protocol("kd")
    with pytest.raises(FastDMError, match="CutMix probability"):
        EvalConfig.for_protocol("dance", cutmix=2.0).check()


def _reference_training(images, labels, data, cfg, k, teacher=None):
    """The protocol written out with torch's optimisers and schedulers, from the same rng
    words: the student fastdm.evaluation.train_model must end at."""
    net = build_model(cfg.model, images.shape[1], data.num_classes, tuple(images.shape[2:]), cfg.seed,
                      rng.EVAL_INIT, k).train()
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / cfg.epochs / 2)))
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, MILESTONES["dance"](cfg.epochs), gamma=cfg.gamma)
    ops, p, n, step = parse_strategy(cfg.strategy), DSAParams(aug_mode=cfg.aug_mode), len(images), 0
    for ep in range(cfg.epochs):
        order = rng.permutation(n, cfg.seed, rng.EVAL_ORDER, k, ep)
        for i in range(0, n, cfg.batch_train):
            b = order[i:i + cfg.batch_train]
            x, y = images[b], labels[b]
            table = sample_per_sample(ops, p, tuple(images.shape[2:]), len(b), cfg.seed, rng.EVAL_AUG,
                                      k, step)
            x = dsa_augment(x, table, backend="torch").clone()
            mix = cutmix_(x, cfg.cutmix, cfg.seed, rng.EVAL_MIX, k, step)
            out = net(x)
            if teacher is not None:  # DD-Ranking's KL: probabilities as the target, batchmean
                with torch.no_grad():
                    target = F.softmax(teacher(x), 1)
                loss = F.kl_div(F.log_softmax(out, 1), target, reduction="batchmean")
            elif mix is None:
                loss = F.cross_entropy(out, y)
            else:
                partner, kept = mix
                loss = kept * F.cross_entropy(out, y) + (1 - kept) * F.cross_entropy(out, y[partner])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        sched.step()
    return net


@pytest.mark.parametrize("name", ["dance", "soft"])
def test_training_matches_the_recipe_written_with_torch(data, name):
    images, labels = random_subset(data, 6, 0, 0)
    cfg = EvalConfig.for_protocol(name, model="ConvNetW32", epochs=4, batch_train=10,
                                  strategy="color_crop_flip", cutmix=0.6)
    teacher = None
    if name == "soft":
        teacher = build_model("ConvNetW32", 3, 4, (8, 8), 7).eval().requires_grad_(False)
    got = train_model(images, labels, data, cfg, 1, "cpu", teacher=teacher)
    want = _reference_training(images, labels, data, cfg, 1, teacher)
    # the functions, not every parameter: a convolution's bias before instance norm gets a
    # zero gradient, which AdamW's normalised step turns into rounding noise of size lr
    x = data.normalize(data.test.images)
    with torch.no_grad():
        torch.testing.assert_close(got.eval()(x), want.eval()(x), rtol=1e-4, atol=1e-4)
        moved = (got(x) - build_model("ConvNetW32", 3, 4, (8, 8), cfg.seed, rng.EVAL_INIT, 1).eval()(x))
    assert moved.abs().max() > 1e-2  # it trained


def test_soft_protocol_needs_a_teacher_and_validation_points_do_not_change_training(data):
    images, labels = random_subset(data, 3, 0, 0)
    with pytest.raises(FastDMError, match="teacher"):
        train_model(images, labels, data, EvalConfig.for_protocol("soft", model="ConvNetW32", epochs=1),
                    0, "cpu")
    from fastdm.evaluation import evaluate_images
    kw = dict(model="ConvNetW32", models=2, epochs=4)
    tested = evaluate_images(images, labels, data, EvalConfig.for_protocol("dance", validate_every=2, **kw),
                             "cpu", progress=False)
    plain = evaluate_images(images, labels, data, EvalConfig.for_protocol("dance", validate_every=0, **kw),
                            "cpu", progress=False)
    assert tested["accs"] == plain["accs"]  # testing mid-way leaves the training as it was
    assert [[e for e, _ in c["acc"]] for c in tested["curves"]] == [[2, 4], [2, 4]]
    assert [c["acc"][-1][1] for c in tested["curves"]] == tested["accs"]
    assert "accs_best" in tested and "accs_best" not in plain


def test_models_trained_together_report_each_models_curve(data):
    from fastdm.evaluation import evaluate_images

    class Board:
        def __init__(self):
            self.points = {}

        def curve(self, prefix, k, curve, logged):
            self.points[(prefix, k)] = (len(curve.get("loss", [])), len(curve.get("acc", [])))
    images, labels = random_subset(data, 3, 0, 0)
    cfg = dict(model="ConvNetW32", models=2, epochs=3, strategy="crop")
    board = Board()
    together = evaluate_images(images, labels, data, EvalConfig(batched=True, **cfg), "cpu",
                               progress=False, board=board, board_prefix="p")
    alone = evaluate_images(images, labels, data, EvalConfig(batched=False, **cfg), "cpu", progress=False)
    assert together["trained_together"] and not alone["trained_together"]
    for a, b in zip(together["curves"], alone["curves"]):
        assert len(a["loss"]) == len(b["loss"]) == 4  # dm: epochs + 1 passes
        torch.testing.assert_close(torch.tensor(a["loss"]), torch.tensor(b["loss"]), rtol=1e-4, atol=1e-5)
    assert board.points == {("p", 0): (4, 1), ("p", 1): (4, 1)}


def test_cutmix_pastes_one_box_from_the_partner_and_weights_by_the_kept_area():
    x = torch.arange(5 * 2 * 8 * 8, dtype=torch.float32).view(5, 2, 8, 8)
    for step in range(20):
        y = x.clone()
        mix = cutmix_(y, 1.0, 0, rng.EVAL_MIX, 0, step)
        partner, kept = mix
        changed = (y != x).any(1)                      # [n, H, W]: where a pixel came from the partner
        box = changed.any(0)
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        area = 0 if len(rows) == 0 else (int(rows[-1] - rows[0]) + 1) * (int(cols[-1] - cols[0]) + 1)
        if area:  # one rectangle, and inside it every image holds its partner's pixels
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert bool(box[r0:r1, c0:c1].all())
            torch.testing.assert_close(y[:, :, r0:r1, c0:c1], x[partner][:, :, r0:r1, c0:c1])
        assert kept == pytest.approx(1 - area / 64)
    assert cutmix_(x.clone(), 0.0, 0, rng.EVAL_MIX, 0, 0) is None


def test_ranking_scores():
    from fastdm.ranking import lrs, scores
    s = scores(full_acc=0.9, syn_hard_acc=0.6, syn_soft_acc=0.7, rnd_soft_acc=0.65)
    assert s["hlr"] == pytest.approx(0.3) and s["ior"] == pytest.approx(0.05)
    # DD-Ranking: alpha = 0.5 IOR - 0.5 HLR, (e^alpha - e^-1) / (e - e^-1)
    assert s["lrs"] == pytest.approx((math.exp(-0.125) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert lrs(hlr=1.0, ior=-1.0) == pytest.approx(0.0) and lrs(hlr=-1.0, ior=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fraction"):
        scores(full_acc=90.0, syn_hard_acc=0.6, syn_soft_acc=0.7, rnd_soft_acc=0.65)


def test_teacher_is_trained_once_and_then_loaded(monkeypatch, tmp_path):
    import fastdm.pretrain as pt
    from fastdm.data import load_dataset
    from fastdm.teacher import get_teacher, load_teacher
    digits = load_dataset("digits", None, False, None, progress=False)
    monkeypatch.setenv("FASTDM_CACHE", str(tmp_path))
    a, info = get_teacher(digits, None, "ConvNetW32", "cpu", epochs=1, images_per_class=5, progress=False)
    assert info["path"].startswith(str(tmp_path)) and len(info["accuracies"]) == 1
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: pytest.fail("trained again"))
    b, _ = get_teacher(digits, None, "ConvNetW32", "cpu", epochs=1, images_per_class=5, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    with pytest.raises(FastDMError, match="needs a ConvNet for"):
        load_teacher(info["path"], digits, "ConvNet", "cpu")


def test_evaluate_rank_on_digits_through_the_cli(tmp_path, capsys, monkeypatch):
    from fastdm.cli import main
    monkeypatch.setenv("FASTDM_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    assert main(["condense", "--dataset", "digits", "--iterations", "2", "--out", out, "--no-progress",
                 "--model", "ConvNetW32", "--batch-real", "8"]) == 0
    capsys.readouterr()
    code = main(["evaluate", os.path.join(out, "synset.pt"), "--rank", "--models", "1", "--epochs", "2",
                 "--teacher-epochs", "1", "--teacher-images-per-class", "5", "--no-progress",
                 "--tensorboard", str(tmp_path / "tb")])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    last = json.loads(stdout.strip().splitlines()[-1])
    r = last["rank"]
    assert r["hlr"] == pytest.approx(r["full_acc"] - r["syn_hard_acc"])
    assert r["ior"] == pytest.approx(r["syn_soft_acc"] - r["rnd_soft_acc"])
    assert r["full_acc"] == last["teacher"]["accuracies"][0]
    assert r["protocols"] == {"hard": "dm", "soft": "soft"} and "DD-Ranking: HLR" in stdout
    assert os.path.isfile(os.path.join(out, "eval_dm.png"))
    record = json.load(open(os.path.join(out, "eval.json")))
    assert record["rank"]["lrs"] == r["lrs"] and last["record"] == os.path.join(out, "eval.json")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert "evaluate/soft/random/model0/train_loss" in tags and "evaluate/dm/synset/model0/test_accuracy" in tags


def test_teacher_paths_that_are_not_banks_are_one_line_errors(tmp_path, monkeypatch):
    import fastdm.pretrain as pt
    from fastdm.data import load_dataset
    from fastdm.teacher import cache_dir, get_teacher
    digits = load_dataset("digits", None, False, None, progress=False)
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: pytest.fail("trained into a named folder"))
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "missing", tmp_path / "afile"):
        with pytest.raises(FastDMError, match="no bank there"):
            get_teacher(digits, None, "ConvNetW32", "cpu", path=str(bad))
    half = tmp_path / "half"
    half.mkdir()
    torch.save({}, half / "bank.pt")
    with pytest.raises(FastDMError, match="not a fastdm bank|cannot be read"):
        get_teacher(digits, None, "ConvNetW32", "cpu", path=str(half))
    monkeypatch.setenv("FASTDM_CACHE", str(tmp_path / "cache"))
    assert cache_dir(str(tmp_path / "afile")) == str(tmp_path / "cache" / "teachers")  # not writable there
    assert cache_dir(str(tmp_path)) == str(tmp_path / "fastdm-teachers")


def test_protocol_own_is_the_synsets_method_and_errors_are_one_line(tmp_path, capsys):
    from fastdm.cli import main
    from fastdm.evaluate_job import OWN_PROTOCOL
    assert OWN_PROTOCOL["dance"] == "dance" and OWN_PROTOCOL["idm"] == "dm"
    code = main(["evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1", "--rank"])
    assert code == 2 and "--rank scores a synthetic set" in capsys.readouterr().err
    code = main(["evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1",
                 "--teacher-epochs", "0"])
    assert code == 2 and "--teacher-epochs must be >= 1" in capsys.readouterr().err
    code = main(["evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1",
                 "--plot", str(tmp_path)])
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_tensorboard_absent_is_a_one_line_error(monkeypatch):
    import sys
    from fastdm.board import open_board
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(FastDMError, match="pip install tensorboard"):
        open_board("somewhere")
    assert open_board(None) is None


def test_a_run_without_a_terminal_logs_plain_lines(tmp_path, caplog, capsys):
    import logging
    from fastdm.cli import main
    with caplog.at_level(logging.INFO, logger="fastdm"):
        assert main(["condense", "--dataset", "digits", "--iterations", "4", "--log-every", "2",
                     "--model", "ConvNetW32", "--batch-real", "8", "--out", str(tmp_path / "r"),
                     "--no-progress"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert [ln.split(":")[0] for ln in lines] == ["iteration 2/4", "iteration 4/4"]
    assert all("it/s, ETA" in ln and "loss " in ln for ln in lines)
    out = capsys.readouterr().out
    assert f"next: fastdm evaluate {tmp_path / 'r' / 'synset.pt'} --compare-random" in out


def test_condense_tensorboard_has_loss_and_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    cfg = CondenseConfig(dataset="digits", iterations=4, log_every=2, model="ConvNetW32", batch_real=8)
    condense_dataset(cfg, str(tmp_path / "run"), progress=False, tensorboard=str(tmp_path / "tb"))
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("condense/loss")] == [2, 4]
    assert [e.step for e in ea.Scalars("condense/seconds_per_iteration")] == [4]
    assert [e.step for e in ea.Images("condense/synset")] == [1, 2, 3, 4]


def test_reproduce_runs_cells_once_and_writes_the_table(tmp_path, monkeypatch):
    import fastdm.reproduce as rp
    out = str(tmp_path / "cells")
    kw = dict(table="dm-paper", data_root=None, datasets=["digits"], ipcs=[1], out=out, progress=False,
              overrides={"iterations": 2, "batch_real": 8, "models": 1, "epochs": 1})
    res = rp.reproduce(**kw)
    assert len(res["rows"]) == 1 and os.path.isfile(os.path.join(out, "table.png"))
    assert "| digits | 1 | - |" in res["markdown"] and "random, measured" in res["markdown"]
    monkeypatch.setattr(rp, "condense_cell", lambda *a, **k: pytest.fail("condensed again"))
    again = rp.reproduce(**kw)
    assert again["rows"] == res["rows"]
    assert "| mnist | 1 | 89.7 |" in rp.write_table(str(tmp_path), "dm-paper",
                                                       [{**res["rows"][0], "dataset": "mnist"}])
    with pytest.raises(FastDMError, match="--schedule"):
        rp.reproduce(**{**kw, "schedule": "slow"})
    with pytest.raises(FastDMError, match="was run with iterations 2 \\(now 3\\)"):
        rp.reproduce(**{**kw, "overrides": {**kw["overrides"], "iterations": 3}})
    with pytest.raises(FastDMError, match="unknown dataset 'nope'"):
        rp.reproduce(**{**kw, "datasets": ["digits", "nope"], "out": str(tmp_path / "other")})
    assert not os.path.exists(tmp_path / "other" / "digits_ipc1")


def test_grid_labels_every_column_with_its_class_name():
    from fastdm.report import grid_image, loss_figure, synset_figure
    images = torch.rand(3 * 2, 1, 8, 8)
    grid, cols, rows = grid_image(images, 3, 2)
    assert (cols, rows) == (3, 2) and grid.shape == (3, 2 + 2 * 10, 2 + 3 * 10)
    # column c, row i holds image (class c, i): class-sorted input, one row per image index
    torch.testing.assert_close(grid[0, 2 + 10:2 + 10 + 8, 2 + 20:2 + 20 + 8], images[2 * 2 + 1, 0])
    fig = synset_figure(images, 3, 2, ["cat", "dog", "eel"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "eel"]
    ax = loss_figure([None, 1.0, None, 0.5]).axes[0]
    assert ax.get_xlabel() == "iteration" and list(ax.lines[0].get_xdata()) == [2, 4]
