"""``fastdm evaluate``: a synset file (or random real subsets) evaluated by a protocol, with the
teacher the soft protocol needs, the DD-Ranking scores (``rank``), a picture of the training
curves and TensorBoard scalars. fastdm.evaluation trains and tests; this module puts a job in order."""
from __future__ import annotations

import logging
import os

from .board import open_board
from .config import QUICK_EVAL
from .data import load_dataset
from .devices import resolve_device
from .errors import FastDMError
from .evaluation import EvalConfig, check_synset_shape, evaluate_images
from .io import load_synset
from .protocols import get_protocol

log = logging.getLogger("fastdm")

# the protocol a method's own code evaluates with (--protocol own)
OWN_PROTOCOL = {"dm": "dm", "idm": "dm", "m3d": "dm", "datadam": "datadam", "dance": "dance",
                "ncfm": "ncfm"}


def evaluate_synset(synset: str | None = None, *, baseline: str | None = None, dataset: str | None = None,
                    data_root: str | None = None, download: bool = False, image_size: int | None = None,
                    ipc: int | None = None, model: str | None = None, models: int | None = None,
                    epochs: int | None = None, batch_train: int | None = None, strategy: str | None = None,
                    seed: int | None = None, device: str | None = None, exp: int | None = None,
                    compare_random: bool = False, progress: bool = True, batched: bool | None = None,
                    compile: str = "auto", precision: str = "auto", aug_mode: str | None = None,
                    protocol: str | None = None, teacher: str | None = None,
                    teacher_epochs: int | None = None, teacher_images_per_class: int | None = None,
                    rank: bool = False, tensorboard: str | None = None, plot: str | None = None,
                    conv: str = "auto") -> dict:
    """Evaluate a synset file (or, with baseline='random', random real subsets) by ``protocol``
    (default dm; 'own': the synset's method's). ``rank``: also the DD-Ranking scores (hard and
    soft protocols on the synset and on random subsets, and the teacher's full-data accuracy).
    Returns the summary the CLI prints as JSON."""
    if synset and baseline:
        raise FastDMError("pass either a SYNSET.pt or --baseline random, not both")
    if not synset and not baseline:
        raise FastDMError("evaluate needs a SYNSET.pt (from fastdm condense) or --baseline random "
                          "--dataset NAME --ipc N")
    if rank and not synset:
        raise FastDMError("--rank scores a synthetic set: pass a SYNSET.pt")
    syn, saved = None, {}
    if synset:
        syn = load_synset(synset, exp)
        saved = syn["config"]
        if syn["kind"] == "reference" and not dataset:
            raise FastDMError(f"{synset} is a reference synset, which does not record its dataset; "
                              f"pass --dataset NAME (and --data-root DIR)")
    if protocol == "own":
        protocol = OWN_PROTOCOL.get(saved.get("method") or "dm", "dm")
    proto = get_protocol(protocol)
    dataset = dataset or saved.get("dataset")
    if not dataset:
        raise FastDMError("--baseline random needs --dataset NAME")
    if not syn:
        if ipc is None:
            raise FastDMError("--baseline random needs --ipc N (images per class)")
        if ipc < 1:
            raise FastDMError(f"--ipc must be >= 1, got {ipc}")
    for name, v in (("teacher-epochs", teacher_epochs), ("teacher-images-per-class", teacher_images_per_class)):
        if v is not None and v < 1:
            raise FastDMError(f"--{name} must be >= 1, got {v}")
    if plot is not None and os.path.isdir(plot):
        raise FastDMError(f"--plot {plot} is a folder; give a file name (e.g. {os.path.join(plot, 'eval.png')})")
    data_root = data_root if data_root is not None else saved.get("data_root")
    data = load_dataset(dataset, data_root, download, image_size or saved.get("image_size"),
                        progress=progress)

    def config(name: str) -> EvalConfig:
        return protocol_config(name, data, saved, model=model, models=models, epochs=epochs,
                               batch_train=batch_train, strategy=strategy, aug_mode=aug_mode,
                               seed=seed, batched=batched, compile=compile, precision=precision,
                               conv=conv)

    cfg = config(proto.name)
    dev = resolve_device(device)
    board = open_board(tensorboard)
    teacher_net, teacher_info = None, None

    def need_teacher(c: EvalConfig):
        nonlocal teacher_net, teacher_info
        if teacher_net is None:
            from .teacher import TEACHER_EPOCHS, get_teacher
            teacher_net, teacher_info = get_teacher(
                data, data_root, c.model, dev, teacher, teacher_epochs or TEACHER_EPOCHS,
                teacher_images_per_class, progress=progress)
        return teacher_net

    def run(c: EvalConfig, random_ipc: int | None = None) -> dict:
        kind = "synset" if random_ipc is None else "random"
        what = "synset" if random_ipc is None else f"random subsets ipc {random_ipc}"
        return evaluate_images(None if random_ipc else syn["images"], None if random_ipc else syn["labels"],
                               data, c, dev, progress, desc=f"{c.protocol}: {what} ({c.model})",
                               subset_ipc=random_ipc,
                               teacher=need_teacher(c) if c.labels == "soft" else None,
                               board=board, board_prefix=f"evaluate/{c.protocol}/{kind}")

    results, trained_ipc = {}, None
    try:
        if syn is not None:
            trained_ipc = check_synset_shape(syn["images"], syn["labels"], data, synset)
            # a partitioned set stores ipc images per class and trains on ipc x factor^2: random
            # real subsets get the storage budget
            ipc = max(1, trained_ipc // int(saved.get("factor") or 1) ** 2)
            results["synset"] = run(cfg)
        if baseline or compare_random:
            results["random"] = run(cfg, ipc)
        ranking = None
        if rank:
            ranking = _rank(cfg, config, run, results, need_teacher, lambda: teacher_info, ipc)
        if teacher is not None and teacher_net is None:
            log.warning("--teacher is used by the soft protocol only; the %s protocol did not use it",
                        cfg.protocol)
    finally:
        if board is not None:
            board.close()
    main = results.get("synset", results.get("random"))
    summary = {"dataset": data.name, "ipc": ipc, "trained_per_class": trained_ipc or ipc,
               "model": cfg.model, "protocol": cfg.protocol,
               "kind": "synset" if syn is not None else "random",
               "acc_mean": main["acc_mean"], "acc_std": main["acc_std"], "accs": main["accs"],
               "models": cfg.models, "epochs": cfg.epochs, "seed": cfg.seed, "device": str(dev),
               "seconds": main["seconds"], "trained_together": main["trained_together"],
               "compiled": main["compiled"], "precision": main["precision"],
               "test_conv": main["test_conv"],
               "recipe": {k: v for k, v in cfg.to_dict().items() if k not in ("model", "models", "seed")}}
    for key in ("acc_best_mean", "acc_best_std", "accs_best"):
        if key in main:
            summary[key] = main[key]
    if teacher_info is not None:
        summary["teacher"] = {k: teacher_info.get(k) for k in ("path", "model", "accuracies", "config")}
    if syn is not None:
        summary["synset"] = synset
        if "random" in results:
            summary["random"] = _strip(results["random"])
    if ranking is not None:
        summary["rank"] = ranking
    folder = os.path.dirname(os.path.abspath(synset)) if synset else None
    if folder and not os.access(folder, os.W_OK):
        folder = None  # a read-only set's folder: no files beside it
    if folder:  # the record beside the set (the last evaluation)
        from .io import atomic_json_dump
        try:
            atomic_json_dump(summary, os.path.join(folder, "eval.json"))
            summary["record"] = os.path.join(folder, "eval.json")
        except FastDMError as e:
            log.warning("no eval.json: %s", e)
    if plot is None and folder:
        plot = os.path.join(folder, f"eval_{cfg.protocol}.png")
    if plot:
        from .report import save_figure, training_figure
        try:  # a picture that cannot be written costs the picture, not the evaluation
            save_figure(training_figure(main["curves"], f"{data.name}: {summary['kind']}, {cfg.model}, "
                                                        f"protocol {cfg.protocol}"), plot)
            summary["plot"] = plot
        except FastDMError as e:
            log.warning("no training-curve picture: %s", e)
    return summary


def protocol_config(name: str, data, saved: dict, *, model=None, models=None, epochs=None,
                    batch_train=None, strategy=None, aug_mode=None, seed=None, batched=None,
                    compile: str = "auto", precision: str = "auto", conv: str = "auto") -> EvalConfig:
    """The protocol's EvalConfig for ``data`` and a set made with ``saved`` (its config; {} for
    none), the given settings over it, checked. Defaults: the set's model, the protocol's
    augmentation else the set's, the dataset's short schedule (dm only)."""
    p = get_protocol(name)
    quick = QUICK_EVAL.get(data.name, {})
    short = quick if p.name == "dm" else {}  # a dataset's short schedule is dm's
    cfg = EvalConfig.for_protocol(
        p.name, model=model or saved.get("model") or data.default_model,
        models=models if models is not None else quick.get("models", 5),
        epochs=epochs if epochs is not None else short.get("epochs", p.epochs),
        batch_train=batch_train,
        # the protocol's augmentation, else one DSA setting for condensing and evaluating
        strategy=strategy if strategy is not None else (
            p.strategy or saved.get("strategy", data.default_strategy)),
        aug_mode=aug_mode or p.aug_mode or saved.get("aug_mode") or "S",
        seed=seed if seed is not None else 0, batched=batched, compile=compile,
        precision=precision, conv=conv)
    cfg.check()
    return cfg


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "curves"}


def _rank(cfg, config, run, results, need_teacher, teacher_info, ipc) -> dict:
    """DD-Ranking's scores of the synset (fastdm.ranking): its hard-label and soft-label
    accuracies, random subsets' under the same soft protocol, the teacher's full-data accuracy."""
    from .ranking import scores
    hard = cfg if cfg.labels == "hard" else config("dm")
    soft = cfg if cfg.labels == "soft" else config("soft")
    syn_hard = results["synset"] if hard is cfg else run(hard)
    syn_soft = results["synset"] if soft is cfg else run(soft)
    rnd_soft = results["random"] if soft is cfg and "random" in results else run(soft, ipc)
    need_teacher(soft)
    info = teacher_info()
    if info["config"].get("images_per_class") is not None:
        log.warning("the teacher was trained on %d images per class, not the full training set: "
                    "HLR's full-data accuracy is that teacher's", info["config"]["images_per_class"])
    full = float(info["accuracies"][0])
    out = scores(full_acc=full, syn_hard_acc=syn_hard["acc_mean"], syn_soft_acc=syn_soft["acc_mean"],
                 rnd_soft_acc=rnd_soft["acc_mean"])
    out["protocols"] = {"hard": hard.protocol, "soft": soft.protocol}
    out["evaluations"] = {"synset_hard": _strip(syn_hard), "synset_soft": _strip(syn_soft),
                          "random_soft": _strip(rnd_soft)}
    return out
