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
from .settings import CONDENSE, Setting, by_name, markdown_table, python_names

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
# ... and records written before embedder sources (part 1 of the family)
SOURCE_VALUES = {"embedders": "random", "bank_members": 0, "calib_weight": 0.0, "ce_weight": 0.0,
                 "queue_interval": 30, "queue_steps": 10, "queue_meter_reset": 100,
                 "init_resize": "nearest", "lr_plateau": 0}
# ... and records written before NCFM's fixed real batches could be chosen
BATCH_VALUES = {"real_batches": "random"}


def _to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _post_init(self) -> None:
    """Every given value checked when the config is built; errors name the Python field
    (``ipc must be ...``), the command line checks its flags before building one."""
    for s in SETTINGS:
        value = getattr(self, s.name)
        if value is None:
            continue
        try:
            object.__setattr__(self, s.name, s.validate(value))
        except FastDMError as e:
            raise FastDMError(python_names(str(e))) from None


def _docstring() -> str:
    lines = ["Settings of a condensation run, checked when built (a bad value raises FastDMError "
             "naming the field). None: resolved from the dataset and the method when the run "
             "plan is made (fastdm.plan). The fields, as in docs/settings.md:", ""]
    for s in SETTINGS:
        owner = f" (objective {s.objective} only)" if s.objective else ""
        lines.append(python_names(f"{s.name} ({s.type.__name__}, default {s.default_text()}): "
                                  f"{s.help}{owner}."))
    return "\n".join(lines)


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
    if "embedders" not in d:  # written before embedder sources: random embedders
        for k, v in SOURCE_VALUES.items():
            d.setdefault(k, v)
        d.setdefault("image_space", "pixels" if d.get("optimizer") == "adamw" else "normalized")
    for k, v in BATCH_VALUES.items():
        d.setdefault(k, v)
    owner = d.get("objective", "dm")
    return cls(**{k: v for k, v in d.items()
                  if k in SETTING and SETTING[k].objective in (None, owner)})


CondenseConfig = dataclasses.make_dataclass(
    "CondenseConfig", [(s.name, s.type | None if s.default is None else s.type,
                        dataclasses.field(default=s.default)) for s in SETTINGS],
    namespace={"to_dict": _to_dict, "from_dict": _from_dict, "__post_init__": _post_init,
               "__doc__": _docstring()},
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
    row = preset(v["method"], dataset.name, v["ipc"], dataset.default_model, dataset.num_classes)
    explicit = {key for key in PRESET_KEYS if v[key] is not None}
    for key in PRESET_KEYS:  # explicit values win, then the dataset's schedule, then the method's
        if v[key] is None:
            v[key] = quick.get(key, row[key])
    # a method's source terms follow its source: --method ncfm --embedders random is part 1's
    # random-embedder NCFM, without the calibration that needs a bank
    kind = SETTING["embedders"].validate(v["embedders"]).partition(":")[0]
    for key, needs in (("calib_weight", "bank"), ("ce_weight", "queue")):
        if key not in explicit and kind != needs:
            v[key] = 0.0
    objective = objectives.get(v["objective"])
    for s in SETTINGS:  # another objective's settings are mistakes, not silently unused
        if s.objective not in (None, objective.name) and v[s.name] is not None:
            raise FastDMError(f"{s.flag} applies to --objective {s.objective} only (this run's "
                              f"objective is {objective.name})")
    for s in SETTINGS:
        v[s.name] = s.validate(v[s.name])
    if v["image_space"] is None:  # AdamW steps pixel values (NCFM's code), SGD normalised ones
        v["image_space"] = "pixels" if v["optimizer"] == "adamw" else "normalized"
    _check_source(v)
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
    if v["init"] != "noise" and needed > smallest:
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


def _check_source(v: dict) -> None:
    """The embedder source's requirements, checked before anything is built."""
    from .embedders import parse_source
    from .models import uses_batchnorm
    kind, path = parse_source(v["embedders"])
    if kind == "bank" and path is None:
        raise FastDMError(f"--method {v['method']} matches features of a pretrained bank: give "
                          f"--embedders bank:PATH (make one with 'fastdm pretrain --dataset "
                          f"{v['dataset']} --out PATH'), or --embedders random")
    if kind == "bank" and not os.path.isfile(os.path.join(path, "bank.pt")):
        raise FastDMError(f"--embedders bank:{path}: no bank there (PATH/bank.pt); make one with "
                          f"'fastdm pretrain --dataset {v['dataset']} --out {path}'")
    if kind == "queue" and uses_batchnorm(v["model"]):
        raise FastDMError("--embedders queue trains its networks in place, which BatchNorm's "
                          "running statistics do not allow here (IDM's code refuses BN models "
                          "too); use a model without BatchNorm")
    if v["calib_weight"] > 0 and kind != "bank":
        raise FastDMError(f"--calib-weight needs the trained networks of --embedders bank:PATH "
                          f"(this run's embedders: {v['embedders']}); use --calib-weight 0")
    if v["ce_weight"] > 0 and kind != "queue":
        raise FastDMError(f"--ce-weight weighs IDM's term by a queue network's accuracy: it needs "
                          f"--embedders queue (this run's: {v['embedders']}); use --ce-weight 0")


if __name__ == "__main__":
    print("# Condensation settings\n\n`fastdm condense` flags and `fastdm.CondenseConfig` fields "
          "(the same names with `_` for `-`), generated by `python -m fastdm.config` from the "
          "settings table. Kinds: `result` shapes the synthetic set (a resumed run keeps it), "
          "`length` may be extended on resume, `speed` changes how it is computed, not what, "
          "`run` changes neither.\n")
    print(markdown_table(SETTINGS), end="")
