"""The command line: outputs, the JSON contract, resume, and one-line errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import torch

from fastdm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--no-progress"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_of(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = [l for l in err.strip().splitlines() if l.startswith("fastdm: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_condense_writes_every_output_and_evaluate_prints_json_last(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, stdout, _ = run_cli(capsys, "condense", "--dataset", "digits", "--iterations", "3", "--ipc", "2",
                              "--out", out, *FAST)
    assert code == 0
    for f in ("synset.pt", "grid.png", "loss.png", "metrics.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))  # a finished run needs none
    syn = torch.load(os.path.join(out, "synset.pt"), weights_only=True)
    assert syn["images"].shape == (20, 1, 8, 8) and syn["images"].dtype == torch.float32
    assert syn["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert torch.equal(syn["data"][0][0], syn["images"]) and syn["config"]["iterations"] == 3
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert len(metrics["loss_history"]) == 3 and metrics["timings"]["per_iteration_s"] > 0
    assert json.loads(stdout.strip().splitlines()[-1])["iterations"] == 3
    from PIL import Image
    grid = Image.open(os.path.join(out, "grid.png"))
    assert grid.size[0] > grid.size[1]  # 10 classes across, 2 images down

    code, stdout, _ = run_cli(capsys, "evaluate", os.path.join(out, "synset.pt"), "--models", "2",
                              "--epochs", "1", "--compare-random", *FAST)
    assert code == 0
    last = json.loads(stdout.strip().splitlines()[-1])
    assert {"dataset", "ipc", "model", "acc_mean", "acc_std", "accs"} <= set(last)
    assert last["dataset"] == "digits" and last["ipc"] == 2 and last["model"] == "ConvNet"
    assert len(last["accs"]) == 2 and all(0 <= a <= 1 for a in last["accs"])
    assert len(last["random"]["accs"]) == 2

    code, stdout, _ = run_cli(capsys, "evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1",
                              "--models", "1", "--epochs", "1", "--model", "MLP", *FAST)
    last = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and last["kind"] == "random" and last["model"] == "MLP" and last["ipc"] == 1


def test_resume_continues_to_more_iterations_bit_identically(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["--dataset", "digits", "--ipc", "1", "--batch-real", "16", *FAST]
    assert run_cli(capsys, "condense", *common, "--iterations", "4", "--out", a)[0] == 0
    assert run_cli(capsys, "condense", *common, "--iterations", "2", "--out", b,
                   "--keep-checkpoint")[0] == 0
    # --resume takes the saved settings; only --iterations changes
    assert run_cli(capsys, "condense", "--out", b, "--resume", "--iterations", "4", *FAST)[0] == 0
    sa = torch.load(os.path.join(a, "synset.pt"), weights_only=True)
    sb = torch.load(os.path.join(b, "synset.pt"), weights_only=True)
    assert torch.equal(sa["images"], sb["images"])
    ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (a, b))
    assert ma["loss_history"] == mb["loss_history"]


def test_errors_are_one_clear_line(tmp_path, capsys):
    cases = [
        (["condense", "--dataset", "imagenet2"], "unknown dataset 'imagenet2'"),
        (["condense", "--dataset", "cifar10"], "needs --data-root"),
        (["condense", "--dataset", "cifar10", "--data-root", str(tmp_path / "none")], "does not exist"),
        (["condense", "--dataset", "cifar10", "--data-root", str(tmp_path)], "cifar10 not found under"),
        (["condense", "--dataset", "digits", "--ipc", "500"], "--ipc 500 is larger than the smallest class"),
        (["condense", "--dataset", "digits", "--model", "ConvNetX"], "unknown model 'ConvNetX'"),
        (["condense", "--dataset", "digits", "--model", "ConvNetD4"], "ConvNetD4 cannot take 8x8 images"),
        (["condense", "--dataset", "digits", "--strategy", "crop_blur"], "unknown augmentation op 'blur'"),
        (["condense", "--dataset", "digits", "--iterations", "-3"], "--iterations must be"),
        (["condense", "--dataset", "digits", "--device", "tpu"], "unknown --device 'tpu'"),
        (["condense", "--out", str(tmp_path / "x"), "--resume"], "no checkpoint"),
        (["condense", "--ipc", "500"], "smallest class of digits"),  # digits by default
        (["evaluate", str(tmp_path / "missing.pt")], "missing.pt not found"),
        (["evaluate"], "needs a SYNSET.pt"),
        (["evaluate", "--baseline", "random", "--dataset", "digits"], "needs --ipc"),
        (["evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1", "--model", "Foo"],
         "unknown model 'Foo'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["condense", "--dataset", "digits", "--device", "cuda"], "no CUDA device"))
    for argv, msg in cases:
        line = error_of(capsys, *argv, *([] if argv[0] == "evaluate" and len(argv) == 1 else FAST))
        assert msg in line, (argv, line)


def test_bad_synset_files_are_named(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    line = error_of(capsys, "evaluate", str(junk), *FAST)
    assert str(junk) in line and "not a fastdm or reference synset" in line
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    line = error_of(capsys, "evaluate", str(other), *FAST)
    assert str(other) in line and "not a fastdm or reference synset" in line
    # a reference result file records no dataset: the message says to pass --dataset
    ref = tmp_path / "res_DM_MNIST_ConvNet_1ipc.pt"
    torch.save({"data": [[torch.randn(10, 1, 28, 28), torch.arange(10)]], "accs_all_exps": {}}, ref)
    assert "pass --dataset" in error_of(capsys, "evaluate", str(ref), *FAST)
    # the wrong dataset for the images' shape
    line = error_of(capsys, "evaluate", str(ref), "--dataset", "digits", *FAST)
    assert "(1, 28, 28)" in line and "digits" in line


def test_reference_synset_evaluates(tmp_path, capsys):
    ref = tmp_path / "res.pt"
    import numpy as np
    torch.save({"data": [[torch.randn(10, 1, 8, 8), torch.arange(10)]],
                "accs_all_exps": {"ConvNet": [np.float64(0.5)]}}, ref)
    code, stdout, _ = run_cli(capsys, "evaluate", str(ref), "--dataset", "digits", "--models", "1",
                              "--epochs", "1", *FAST)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["ipc"] == 1


def test_existing_run_is_protected(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli(capsys, "condense", "--dataset", "digits", "--iterations", "1", "--out", out, *FAST)[0] == 0
    assert "already holds a finished run" in error_of(capsys, "condense", "--dataset", "digits", "--out",
                                                      out, *FAST)
    assert "--keep-checkpoint" in error_of(capsys, "condense", "--out", out, "--resume", *FAST)
    assert run_cli(capsys, "condense", "--dataset", "digits", "--iterations", "1", "--out", out,
                   "--overwrite", "--keep-checkpoint", *FAST)[0] == 0
    assert "already holds a run (a checkpoint)" in error_of(capsys, "condense", "--dataset", "digits",
                                                            "--out", out, *FAST)
    line = error_of(capsys, "condense", "--out", out, "--resume", "--seed", "5", *FAST)
    assert "settings differ" in line and "seed: 0 -> 5" in line


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info")
    info = json.loads(out)
    assert code == 0 and info["torch"] == torch.__version__ and "triton" in info["backends"]


def _subprocess(*argv, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "fastdm", *argv], cwd=kw.pop("cwd", ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # a subprocess CLI run
def test_no_traceback_as_a_separate_process(tmp_path):
    p = _subprocess("condense", "--dataset", "mnist", "--data-root", str(tmp_path / "absent"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fastdm: error: --data-root")


@pytest.mark.slow  # subprocess CLI runs
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    out = str(tmp_path / "int")
    p = _subprocess("condense", "--dataset", "digits", "--ipc", "1", "--batch-real", "16",
                    "--iterations", "100000", "--checkpoint-every", "0", "--out", out, "--no-progress")
    deadline = time.time() + 120
    # wait until iterations are running: OUT is created just before the loop (start-up takes
    # seconds, more on a loaded machine), then give it a moment inside the loop
    while not os.path.isdir(out) and p.poll() is None and time.time() < deadline - 60:
        time.sleep(0.2)
    time.sleep(2)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=max(5, deadline - time.time()))
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    done = ck["iteration"]
    assert done >= 1 and len(ck["losses"]) == done
    p = _subprocess("condense", "--out", out, "--resume", "--iterations", str(done + 2), "--no-progress")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert torch.load(os.path.join(out, "synset.pt"), weights_only=True)["iterations"] == done + 2


def test_argument_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["condense", "--dataset", "digits", "--ipc", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("fastdm: error: argument --ipc: invalid int value: 'x'")
    with pytest.raises(SystemExit):
        main(["condense", "--init", "zeros"])
    assert capsys.readouterr().err.startswith("fastdm: error: argument --init")


def test_more_bad_inputs_are_named(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    empty = tmp_path / "empty.pt"
    torch.save({"data": [[torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)]]}, empty)
    cases = [
        (["condense", "--dataset", "digits", "--out", str(a_file)], "is a file, not a folder"),
        (["condense", "--dataset", "digits", "--out", str(a_file / "sub")], "cannot create --out"),
        (["condense", "--dataset", "digits", "--device", "cudafoo"], "unknown --device 'cudafoo'"),
        (["condense", "--dataset", "digits", "--device", "cuda:x"], "unknown --device 'cuda:x'"),
        (["condense", "--dataset", "imagefolder", "--data-root", str(tmp_path), "--image-size", "0"],
         "--image-size must be an integer >= 1"),
        (["evaluate", str(empty), "--dataset", "digits"], "holds no images"),
        (["evaluate", "--baseline", "random", "--dataset", "digits", "--ipc", "1", "--batch-train", "0"],
         "--batch-train must be >= 1"),
    ]
    for argv, msg in cases:
        line = error_of(capsys, *argv, *FAST)
        assert msg in line, (argv, line)
