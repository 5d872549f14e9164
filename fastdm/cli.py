"""The `fastdm` command: condense, evaluate, prepare, info.

Bad input ends in one line on stderr ("fastdm: error: ...", naming the problem and the fix)
and exit status 2, never a traceback. `evaluate` prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import FastDMError

log = logging.getLogger("fastdm")


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--dataset", required=required,
                   help="digits (embedded default), mnist, fashionmnist, svhn, cifar10, cifar100, "
                        "tinyimagenet, imagefolder, store (a folder made by fastdm prepare)")
    p.add_argument("--data-root", help="folder holding the dataset (not needed for digits; the "
                                       "store folder for --dataset store)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download the dataset into --data-root")
    p.add_argument("--image-size", type=int, help="resize folder datasets to this size (default 64)")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{text}'") from None


_CLI_TYPES = {int: int, float: float, str: str, list: _floats}


def _add_condense_args(c: argparse.ArgumentParser) -> None:
    """The condense flags, one per setting (fastdm.config.SETTINGS), grouped as declared."""
    from .config import SETTINGS
    from .settings import GROUPS

    from .augment.params import OPS
    from .models import MODELS

    groups = {name: c.add_argument_group(title) for name, title in GROUPS.items()}
    listing = {"model": "; one of " + ", ".join(MODELS),
               "strategy": " (ops: " + ", ".join(OPS) + ")"}
    for s in SETTINGS:
        kw = {"help": f"{s.help}{listing.get(s.name, '')} (default: {s.default_text()})"}
        if s.objective:
            kw["help"] = f"{s.help}; --objective {s.objective} only (default: {s.default_text()})"
        if s.type is bool:
            kw.update(action="store_const", const=True)
        else:
            kw["type"] = _CLI_TYPES[s.type]
            if s.choices:
                kw["choices"] = list(s.choices)
            if s.type is list:
                kw["metavar"] = "X1,X2,..."
        groups[s.group].add_argument(s.flag, dest=s.name, **kw)
    run = groups["output"]
    run.add_argument("--out", help="output folder (default runs/DATASET_ipcN)")
    run.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", metavar="DIR",
                     help="write TensorBoard's live loss, speed and image grids to DIR")
    run.add_argument("--dry-run", action="store_true",
                     help="resolve the run plan (device, backends, chunk, memory, ...) and print it "
                          "as JSON without condensing or writing anything")
    groups["method"].add_argument("--mmd", choices=["linear", "gaussian"],
                                  help="deprecated: --objective dm (linear) or m3d (gaussian)")


class _Parser(argparse.ArgumentParser):
    """Argument errors in the same one-line form as every other error."""

    def error(self, message):
        self.exit(2, f"fastdm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="fastdm", description="Dataset condensation by Distribution Matching.")
    parser.add_argument("--version", action="version", version=f"fastdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{condense,evaluate,pretrain,reproduce,prepare,info}",
                                parser_class=_Parser)

    c = sub.add_parser("condense", help="learn a synthetic set (writes OUT/synset.pt, grid.png, "
                                        "loss.png, metrics.json)")
    c.add_argument("--config", metavar="FILE",
                   help="settings from a JSON or YAML file (names as the flags, with _ for -), or "
                        "an earlier run's metrics.json (to repeat that run); flags given here win")
    _add_condense_args(c)

    e = sub.add_parser("evaluate", help="train models on a synthetic set (or a random real subset) "
                                        "and report test accuracy")
    e.add_argument("synset", nargs="?", help="a synset.pt from condense, or a reference res_DM_*.pt")
    e.add_argument("--config", metavar="FILE",
                   help="settings from a JSON or YAML file, or an earlier eval.json (to repeat that "
                        "evaluation); flags given here win")
    data = e.add_argument_group("data")
    data.add_argument("--baseline", choices=["random"], help="evaluate random real subsets instead")
    _add_data_args(data)
    data.add_argument("--ipc", type=int, help="images per class for --baseline random")
    data.add_argument("--exp", type=int, help="which experiment of a reference file (default: last)")
    from .models import MODELS
    from .protocols import ALIASES, PROTOCOLS
    tr = e.add_argument_group("protocol and training")
    tr.add_argument("--protocol", choices=[*PROTOCOLS, *ALIASES, "own"],
                    help="how the models are trained (default dm): "
                         + "; ".join(f"{p.name}: {p.summary}" for p in PROTOCOLS.values())
                         + "; idm, m3d: dm's; own: the synset's method's. --epochs, --batch-train, "
                           "--strategy override the protocol's")
    tr.add_argument("--model", help="model to train (default: the synset's, i.e. cross-architecture "
                                    "evaluation when given): " + ", ".join(MODELS))
    tr.add_argument("--models", type=int, help="models to train (default 5)")
    tr.add_argument("--epochs", type=int, help="training epochs (default: the protocol's; dm: "
                    "1000, on digits 300)")
    tr.add_argument("--batch-train", type=int, help="training batch size (default: the protocol's; "
                    "dm: 256)")
    from .augment.params import OPS
    tr.add_argument("--strategy", help=f"DSA ops joined by _ ({', '.join(OPS)}) or none (default: "
                    "the protocol's, else the synset's, else the dataset's)")
    tr.add_argument("--aug-mode", choices=["S", "M"], help="DSA mode for training: S one op per "
                    "image, M all (default: the protocol's, else the synset's, else S)")
    tr.add_argument("--seed", type=int, help="evaluation seed (default 0)")
    tr.add_argument("--compare-random", action="store_true", default=None,
                    help="also evaluate random real subsets of the same size, the same way")
    tr.add_argument("--teacher", metavar="PATH",
                    help="the soft protocol's teacher: a bank folder from fastdm pretrain (its first "
                         "member); default: trained once and cached beside the data "
                         "(DATA_ROOT/fastdm-teachers, or ~/.cache/fastdm/teachers where that folder "
                         "is not writable)")
    tr.add_argument("--teacher-epochs", type=int,
                    help="epochs of a teacher trained here (default 30)")
    tr.add_argument("--teacher-images-per-class", type=int,
                    help="train the teacher on this many real images per class (a quick teacher; "
                         "default all, which --rank's full-data accuracy assumes)")
    tr.add_argument("--rank", action="store_true", default=None,
                    help="also report DD-Ranking's scores: hard label recovery (HLR), improvement "
                         "over random (IOR) and the label-robust score (LRS)")
    out = e.add_argument_group("output and logging")
    out.add_argument("--plot", metavar="PNG",
                     help="the training curves' picture (default: eval_PROTOCOL.png beside the synset)")
    out.add_argument("--tensorboard", metavar="DIR",
                     help="write TensorBoard scalars (loss and accuracy per model) to DIR")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp = e.add_argument_group("speed and placement (the accuracy stays the same up to rounding)")
    sp.add_argument("--device", help="auto, cpu or cuda (default auto)")
    sp.add_argument("--together", dest="batched", action="store_const", const=True,
                    help="train the models together (one vmapped step for all; default on CUDA)")
    sp.add_argument("--one-at-a-time", dest="batched", action="store_const", const=False,
                    help="train the models one after another (default on the CPU, where it measured "
                         "faster; BatchNorm models always go one at a time)")
    sp.add_argument("--compile", choices=["auto", "on", "off"],
                    help="torch.compile the training step (one graph for all models). auto (default): "
                         "on CUDA, and on the CPU for images of 32 px or more")
    sp.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="the training forward's arithmetic: auto (default) = bf16 autocast on CUDA "
                         "GPUs with native bf16, fp32 elsewhere; testing is always fp32")
    sp.add_argument("--conv", choices=["auto", "winograd", "direct"],
                    help="the training step's and test pass's convolutions: auto (default) = "
                         "the native CPU kernels (Winograd, a fused first block for 1-4 channel images) for "
                         "ConvNets on the CPU, direct elsewhere")

    p = sub.add_parser("prepare", help="decode an image folder once into a uint8 store for "
                                       "--dataset store (parallel, resumable)")
    p.add_argument("--dataset", required=True, choices=["tinyimagenet", "imagefolder", "imagenet"],
                   help="source layout: tinyimagenet (the official tiny-imagenet-200 folder), "
                        "imagefolder or imagenet (train/<class>/*, val/<class>/*)")
    p.add_argument("--src", required=True, help="the source folder")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--image-size", type=int, default=64, help="side of the square images (default 64)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per CPU; 0: none)")
    p.add_argument("--max-bad-fraction", type=float, default=0.02,
                   help="fail when more than this fraction of a split cannot be decoded (default 0.02)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("pretrain", help="train a bank of networks on the real data for "
                                        "--embedders bank:PATH (DANCE, NCFM; resumable)")
    t.add_argument("--dataset", required=True, help="the dataset to train on (as condense's)")
    t.add_argument("--data-root", help="the folder holding the dataset")
    t.add_argument("--download", action="store_true", help="let torchvision download it")
    t.add_argument("--image-size", type=int, help="side of folder datasets' images")
    t.add_argument("--out", required=True, help="the bank's folder (bank.pt, bank.json)")
    t.add_argument("--model", help="the networks (default: the dataset's embedder)")
    t.add_argument("--models", type=int, default=20, help="members of the bank (default 20)")
    t.add_argument("--epochs", type=int, default=60, help="epochs per member (default 60)")
    t.add_argument("--batch-size", type=int, default=64, help="default 64 (DANCE; NCFM: 128)")
    t.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    t.add_argument("--images-per-class", type=int,
                   help="train on this many real images per class (a quick bank; default: all)")
    t.add_argument("--seed", type=int, default=0, help="default 0")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--together", dest="together", action="store_const", const=True,
                   help="train all members in one vmapped step (default on CUDA)")
    t.add_argument("--one-at-a-time", dest="together", action="store_const", const=False,
                   help="train the members one after another (default on the CPU)")
    t.add_argument("--overwrite", action="store_true", help="replace a bank already in --out")
    t.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard's training loss per epoch and test accuracies to DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("reproduce", help="run a paper's table cells (condense + evaluate, resumable "
                                         "cell by cell) and write the measured numbers beside the "
                                         "published ones (OUT/table.md, table.png)")
    r.add_argument("table", choices=["dm-paper"], help="dm-paper: DM (Zhao & Bilen, WACV 2023), Table 1")
    r.add_argument("--datasets", default="mnist",
                   help="comma-separated (default mnist; the paper: mnist, cifar10, cifar100, "
                        "tinyimagenet; others run with measured numbers only)")
    r.add_argument("--ipc", default="1,10,50", help="comma-separated images per class (default 1,10,50)")
    r.add_argument("--schedule", choices=["paper", "quick"], default="quick",
                   help="paper: 20000 iterations, batch_real 256, 5 models x 1000 epochs (a GPU "
                        "job); quick (default): 200 iterations, batch_real 64, 3 models x 300 epochs")
    r.add_argument("--iterations", type=int, help="override the schedule's iterations")
    r.add_argument("--batch-real", type=int, help="override the schedule's batch_real")
    r.add_argument("--models", type=int, help="override the schedule's models per evaluation")
    r.add_argument("--epochs", type=int, help="override the schedule's evaluation epochs")
    r.add_argument("--data-root", help="the folder holding the datasets")
    r.add_argument("--download", action="store_true", help="let torchvision download them")
    r.add_argument("--out", default="runs/reproduce", help="the cells' folder (default runs/reproduce)")
    r.add_argument("--seed", type=int, default=0, help="default 0")
    r.add_argument("--device", help="auto, cpu or cuda")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("info", help="versions, devices and usable backends")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="fastdm: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "condense":
            return cmd_condense(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "pretrain":
            return cmd_pretrain(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        return cmd_info()
    except FastDMError as err:
        print(f"fastdm: error: {_rank_prefix()}{err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _rank_prefix():
            raise
        # torchrun: name the failed rank in one line (the launcher then stops the others);
        # a rank whose collective broke did not fail itself: another rank did, or was killed
        from .distributed import lost_peer
        if lost_peer(err):
            print(f"fastdm: error: {_rank_prefix()}stopped: another rank failed or was killed "
                  f"(torchrun's summary names the first; this rank saw {type(err).__name__}: "
                  f"{str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
        else:
            print(f"fastdm: error: {_rank_prefix()}failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastdm: interrupted", file=sys.stderr)
        return 130


def _rank_prefix() -> str:
    from .distributed import launched
    if not launched():
        return ""
    return f"rank {os.environ.get('RANK', '0')} of {os.environ['WORLD_SIZE']}: "


def cmd_info() -> int:
    from .info import info
    print(json.dumps(info(), indent=2))
    return 0


# -- condense ----------------------------------------------------------------------------------
def _objective_alias(args, given: dict) -> None:
    """The deprecated --mmd, as --objective (with a warning)."""
    from .config import LEGACY_MMD
    if args.mmd is None:
        return
    new = LEGACY_MMD[args.mmd]
    log.warning("--mmd is deprecated: use --objective %s", new)
    if given.get("objective", new) != new:
        raise FastDMError(f"--mmd {args.mmd} and --objective {given['objective']} contradict each "
                          f"other; pass --objective alone")
    given["objective"] = new


def cmd_condense(args) -> int:
    from .checkpoint import saved_config
    from .condense_job import Interrupted, condense_dataset
    from .config import SETTING, SETTINGS, CondenseConfig

    given = {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name) is not None}
    _objective_alias(args, given)
    if args.config:  # the file's settings, under the flags given here
        from .config_file import condense_settings
        given = {**condense_settings(args.config), **given}
    if args.resume:
        if not args.out:
            raise FastDMError("--resume needs --out DIR, the folder of the run to continue")
        # unspecified options take the checkpoint's values; given ones must agree with it
        saved = {k: v for k, v in CondenseConfig.from_dict(saved_config(args.out)).to_dict().items()
                 if v is not None}
        objective = given.get("objective", saved.get("objective"))
        # another objective's settings: the objective's mismatch is the news, not theirs
        saved = {k: v for k, v in saved.items() if SETTING[k].objective in (None, objective)}
        given = {**saved, **given}
    if "dataset" not in given:
        given["dataset"] = SETTING["dataset"].default
        log.info("no --dataset: condensing the embedded %s dataset", given["dataset"])
    # checked here so that errors name the flags (a config built in Python names its fields)
    given = {k: SETTING[k].validate(v) for k, v in given.items()}
    try:
        res = condense_dataset(CondenseConfig(**given), args.out, args.resume, args.overwrite,
                               progress=not args.no_progress, dry_run=args.dry_run,
                               tensorboard=args.tensorboard)
    except Interrupted as stop:
        if stop.saved is None:
            print(f"fastdm: interrupted during iteration {stop.iteration + 1}, before any checkpoint "
                  f"was written; nothing to resume: rerun without --resume", file=sys.stderr)
        elif _rank_prefix():
            if os.environ.get("RANK", "0") == "0":
                print(f"fastdm: interrupted; checkpoint at iteration {stop.saved} in {stop.out}; "
                      f"continue with the same torchrun command with --resume", file=sys.stderr)
        else:
            print(f"fastdm: interrupted; checkpoint at iteration {stop.saved} in "
                  f"{stop.out}; continue with: fastdm condense --out {stop.out} --resume",
                  file=sys.stderr)
        return 130
    if args.dry_run:
        plan = res["plan"]
        print(f"run plan (nothing was condensed or written): {plan.objective} on {plan.device}, "
              f"{plan.num_classes} classes x ipc {plan.config.ipc}, chunk {plan.class_chunk}, "
              f"{plan.flops_per_iteration / 1e9:.1f} GFLOP/iteration, about "
              f"{plan.estimated_peak_bytes / 2**30:.2f} GiB at peak")
        print(json.dumps(plan.to_dict()))
        return 0
    m, out = res["metrics"], res["out"]
    if m is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    per_it = m["timings"]["per_iteration_s"]
    print(f"wrote {out}/synset.pt, grid.png, loss.png, metrics.json ({m['iterations']} iterations"
          + (f", {per_it:.3f} s/iteration)" if per_it else ")"))
    cfg = m["config"]
    print(f"next: fastdm evaluate {os.path.join(out, 'synset.pt')} --compare-random")
    print(json.dumps({"out": out, "synset": os.path.join(out, "synset.pt"), "dataset": cfg["dataset"],
                      "ipc": cfg["ipc"], "model": cfg["model"], "iterations": m["iterations"],
                      "per_iteration_s": per_it, "final_loss": m["final_loss"]}))
    return 0


# -- reproduce ---------------------------------------------------------------------------------
def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise FastDMError(f"{flag} takes integers separated by commas, got '{text}'") from None


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    datasets = [d.strip().lower() for d in args.datasets.split(",") if d.strip()]
    try:
        res = reproduce(args.table, args.data_root, datasets, _ints(args.ipc, "--ipc"),
                        args.schedule, args.out, bool(args.download), args.device, args.seed,
                        progress=not args.no_progress,
                        overrides={"iterations": args.iterations, "batch_real": args.batch_real,
                                   "models": args.models, "epochs": args.epochs})
    except KeyboardInterrupt:
        print(f"fastdm: interrupted; finished cells (and the running cell's checkpoint) are kept in "
              f"{args.out}: rerun the same command to continue", file=sys.stderr)
        return 130
    print(res["markdown"])
    print(f"wrote {res['table']} and table.png")
    return 0


# -- prepare -----------------------------------------------------------------------------------
def cmd_pretrain(args) -> int:
    from .pretrain import PretrainConfig, pretrain
    cfg = PretrainConfig(dataset=args.dataset, data_root=args.data_root, download=args.download,
                         image_size=args.image_size, model=args.model, models=args.models,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         images_per_class=args.images_per_class, seed=args.seed,
                         device=args.device, together=args.together)
    info = pretrain(cfg, args.out, progress=not args.no_progress, overwrite=args.overwrite,
                    tensorboard=args.tensorboard)
    print(f"wrote {args.out}/bank.pt and bank.json: {info['members']} x {info['model']}, test "
          f"accuracy {100 * info['accuracy_mean']:.2f} % (mean), {info['train_seconds']:.0f} s; "
          f"use it with: fastdm condense --dataset {info['dataset']} --embedders bank:{args.out}")
    return 0


def cmd_prepare(args) -> int:
    from .data.prepare import prepare_store

    if args.workers is not None and args.workers < 0:
        raise FastDMError(f"--workers must be >= 0, got {args.workers}")

    def on_term(signum, frame):  # kill/timeout/docker stop: stop like Ctrl-C (workers too)
        raise KeyboardInterrupt
    import signal
    signal.signal(signal.SIGTERM, on_term)
    try:
        index = prepare_store(args.dataset, args.src, args.out, args.image_size, args.workers,
                              args.max_bad_fraction, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"fastdm: interrupted; finished shards are kept in {os.path.abspath(args.out)}.partial: "
              f"rerun the same command to resume", file=sys.stderr)
        return 130
    print(json.dumps({"store": os.path.abspath(args.out), "classes": len(index["classes"]),
                      "image_size": index["image_size"],
                      **{f"{s}_images": m["images"] for s, m in index["splits"].items()},
                      "skipped": sum(len(m["skipped"]) for m in index["splits"].values())}))
    return 0


# -- evaluate ----------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    import inspect

    from .evaluate_job import evaluate_synset

    known = [k for k in inspect.signature(evaluate_synset).parameters if k != "progress"]
    opts = {k: getattr(args, k) for k in known if getattr(args, k, None) is not None}
    opts["synset"] = args.synset
    if args.config:
        from .config_file import evaluate_settings
        opts = {**evaluate_settings(args.config, known), **{k: v for k, v in opts.items() if v is not None}}
    opts.setdefault("compile", "auto")
    opts.setdefault("precision", "auto")
    summary = evaluate_synset(**opts, progress=not args.no_progress)
    args.synset = opts.get("synset")
    for kind, res in (("synset", summary if summary["kind"] == "synset" else None),
                      ("random", summary.get("random") or (summary if summary["kind"] == "random" else None))):
        if res is not None:
            what = f"synthetic set {args.synset}" if kind == "synset" else f"random real subset, ipc {summary['ipc']}"
            print(f"{what}: {summary['model']} test accuracy {100 * res['acc_mean']:.2f} "
                  f"+- {100 * res['acc_std']:.2f} % over {summary['models']} models "
                  f"(protocol {summary['protocol']})"
                  + (f"; best of its tests {100 * res['acc_best_mean']:.2f} %" if "acc_best_mean" in res else ""))
    if "rank" in summary:
        r = summary["rank"]
        print(f"DD-Ranking: HLR {100 * r['hlr']:.2f} (full data {100 * r['full_acc']:.2f} - synset, "
              f"hard labels {100 * r['syn_hard_acc']:.2f}; lower is better), IOR {100 * r['ior']:.2f} "
              f"(synset {100 * r['syn_soft_acc']:.2f} - random {100 * r['rnd_soft_acc']:.2f}, soft "
              f"labels; higher is better), LRS {100 * r['lrs']:.2f}")
    print(json.dumps(summary))
    return 0
