"""Settings declared once: the config's fields, the CLI's flags, the resume check and the docs
table all come from the table (fastdm.settings, the objectives' own settings)."""
import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import make_dataset, resolved
from fastdm.cli import build_parser, main
from fastdm.config import SETTINGS, CondenseConfig
from fastdm.errors import FastDMError
from fastdm.settings import CONDENSE, GROUPS, KINDS, Setting, markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _condense_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["condense"]


def test_the_config_has_exactly_the_settings():
    assert [f.name for f in dataclasses.fields(CondenseConfig)] == [s.name for s in SETTINGS]
    assert {s.name for s in CONDENSE} < {s.name for s in SETTINGS}  # + the objectives' own
    for s in SETTINGS:
        assert s.kind in KINDS and s.group in GROUPS, s
        assert getattr(CondenseConfig(), s.name) == s.default


def test_every_setting_is_one_flag_of_condense():
    actions = {a.dest: a for a in _condense_parser()._actions}
    for s in SETTINGS:
        a = actions[s.name]
        assert s.flag in a.option_strings, s.name
        assert a.default is None  # unset flags are told apart from given ones (resume)
        if s.choices:
            assert list(a.choices) == list(s.choices)
    args = _condense_parser().parse_args(["--batch-real", "7", "--lr-img", "0.5", "--download",
                                          "--objective", "m3d", "--bandwidths", "1,2"])
    assert (args.batch_real, args.lr_img, args.download, args.bandwidths) == (7, 0.5, True, [1.0, 2.0])


def test_dropped_aliases_are_gone():
    for flag in ("--no-compile", "--channels-last"):
        with pytest.raises(SystemExit):
            _condense_parser().parse_args([flag])


def test_the_docs_table_is_generated_from_the_settings():
    path = os.path.join(ROOT, "docs", "settings.md")
    generated = subprocess.run([sys.executable, "-m", "fastdm.config"], capture_output=True,
                               text=True, check=True, cwd=ROOT).stdout
    with open(path) as fh:
        assert fh.read() == generated, "docs/settings.md is stale: python -m fastdm.config > docs/settings.md"
    table = markdown_table(SETTINGS)
    for s in SETTINGS:
        assert f"`{s.flag}`" in table


def test_validation_messages_name_the_field_and_on_the_command_line_the_flag(capsys):
    data = make_dataset()
    for kw, msg in (({"ipc": 0}, "^ipc must be an integer >= 1, got 0"),
                    ({"ipc": 1.5}, "^ipc must be an integer"),
                    ({"momentum": 1.0}, r"^momentum must be in \[0, 1\)"),
                    ({"lr_img": -1}, "^lr_img must be positive"),
                    ({"init": "zeros"}, "^init must be one of real, first, noise, got 'zeros'"),
                    ({"download": "yes"}, "^download must be true or false"),
                    ({"seed": -1}, "^seed must be an integer >= 0"),
                    ({"model": "ResNet99"}, "unknown model")):
        with pytest.raises(FastDMError, match=msg):
            resolved(data, **kw)
    for argv, msg in ((["--ipc", "0"], "--ipc must be an integer >= 1, got 0"),
                      (["--lr-img", "-1"], "--lr-img must be positive"),
                      (["--momentum", "1"], r"--momentum must be in [0, 1)")):
        assert main(["condense", "--dataset", "digits", *argv]) == 2
        assert msg in capsys.readouterr().err


def test_a_setting_validates_and_normalises():
    s = Setting("x", float, 1.0, "a number", "method")
    assert s.validate(2) == 2.0 and isinstance(s.validate(2), float)
    with pytest.raises(FastDMError, match="--x must be a number"):
        s.validate("two")
    with pytest.raises(FastDMError, match="--x needs a value"):
        s.validate(None)
    lst = Setting("xs", list, None, "numbers", "method")
    assert lst.validate((1, 2)) == [1.0, 2.0] and lst.validate(None) is None


def test_resume_keeps_result_settings_and_allows_speed_ones(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["condense", "--dataset", "digits", "--iterations", "2", "--out", out, "--no-progress",
            "--checkpoint-every", "1", "--keep-checkpoint"]
    assert main(base) == 0
    result = [s for s in SETTINGS if s.kind == "result" and s.objective is None]
    assert {"ipc", "batch_real", "lr_img", "seed", "model", "strategy"} <= {s.name for s in result}
    # a result setting changed on resume: refused, naming it
    assert main(["condense", "--out", out, "--resume", "--iterations", "3", "--seed", "5",
                 "--no-progress"]) == 2
    assert "seed: 0 -> 5" in capsys.readouterr().err
    # a speed setting (and the length) may change
    assert main(["condense", "--out", out, "--resume", "--iterations", "3", "--class-chunk", "3",
                 "--no-progress"]) == 0
