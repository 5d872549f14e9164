"""fastdm from Python: ``fastdm.condense_job`` and ``fastdm.evaluation`` on a dataset name, tensors
or a torchvision-style Dataset, returning tensors. They run the command line's jobs
(fastdm.condense_job.condense_dataset, fastdm.evaluation.evaluate_images): the same engine, the
same synthetic set for the same settings, and no files unless ``out`` is given."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

import torch

from .errors import FastDMError
from .settings import python_names


@dataclass
class CondenseResult:
    """What ``fastdm.condense_job`` returns. ``images``/``labels``: the set models train on
    (normalised with ``mean``/``std``, as synset.pt's; with factor > 1 the stored images
    decoded); ``stored``: the ipc images per class the run optimised; ``metrics``: the run's
    record (metrics.json's content); ``out``: its folder, when files were asked for."""
    images: torch.Tensor
    labels: torch.Tensor
    stored: torch.Tensor
    stored_labels: torch.Tensor
    classes: list
    mean: list
    std: list
    config: object
    metrics: dict
    out: str | None = None
    dataset: object = field(default=None, repr=False)  # the data it was condensed from
    synset: dict = field(default=None, repr=False)     # synset.pt's content

    def pixels(self) -> torch.Tensor:
        """``images`` as pixel values in [0, 1] (for pictures, or other training code)."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images * std + mean).clamp_(0, 1)

    def save(self, path: str) -> None:
        """Write the set as a synset.pt (``fastdm evaluate PATH`` and the reference read it)."""
        from .io import atomic_torch_save
        atomic_torch_save(self.synset, path)


def condense(data="digits", labels=None, *, test=None, num_classes: int | None = None,
             classes=None, mean=None, std=None, config=None, out: str | None = None,
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             tensorboard: str | None = None, **settings) -> CondenseResult:
    """Condense ``data`` into a synthetic set and return it as tensors.

    ``data``: a dataset name (``"digits"``, ``"mnist"`` with ``data_root=...``, ...), an
    ``(images, labels)`` pair (uint8, or floats in [0, 1]; N x C x H x W or N x H x W), an
    images tensor with ``labels``, or a Dataset of (image, label) items (tensors or PIL
    images). For your own data, ``test`` (the same forms) lets ``fastdm.evaluation`` test the
    result, ``classes`` names the classes and ``mean``/``std`` set the normalisation (default:
    the training images'). ``settings``: any ``fastdm.CondenseConfig`` field (``ipc=10``,
    ``iterations=1000``, ``method="idm"``, ...); ``config``: a CondenseConfig, a dict or a
    JSON/YAML file (a run's metrics.json too) under them. ``out``: a folder for the files
    and checkpoints of the command line (``resume``/``overwrite`` as its flags); without it
    nothing is written and an interrupted run is lost."""
    from .condense_job import condense_dataset
    from .config import SETTING, CondenseConfig

    given = _config_dict(config)
    bad = [k for k in settings if k not in SETTING]
    if bad:
        near = difflib.get_close_matches(bad[0], list(SETTING), n=1)
        raise FastDMError(f"'{bad[0]}' is not a condense setting"
                          + (f" (did you mean {near[0]}?)" if near else "")
                          + "; see help(fastdm.CondenseConfig)")
    given.update({k: v for k, v in settings.items() if v is not None})
    dataset = None
    if isinstance(data, str):
        if "dataset" in settings and settings["dataset"] != data:
            raise FastDMError(f"data names the dataset '{data}' and dataset='{settings['dataset']}'; "
                              f"pass one")
        if labels is not None or test is not None:
            raise FastDMError("labels and test go with tensors or a Dataset, not a dataset name")
        given["dataset"] = data
    else:
        from .data.tensors import NAME, dataset_from_data
        dataset = dataset_from_data(data, labels, test=test, num_classes=num_classes,
                                    classes=classes, mean=mean, std=std, progress=progress)
        given["dataset"] = NAME
        given.pop("data_root", None)
    cfg = CondenseConfig(**given)  # checked here: errors name the fields
    if out is not None:
        out = os.fspath(out)
    try:
        res = condense_dataset(cfg, out, resume, overwrite, progress=progress,
                               tensorboard=tensorboard, data=dataset, files=out is not None)
    except FastDMError as e:
        raise FastDMError(python_names(str(e))) from None
    syn = res["synset"]
    if syn is None:  # a rank other than 0 under torchrun: rank 0 holds the set
        return None
    return CondenseResult(images=syn["images"], labels=syn["labels"], stored=syn["stored"],
                          stored_labels=syn["stored_labels"], classes=syn["classes"],
                          mean=syn["mean"], std=syn["std"], config=res["plan"].config,
                          metrics=res["metrics"], out=res["out"], dataset=res["data"], synset=syn)


def _config_dict(config) -> dict:
    from .config import CondenseConfig
    if config is None:
        return {}
    if isinstance(config, CondenseConfig):
        return {k: v for k, v in config.to_dict().items() if v is not None}
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if v is not None}
    if isinstance(config, (str, os.PathLike)):
        from .config_file import condense_settings
        return condense_settings(os.fspath(config))
    raise FastDMError(f"config must be a CondenseConfig, a dict or a file path, got "
                      f"{type(config).__name__}")


@dataclass
class EvalResult:
    """What ``fastdm.evaluation`` returns: test accuracies in [0, 1], one per model."""
    accuracies: list
    mean: float
    std: float
    protocol: str
    model: str
    seconds: float
    curves: list = field(repr=False)   # per model: {"loss": [...], "acc": [(pass, acc), ...]}
    record: dict = field(repr=False)   # everything measured (as the command's eval.json)


def evaluate(images, labels=None, *, test=None, dataset: str | None = None,
             data_root: str | None = None, download: bool = False, mean=None, std=None,
             protocol: str = "dm", model: str | None = None, models: int = 5,
             epochs: int | None = None, batch_train: int | None = None,
             strategy: str | None = None, aug_mode: str | None = None, seed: int = 0,
             device: str | None = None, batched: bool | None = None, compile: str = "auto",
             precision: str = "auto", conv: str = "auto", teacher=None,
             progress: bool = True) -> EvalResult:
    """Train ``models`` networks on a synthetic set and test them.

    ``images``: a ``CondenseResult`` (its set and its data), a synset.pt path, or normalised
    images (as ``CondenseResult.images``) with ``labels``. The test set: the result's own
    data, else ``dataset`` (a name, with ``data_root``), else ``test`` = (images, labels) as
    for ``fastdm.condense_job``, normalised with ``mean``/``std``. ``protocol``: dm (the paper's),
    soft, datadam, dance, ncfm (docs/evaluation.md); its schedule unless ``epochs``,
    ``batch_train``, ``strategy`` or ``aug_mode`` say otherwise. ``teacher`` (soft protocol):
    a network, or a bank folder from ``fastdm pretrain``. Nothing is written."""
    from .devices import resolve_device
    from .evaluate_job import protocol_config
    from .evaluation import check_synset_shape, evaluate_images

    saved, data = {}, None
    if isinstance(images, CondenseResult):
        r = images
        images, labels, data, saved = r.images, r.labels, r.dataset, r.config.to_dict()
        mean = r.mean if mean is None else mean
        std = r.std if std is None else std
    elif isinstance(images, (str, os.PathLike)):
        from .io import load_synset
        syn = load_synset(os.fspath(images))
        images, labels, saved = syn["images"], syn["labels"], syn["config"]
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise FastDMError("images must be a CondenseResult, a synset.pt path or a float "
                          "N x C x H x W tensor (normalised, as CondenseResult.images)")
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
        raise FastDMError("labels must be a tensor with one class index per image")
    if test is not None:
        from .data.tensors import test_only
        if mean is None or std is None:
            raise FastDMError("with test data, give mean and std: the normalisation the images "
                              "were made with (a CondenseResult carries its own)")
        data = test_only(test, num_classes=int(labels.max()) + 1, mean=mean, std=std,
                         progress=progress)
    elif dataset is not None or (data is None and saved.get("dataset")):
        from .data import load_dataset
        name = dataset or saved["dataset"]
        data = load_dataset(name, data_root or saved.get("data_root"), download,
                            saved.get("image_size") if not dataset else None, progress=progress)
    if data is None:
        raise FastDMError("nothing to test on: pass test=(images, labels), or dataset=NAME")
    if len(data.test) == 0:
        raise FastDMError("the data has no test images: pass test=(images, labels) to condense "
                          "or to evaluate")
    check_synset_shape(images, labels.long(), data, "images")
    try:
        cfg = protocol_config(protocol, data, saved, model=model, models=models, epochs=epochs,
                              batch_train=batch_train, strategy=strategy, aug_mode=aug_mode,
                              seed=seed, batched=batched, compile=compile, precision=precision,
                              conv=conv)
    except FastDMError as e:
        raise FastDMError(python_names(str(e))) from None
    dev = resolve_device(device)
    net = None
    if cfg.labels == "soft":
        net = _teacher(teacher, data, data_root or saved.get("data_root"), cfg.model, dev, progress)
    res = evaluate_images(images, labels.long(), data, cfg, dev, progress,
                          desc=f"{cfg.protocol}: ({cfg.model})", teacher=net)
    return EvalResult(accuracies=res["accs"], mean=res["acc_mean"], std=res["acc_std"],
                      protocol=cfg.protocol, model=cfg.model, seconds=res["seconds"],
                      curves=res["curves"], record={**res, "recipe": cfg.to_dict()})


def _teacher(teacher, data, data_root, model, device, progress):
    if isinstance(teacher, torch.nn.Module):
        return teacher
    if teacher is None and len(data.train) == 0:
        raise FastDMError("the soft protocol needs a teacher: pass teacher= (a network or a bank "
                          "folder), or evaluate a CondenseResult, whose training data trains one")
    from .teacher import TEACHER_EPOCHS, get_teacher
    net, _ = get_teacher(data, data_root, model, device, teacher, TEACHER_EPOCHS, None,
                         progress=progress)
    return net
