"""Objectives as plug-ins: dm (DM's mean embedding, the default) and m3d (Gaussian multi-kernel
MMD) through the engine and the CLI, their settings, the fused ops against the torch path inside
an iteration, the loss history of a partial objective (constant terms only at log points), a
new objective added without touching the engine, the deprecated --mmd, and clear errors."""
import json
import math

import pytest
import torch

from conftest import small_engine as engine_for
from conftest import resolved
from fastdm import backend, objectives
from fastdm.cli import main
from fastdm.errors import FastDMError
from fastdm.objectives.m3d import DEFAULT_BANDWIDTHS
from fastdm.runner import run

needs_kernels = pytest.mark.skipif("linear_mmd" not in backend.FUSED_OPS,
                                   reason="triton does not import")


@pytest.fixture
def data(three_classes):
    return three_classes


def test_defaults_and_validation(data):
    cfg = resolved(data, ipc=2)
    assert cfg.objective == "dm" and cfg.bandwidths is None and cfg.bandwidth_scale is None
    cfg = resolved(data, ipc=2, objective="m3d")
    assert cfg.bandwidths == list(DEFAULT_BANDWIDTHS) and cfg.bandwidth_scale == "relative"
    for kw, msg in (({"objective": "rbf"}, "unknown objective 'rbf'; choose from datadam, dm, m3d, ncfm"),
                    ({"bandwidths": [1.0]}, "--bandwidths applies to --objective m3d only"),
                    ({"objective": "m3d", "bandwidths": [1.0, 0.0]}, "positive"),
                    ({"objective": "m3d", "bandwidths": []}, "positive"),
                    ({"objective": "m3d", "bandwidth_scale": "log"}, "bandwidth_scale must be")):
        with pytest.raises(FastDMError, match=msg):
            resolved(data, ipc=2, **kw)


@needs_kernels
@pytest.mark.parametrize("kind", ["dm", "m3d"])
def test_iteration_on_triton_equals_torch(monkeypatch, data, kind):
    """One iteration's loss and gradient with the fused kernels (interpreter on the CPU) equal
    the torch backend's, with unequal real counts per class (class 1 has 4 < batch_real)."""
    results = {}
    for be in ("torch", "triton"):
        monkeypatch.setenv("FASTDM_BACKEND", be)
        e = engine_for(data, objective=kind, class_chunk=2, conv="direct")  # the same convolutions
        assert set(e.plan.backends.values()) == {be}
        assert set(e.plan.backends) == {"dsa", *objectives.get(kind).ops}
        state = e.initial_state()
        results[be] = e.loss_and_grad(state.images, 3)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-6, rtol=1e-4)


def test_gaussian_value_and_gradient(data):
    e = engine_for(data, objective="m3d")
    images = e.initial_state().images
    full, g_full = e.loss_and_grad(images, 1, value=True)
    part, g_part = e.loss_and_grad(images, 1, value=False)
    assert torch.equal(g_full, g_part)  # the real-real term does not touch the synthetic set
    assert float(full) > float(part)    # ... but it is a positive part of the value
    assert float(full) >= 0


def test_gaussian_run_records_values_at_log_points(data, tmp_path):
    e = engine_for(data, objective="m3d", iterations=7, log_every=3)
    state = e.initial_state()
    run(e, state, progress=False)
    logged = [i + 1 for i, v in enumerate(state.losses) if v is not None]
    assert len(state.losses) == 7 and logged == [3, 6, 7]
    assert all(math.isfinite(state.losses[i - 1]) and state.losses[i - 1] >= 0 for i in logged)
    # each logged value is the full MMD^2 of that iteration's draws (mean over classes)
    e2 = engine_for(data, objective="m3d", iterations=7, log_every=1)
    s2 = e2.initial_state()
    run(e2, s2, progress=False)
    assert [s2.losses[i - 1] for i in logged] == pytest.approx([state.losses[i - 1] for i in logged], rel=1e-6)
    assert torch.equal(s2.images, state.images)


def test_dm_objective_is_dms_loss(data):
    """The engine's dm loss on the torch path is DM's: ||mean real - mean syn||^2 summed."""
    e = engine_for(data)
    state = e.initial_state()
    loss, _ = e.loss_and_grad(state.images, 2)
    # recompute by hand from the same draws
    from fastdm.augment import sample_siamese
    from fastdm.models import init_parameters_
    from fastdm import rng
    from fastdm.ops.dsa import dsa_augment
    init_parameters_(e.net, e.cfg.seed, rng.NET, 2)
    table = sample_siamese(e.ops, e.dsa, e.hw, e.cfg.seed, rng.AUG, 2, keys=torch.arange(3))
    total = 0.0
    with torch.no_grad():
        for c in range(3):
            rows = table.rows(torch.tensor([c]))
            idx, n = e.sampler.indices(2, c, c + 1)
            real = dsa_augment(e.stream.images[idx], rows, torch.zeros(int(n), dtype=torch.long),
                               mean=data.mean, std=data.std, backend="torch")
            syn = dsa_augment(state.images[2 * c:2 * c + 2], rows, torch.zeros(2, dtype=torch.long),
                              backend="torch")
            total += float(((e.net.embed(real).mean(0) - e.net.embed(syn).mean(0)) ** 2).sum())
    assert float(loss) == pytest.approx(total, rel=1e-5)


def test_cli_m3d_run_and_errors(tmp_path, capsys, caplog):
    out = tmp_path / "g"
    code = main(["condense", "--dataset", "digits", "--iterations", "4", "--objective", "m3d",
                 "--bandwidths", "0.5,2", "--out", str(out), "--no-progress", "--keep-checkpoint"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and res["final_loss"] is not None and res["final_loss"] >= 0
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["config"]["objective"] == "m3d" and metrics["config"]["bandwidths"] == [0.5, 2.0]
    assert metrics["plan"]["objective"] == "m3d" and metrics["loss_history"][-1] is not None
    # resuming with another objective is refused (its settings are not what differs)
    assert main(["condense", "--out", str(out), "--resume", "--objective", "dm", "--iterations", "5",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "objective: 'm3d' -> 'dm'" in err and "bandwidths" not in err
    assert main(["condense", "--dataset", "digits", "--bandwidths", "1", "--no-progress"]) == 2
    assert "--objective m3d only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["condense", "--dataset", "digits", "--objective", "m3d", "--bandwidths", "wide"])
    assert "expected numbers separated by commas" in capsys.readouterr().err
    # the old --mmd still works, with a warning, and contradictions are refused
    assert main(["condense", "--dataset", "digits", "--mmd", "gaussian", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["objective"] == "m3d" and "--mmd is deprecated" in caplog.text
    assert main(["condense", "--dataset", "digits", "--mmd", "gaussian", "--objective", "dm",
                 "--dry-run"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_a_checkpoint_from_before_objectives_resumes(data, tmp_path):
    """Checkpoints written with --mmd (before objectives) resume as the objective it named."""
    from fastdm.checkpoint import load_checkpoint, save_checkpoint
    e = engine_for(data, objective="m3d", iterations=2)
    state = e.initial_state()
    run(e, state, progress=False)
    save_checkpoint(str(tmp_path), e.plan, state)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    old = dict(ck["config"], mmd="gaussian")
    del old["objective"]
    ck["config"] = old
    torch.save(ck, tmp_path / "checkpoint.pt")
    assert load_checkpoint(str(tmp_path), e.plan).iteration == 2


@pytest.fixture
def twice_dm():
    """An objective written as a user would: one class, registered; the engine is untouched."""
    from fastdm.objectives.dm import MeanEmbedding

    @objectives.register
    class TwiceDM(MeanEmbedding):
        name = "twice_dm"
        title = "2 x DM loss"

        def loss(self, real, real_counts, syn, syn_counts, value=True):
            return 2 * super().loss(real, real_counts, syn, syn_counts, value)
    yield TwiceDM
    del objectives.OBJECTIVES["twice_dm"]


def test_a_new_objective_needs_no_engine_change(data, twice_dm):
    dm = engine_for(data, class_chunk=2)
    two = engine_for(data, class_chunk=2, objective="twice_dm")
    assert type(two.objective) is twice_dm and two.plan.objective == "twice_dm"
    images = dm.initial_state().images
    (a, ga), (b, gb) = dm.loss_and_grad(images, 1), two.loss_and_grad(images, 1)
    torch.testing.assert_close(b, 2 * a)
    torch.testing.assert_close(gb, 2 * ga)
