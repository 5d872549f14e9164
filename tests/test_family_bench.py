"""The family benchmarks run end to end on tiny settings (so they cannot rot between the runs
that measure with them)."""
import json

import pytest

from benchmarks import family_cost, family_table


def test_family_cost_reports_each_variant_against_dm(tmp_path):
    out = tmp_path / "cost.json"
    report = family_cost.main(["--setting", "toy-ipc2", "--variants", "dm,datadam,ncfm-factor2",
                               "--iters", "1", "--warmup", "0", "--per-class", "20",
                               "--device", "cpu", "--json", str(out)])
    rows = report["variants"]
    assert set(rows) == {"dm", "datadam", "ncfm-factor2"} and rows["dm"]["vs_dm"] == 1.0
    assert all(r["median_s"] > 0 and r["cpu_s"][0] > 0 for r in rows.values())
    assert rows["dm"]["vs_dm_cpu_paired"] == 1.0
    assert json.loads(out.read_text())["setting"] == "toy-ipc2"


@pytest.mark.slow  # condenses and evaluates table cells (3 s each)
def test_family_table_runs_cells_and_resumes(tmp_path, capsys):
    args = ["--data-root", str(tmp_path), "--datasets", "digits", "--ipc", "1", "--methods", "dm",
            "--factors", "1,2", "--iterations", "2", "--models", "1", "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "t")]
    assert family_table.main(args) == 0
    table = (tmp_path / "t" / "table.md").read_text()
    assert "| digits | 1 |" in table and "dm f2" in table
    cell = json.loads((tmp_path / "t" / "digits_ipc1_dm_f2" / "result.json").read_text())
    assert cell["factor"] == 2 and cell["config"]["factor"] == 2
    (tmp_path / "t" / "digits_ipc1_dm_f2" / "synset.pt").unlink()  # read back, not rerun
    assert family_table.main(args) == 0
    assert not (tmp_path / "t" / "digits_ipc1_dm_f2" / "synset.pt").exists()
    # a finished condensation whose evaluation was cut off is evaluated, not condensed again
    (tmp_path / "t" / "digits_ipc1_dm_f1" / "result.json").unlink()
    synset = tmp_path / "t" / "digits_ipc1_dm_f1" / "synset.pt"
    before = synset.stat().st_mtime_ns
    assert family_table.main(args) == 0
    assert synset.stat().st_mtime_ns == before
    again = json.loads((tmp_path / "t" / "digits_ipc1_dm_f1" / "result.json").read_text())
    assert again["condense_s"] is None and again["per_iteration_s"] > 0


@pytest.mark.slow  # condenses and evaluates table cells (3 s each)
def test_family_table_runs_trained_embedder_methods(tmp_path):
    """idm (queue) and dance (a bank per dataset under --banks), with --set overrides."""
    from fastdm.cli import main
    assert main(["pretrain", "--dataset", "digits", "--models", "1", "--epochs", "1",
                 "--images-per-class", "5", "--out", str(tmp_path / "banks" / "digits"),
                 "--no-progress"]) == 0
    args = ["--data-root", str(tmp_path), "--datasets", "digits", "--ipc", "1", "--methods",
            "idm,dance", "--factors", "2", "--iterations", "2", "--models", "1", "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "t"), "--banks", str(tmp_path / "banks"),
            "--set", "queue_batch=8,queue_steps=1,bank_members=0"]
    assert family_table.main(args) == 0
    idm = json.loads((tmp_path / "t" / "digits_ipc1_idm_f2" / "result.json").read_text())
    dance = json.loads((tmp_path / "t" / "digits_ipc1_dance_f2" / "result.json").read_text())
    assert idm["config"]["embedders"] == "queue" and idm["config"]["queue_batch"] == 8
    assert dance["config"]["embedders"].startswith("bank:") and idm["embedder_source_s"] > 0


def test_source_cost_times_each_pipeline(tmp_path):
    from benchmarks import source_cost
    report = source_cost.main(["--setting", "toy-ipc2", "--variants", "dm-f2,idm,dance",
                               "--iters", "1", "--warmup", "0", "--per-class", "20",
                               "--device", "cpu", "--set", "queue_batch=8,queue_steps=1",
                               "--json", str(tmp_path / "c.json")])
    rows = report["variants"]
    assert rows["dm-f2"]["vs_dm_f2"] == 1.0 and rows["idm"]["source_share"] > 0
    assert report["bank_seconds"] > 0
