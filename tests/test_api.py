"""fastdm from Python (fastdm.api): the same set as the command line for the same settings,
tensors and Datasets as data, no files unless asked, config objects that check themselves
with Python names, config files, and the library logger."""
import json
import logging
import os

import pytest
import torch

import fastdm
from fastdm.cli import main
from fastdm.data import load_dataset

QUICK = dict(ipc=1, iterations=6, seed=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cli_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["condense", "--dataset", "digits", "--ipc", "1", "--iterations", "6", "--seed", "0",
                 "--device", "cpu", "--no-progress", "--out", out]) == 0
    return out


def test_condense_by_name_equals_the_command_line(cli_set, tmp_path):
    r = fastdm.condense("digits", **QUICK)
    want = torch.load(os.path.join(cli_set, "synset.pt"), weights_only=False)
    assert torch.equal(r.images, want["images"]) and torch.equal(r.labels, want["labels"])
    assert r.out is None and r.metrics["iterations"] == 6 and r.config.dataset == "digits"
    assert os.listdir(tmp_path) == []  # nothing written
    px = r.pixels()
    assert px.min() >= 0 and px.max() <= 1 and px.shape == r.images.shape
    r.save(str(tmp_path / "s.pt"))
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=False)["images"], r.images)


def test_condense_tensors_uint8_float_and_dataset_agree(digits, cli_set):
    """The embedded digits as the caller's own data: the same images, the same set (the
    constants, the augmentation (digits are not flipped) and the real batch of the embedded
    set's quick schedule given)."""
    x, y = digits.train.images, digits.train.labels
    kw = dict(QUICK, mean=digits.mean, std=digits.std, strategy=digits.default_strategy,
              batch_real=64)
    a = fastdm.condense((x, y), num_classes=10, **kw)
    b = fastdm.condense(x.float() / 255, y, **kw)

    class Items(torch.utils.data.Dataset):  # a torchvision-style Dataset (ToTensor's floats)
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i].float() / 255, int(y[i])
    c = fastdm.condense(Items(), **kw)
    want = torch.load(os.path.join(cli_set, "synset.pt"), weights_only=False)["images"]
    for r in (a, b, c):
        assert r.config.dataset == "tensors"
        assert torch.equal(r.images, want)
    # computed constants are the training pixels' own
    d = fastdm.condense((x, y), ipc=1, iterations=0, progress=False)
    px = x.float() / 255
    assert d.mean[0] == pytest.approx(float(px.mean()), abs=1e-4)
    assert d.std[0] == pytest.approx(float(px.std()), abs=1e-4)


def test_condense_with_files_matches_and_keeps_or_removes_the_checkpoint(tmp_path, cli_set):
    out = tmp_path / "run"
    r = fastdm.condense("digits", out=str(out), **QUICK)
    assert sorted(os.listdir(out)) == ["grid.png", "loss.png", "metrics.json", "synset.pt"]
    assert r.out == str(out)
    want = torch.load(os.path.join(cli_set, "synset.pt"), weights_only=False)
    assert torch.equal(r.images, want["images"])
    with pytest.raises(fastdm.FastDMError, match="finished run"):
        fastdm.condense("digits", out=str(out), **QUICK)
    with pytest.raises(fastdm.FastDMError, match="keep_checkpoint"):
        fastdm.condense("digits", out=str(out), resume=True, **QUICK)
    kept = tmp_path / "kept"
    fastdm.condense("digits", out=str(kept), keep_checkpoint=True, **QUICK)
    assert "checkpoint.pt" in os.listdir(kept)
    longer = fastdm.condense("digits", out=str(kept), resume=True, **{**QUICK, "iterations": 8})
    assert longer.metrics["resumed_from"] == 6 and longer.metrics["iterations"] == 8


@pytest.mark.parametrize("kw, message", [
    (dict(ipc=0), "ipc must be an integer >= 1, got 0"),
    (dict(lr_img=-1.0), "lr_img must be positive"),
    (dict(batch_real=2.5), "batch_real must be an integer"),
    (dict(model="ConvNt"), "unknown model 'ConvNt'"),
    (dict(strategy="color_zoom"), "unknown augmentation op 'zoom'"),
    (dict(ipcs=3), "'ipcs' is not a condense setting \\(did you mean ipc\\?\\)"),
    (dict(momentum=1.5), "momentum must be in \\[0, 1\\)"),
])
def test_config_errors_name_python_fields(kw, message):
    with pytest.raises(fastdm.FastDMError, match=message) as err:
        fastdm.condense("digits", **kw)
    assert "--" not in str(err.value)
    known = {k: v for k, v in kw.items() if k != "ipcs"}
    if known:  # the config object checks itself when built
        with pytest.raises(fastdm.FastDMError, match=message):
            fastdm.CondenseConfig(**known)


def test_config_documents_its_fields():
    doc = fastdm.CondenseConfig.__doc__
    for name in ("ipc", "batch_real", "keep_checkpoint", "lr_img"):
        assert f"\n{name} (" in doc
    assert "--" not in doc.split("\n", 2)[2]  # Python names throughout


def test_bad_data_is_one_line_error(digits):
    x, y = digits.train.images, digits.train.labels
    cases = [((x.float() * 3, y), "pixel values in \\[0, 1\\]"),
             ((x.permute(0, 2, 3, 1).contiguous(), y), "channels-last"),
             ((x, y.float()), "class indices"),
             ((x, y + 20), "labels must lie in 0..9"),
             (42, "must be a dataset name")]
    for data, message in cases:
        kw = {"num_classes": 10} if isinstance(data, tuple) else {}
        with pytest.raises(fastdm.FastDMError, match=message):
            fastdm.condense(data, **kw, progress=False)
    with pytest.raises(fastdm.FastDMError, match="without labels"):
        fastdm.condense(x, progress=False)


def test_evaluate_in_memory(digits):
    x, y = digits.train.images, digits.train.labels
    r = fastdm.condense((x, y), test=(digits.test.images, digits.test.labels), ipc=1, iterations=2,
                        progress=False)
    e = fastdm.evaluate(r, models=1, epochs=3, progress=False)
    assert len(e.accuracies) == 1 and 0 <= e.mean <= 1 and e.protocol == "dm"
    # the same set by tensors against a named dataset's test split, and its normalisation
    e2 = fastdm.evaluate(r.images, r.labels, dataset="digits", models=1, epochs=3, progress=False)
    e3 = fastdm.evaluate(r.images, r.labels, test=(digits.test.images, digits.test.labels),
                         mean=r.mean, std=r.std, models=1, epochs=3, progress=False)
    assert e2.accuracies == e.accuracies == e3.accuracies
    with pytest.raises(fastdm.FastDMError, match="models must be an integer >= 1"):
        fastdm.evaluate(r, models=0)
    with pytest.raises(fastdm.FastDMError, match="give mean and std"):
        fastdm.evaluate(r.images, r.labels, test=(digits.test.images, digits.test.labels))
    bare = fastdm.condense((x, y), ipc=1, iterations=0, progress=False)
    with pytest.raises(fastdm.FastDMError, match="no test images"):
        fastdm.evaluate(bare, models=1, epochs=1, progress=False)


def test_config_file_json_yaml_and_a_run_record(tmp_path, cli_set):
    (tmp_path / "c.json").write_text(json.dumps({"dataset": "digits", "ipc": 1, "iterations": 6,
                                                 "seed": 0, "device": "cpu"}))
    (tmp_path / "c.yaml").write_text("dataset: digits\nipc: 1\niterations: 6\nseed: 0\ndevice: cpu\n")
    want = torch.load(os.path.join(cli_set, "synset.pt"), weights_only=False)["images"]
    for name in ("c.json", "c.yaml", os.path.join(cli_set, "metrics.json")):
        out = tmp_path / ("out-" + os.path.basename(name))
        assert main(["condense", "--config", str(tmp_path / name), "--no-progress",
                     "--out", str(out)]) == 0
        assert torch.equal(torch.load(out / "synset.pt", weights_only=False)["images"], want), name
    # the flags win over the file; the Python call takes the same file
    assert fastdm.condense(config=str(tmp_path / "c.yaml"), iterations=6, progress=False) \
        .metrics["iterations"] == 6
    (tmp_path / "bad.json").write_text(json.dumps({"ipcs": 2}))
    assert main(["condense", "--config", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(fastdm.FastDMError, match="must hold a mapping"):
        fastdm.condense(config=str(tmp_path / "list.json"))


def test_evaluate_config_repeats_an_eval_record(tmp_path, cli_set, capsys):
    synset = os.path.join(cli_set, "synset.pt")
    assert main(["evaluate", synset, "--models", "1", "--epochs", "2", "--seed", "3",
                 "--no-progress"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = os.path.join(cli_set, "eval.json")
    assert main(["evaluate", "--config", record, "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accs"] == first["accs"] and again["seed"] == 3 and again["epochs"] == 2
    (tmp_path / "e.yaml").write_text(f"synset: {synset}\nmodels: 1\nepochs: 1\nepoch: 3\n")
    assert main(["evaluate", "--config", str(tmp_path / "e.yaml")]) == 2
    assert "did you mean epochs" in capsys.readouterr().err


def test_library_logger_prints_until_the_application_configures_logging(capfd):
    log = logging.getLogger("fastdm")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # an application that configured nothing (pytest adds its own)
    try:
        log.info("hello from fastdm")
        assert "fastdm: hello from fastdm" in capfd.readouterr().err
        root.addHandler(logging.NullHandler())  # configured: its handlers decide
        log.info("quiet now")
        assert "quiet now" not in capfd.readouterr().err
    finally:
        root.handlers[:] = saved
