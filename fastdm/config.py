"""The condensation config, derived from the settings table (fastdm.settings) and the
objectives' own settings, and its resolution against a dataset (the defaults that depend on
it, and every check). ``python -m fastdm.config`` prints the settings table (docs/settings.md).
"""
from __future__ import annotations

import dataclasses
import os

import torch

from . import objectives
from .errors import FastDMError
from .methods import PRESET_KEYS, preset
from .settings import CONDENSE, Setting, by_name, markdown_table

# The embedded default dataset runs a short schedule so that `make run` finishes in about a
# minute on 2 CPU cores; pass --iterations to run longer.
QUICK_SCHEDULES = {"digits": {"iterations": 400, "batch_real": 64, "ipc": 1}}
# ... and its evaluation trains fewer epochs (the set is tiny; 300 epochs converge).
QUICK_EVAL = {"digits": {"models": 5, "epochs": 300}}


def _objective(name):
    return objectives.get(name).name  # the registry's, whenever registered


def condense_settings() -> tuple[Setting, ...]:
    """Every condensation setting: the common ones, then each built-in objective's."""
    names = ", ".join(objectives.OBJECTIVES)
    common = tuple(dataclasses.replace(s, check=_objective, help=f"{s.help}: {names}")
                   if s.name == "objective" else s for s in CONDENSE)
    return common + tuple(s for cls in objectives.OBJECTIVES.values() for s in cls.settings)


SETTINGS = condense_settings()
SETTING = by_name(SETTINGS)
# the old --mmd values, read from checkpoints and metrics written before objectives
LEGACY_MMD = {"linear": "dm", "gaussian": "m3d"}
# what records written before methods and partitioning ran with (keys they lack)
LEGACY_VALUES = {"method": "dm", "factor": 1, "optimizer": "sgd", "weight_decay": 0.0,
                 "step": "iteration", "clamp": False}


def _to_dict(self) -> dict:
    return dataclasses.asdict(self)


@classmethod
def _from_dict(cls, d: dict) -> "CondenseConfig":
    """A config from a dict (a checkpoint's, metrics.json's); unknown keys are ignored and the
    old ``mmd`` key becomes ``objective``, its settings kept only for the objective owning them."""
    d = dict(d)
    if "mmd" in d and "objective" not in d:
        d["objective"] = LEGACY_MMD.get(d.pop("mmd"), "dm")
    if "method" not in d:  # written before methods: what it ran with
        for k, v in LEGACY_VALUES.items():
            d.setdefault(k, v)
    owner = d.get("objective", "dm")
    return cls(**{k: v for k, v in d.items()
                  if k in SETTING and SETTING[k].objective in (None, owner)})


CondenseConfig = dataclasses.make_dataclass(
    "CondenseConfig", [(s.name, s.type | None if s.default is None else s.type,
                        dataclasses.field(default=s.default)) for s in SETTINGS],
    namespace={"to_dict": _to_dict, "from_dict": _from_dict,
               "__doc__": "Settings of a condensation run (docs/settings.md); None: resolved "
                          "from the dataset when the run plan is made (fastdm.plan)."},
    frozen=True)
CondenseConfig.__module__ = __name__


def resolve_config(config: CondenseConfig, dataset) -> CondenseConfig:
    """Every default that depends on the dataset filled in and every value checked."""
    quick = QUICK_SCHEDULES.get(dataset.name, {})
    v = config.to_dict()
    v["dataset"] = dataset.name
    if v["data_root"] is not None:  # so evaluate finds the data from any working directory
        v["data_root"] = os.path.abspath(v["data_root"])
    if v["ipc"] is None:
        v["ipc"] = quick.get("ipc", 10)
    v["method"] = SETTING["method"].validate(v["method"])
    row = preset(v["method"], dataset.name, v["ipc"], dataset.default_model)
    for key in PRESET_KEYS:  # explicit values win, then the dataset's schedule, then the method's
        if v[key] is None:
            v[key] = quick.get(key, row[key])
    objective = objectives.get(v["objective"])
    for s in SETTINGS:  # another objective's settings are mistakes, not silently unused
        if s.objective not in (None, objective.name) and v[s.name] is not None:
            raise FastDMError(f"{s.flag} applies to --objective {s.objective} only (this run's "
                              f"objective is {objective.name})")
    for s in SETTINGS:
        v[s.name] = s.validate(v[s.name])
    v["image_size"] = dataset.image_size[0]
    v["model"] = SETTING["model"].validate(v["model"])
    if v["strategy"] is None:
        v["strategy"] = dataset.default_strategy
    h, w = dataset.image_size
    if h % v["factor"] or w % v["factor"]:
        raise FastDMError(f"--factor {v['factor']} must divide the image size ({h}x{w}): each "
                          f"stored image is cut into factor x factor equal tiles")
    v = objective.resolve(v)
    smallest = int(dataset.train.counts.min())
    if smallest == 0:
        empty = [dataset.classes[i] for i in torch.nonzero(dataset.train.counts == 0).flatten().tolist()]
        raise FastDMError(f"class(es) {empty[:5]} of {dataset.name} have no training images; DM "
                          f"needs real images of every class")
    needed = v["ipc"] * v["factor"] ** 2  # every tile starts from its own real image
    if v["init"] == "real" and needed > smallest:
        worst = int(dataset.train.counts.argmin())
        if v["factor"] == 1:
            raise FastDMError(f"--ipc {v['ipc']} is larger than the smallest class of "
                              f"{dataset.name} (class {dataset.classes[worst]} has {smallest} "
                              f"training images); use --ipc {smallest} or less, or --init noise")
        raise FastDMError(f"--ipc {v['ipc']} x --factor {v['factor']}^2 = {needed} tiles, each "
                          f"initialised from its own real image, is larger than the smallest "
                          f"class of {dataset.name} (class {dataset.classes[worst]} has "
                          f"{smallest} training images); use a smaller --ipc or --factor, or "
                          f"--init noise")
    return CondenseConfig(**v)


if __name__ == "__main__":
    print("# Condensation settings\n\n`fastdm condense` flags and `fastdm.CondenseConfig` fields "
          "(the same names with `_` for `-`), generated by `python -m fastdm.config` from the "
          "settings table. Kinds: `result` shapes the synthetic set (a resumed run keeps it), "
          "`length` may be extended on resume, `speed` changes how it is computed, not what, "
          "`run` changes neither.\n")
    print(markdown_table(SETTINGS), end="")
