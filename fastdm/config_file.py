"""``--config FILE`` (JSON or YAML) for condense and evaluate: a file of settings written by
hand, or a previous run's record (condense: metrics.json or a checkpoint's config; evaluate:
eval.json), so that a run can be repeated from what it wrote. Flags given on the command
line win over the file."""
from __future__ import annotations

import difflib
import json
import os

from .errors import FastDMError


def read_file(path: str) -> dict:
    """The mapping in ``path``: JSON, or YAML for .yaml/.yml files."""
    if not os.path.isfile(path):
        raise FastDMError(f"--config {path}: no such file")
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as e:
        raise FastDMError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise FastDMError("YAML configs need PyYAML: pip install pyyaml (or give a .json "
                              "file)") from None
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FastDMError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise FastDMError(f"--config {path} is not valid JSON ({e}); YAML files end in "
                              f".yaml or .yml") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FastDMError(f"--config {path} must hold a mapping of settings, got "
                          f"{type(value).__name__}")
    return value


def unknown(keys, known, path: str, what: str) -> None:
    """A one-line error for keys that are not settings, with the nearest name."""
    bad = [k for k in keys if k not in known]
    if not bad:
        return
    k = bad[0]
    near = difflib.get_close_matches(str(k), list(known), n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise FastDMError(f"{path}: '{k}' is not a {what} setting{hint}; the settings are the "
                      f"command's flags with _ for -")


def condense_settings(path: str) -> dict:
    """The condense settings in ``path`` (non-None values only). A record (metrics.json, with
    its ``config`` and ``plan``) gives its resolved config, read as a checkpoint's is."""
    from .config import SETTING, CondenseConfig
    d = read_file(path)
    if isinstance(d.get("config"), dict) and ("plan" in d or "loss_history" in d):
        d = CondenseConfig.from_dict(d["config"]).to_dict()
    else:
        unknown(d, SETTING, path, "condense")
    return {k: v for k, v in d.items() if v is not None}


def evaluate_settings(path: str, known) -> dict:
    """The evaluate options in ``path``: a hand-written mapping of ``known`` names, or an
    eval.json record (its protocol, model, schedule and augmentation; not its results)."""
    d = read_file(path)
    if "acc_mean" in d or "recipe" in d:  # a record of an earlier evaluation
        flat = {**{k: v for k, v in d.get("recipe", {}).items()},
                **{k: d.get(k) for k in ("protocol", "model", "models", "epochs", "seed", "device",
                                         "synset", "dataset")}}
        if d.get("kind") == "random":
            flat.update(baseline="random", ipc=d.get("ipc"))
        return {k: v for k, v in flat.items() if k in known and v is not None}
    unknown(d, known, path, "evaluate")
    return {k: v for k, v in d.items() if v is not None}
