"""``fastdm prepare``: image folders -> a uint8 store (fastdm.data.store), decoded in parallel
worker processes, resumable, and complete or absent.

Work goes in shards of SHARD source files (in store order: sorted by class, then as listed).
Each shard is decoded by one worker into OUT.partial/<split>-<shard>.npy plus a .json marker
written last (both under temporary names, then renamed), so an interrupted prepare keeps every
finished shard and a rerun of the same command decodes only the rest. Decoding is
deterministic, so the resumed store is byte-identical to an uninterrupted one. When all shards
are in, each split is assembled into <split>.npy, the manifest and index.json are written,
the shards are removed and OUT.partial is renamed to OUT: a store folder either is complete
or does not exist. Disk use peaks at about twice the store during assembly.

Decode + resize (fastdm.data.folders.decode_array): PIL, any mode converted to RGB (alpha
dropped), shorter side resized to the target with PIL's bicubic filter (antialiased: PIL
widens the filter by the shrink factor, so downscaling averages over the whole footprint,
which matters at 64 px from ~400 px originals), then the centre square cropped. Bicubic over
bilinear: sharper at the same cost; the crop keeps the aspect ratio (no distortion).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np

from ..errors import FastDMError
from ..io import atomic_json_dump
from .decode import decode_shard, worker_init
from .folders import imagefolder_files, tinyimagenet_files
from .store import INDEX, SPLITS, STORE_FORMAT, STORE_VERSION, is_store, read_index

log = logging.getLogger("fastdm")

SHARD = 256                 # source files per work unit: the granularity of resuming
MAX_BAD_FRACTION = 0.02     # more undecodable files than this in a split is an error
SOURCES = ("tinyimagenet", "imagefolder", "imagenet")
RESIZE = ("PIL convert('RGB') (alpha dropped; 16-bit integer images scaled to 8 bits first); shorter side to the target size with PIL bicubic "
          "(antialiased when shrinking); centre crop")


# -- the source listing ---------------------------------------------------------------------------
def list_source(dataset: str, src: str) -> tuple[dict, list[str]]:
    """({split: [(path, class)] in store order}, class names)."""
    if dataset not in SOURCES:
        raise FastDMError(f"prepare --dataset must be one of {', '.join(SOURCES)}, got '{dataset}'")
    if not os.path.isdir(src):
        raise FastDMError(f"--src {src} is not a folder")
    if dataset == "tinyimagenet":
        train, val, names = tinyimagenet_files(src, flag="--src")
    else:  # imagenet: the usual ILSVRC2012 layout with val/ sorted into class folders (valprep.sh)
        (train, val), names = imagefolder_files(src, dataset, flag="--src")
        if dataset == "imagenet":
            names = _imagenet_names(src, names)
    # stable sort by class: the same order the in-memory loaders give (ClassImages.sorted)
    files = {s: sorted(f, key=lambda pl: pl[1]) for s, f in zip(SPLITS, (train, val))}
    for s, f in files.items():
        if not f:
            hint = (" (ImageNet's val/ must be sorted into one folder per class, as the usual "
                    "valprep.sh does)" if dataset == "imagenet" and s == "val" else "")
            raise FastDMError(f"{src}: the {s} split holds no image files in class folders{hint}")
    return files, names


def _imagenet_names(src: str, wnids: list[str]) -> list[str]:
    """Human names from LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca') when present."""
    path = os.path.join(src, "LOC_synset_mapping.txt")
    if not os.path.isfile(path):
        return wnids
    table = {}
    with open(path) as fh:
        for line in fh:
            wnid, _, rest = line.strip().partition(" ")
            table[wnid] = rest.split(",")[0] or wnid
    return [table.get(w, w) for w in wnids]


def _fingerprint(files: dict, src: str) -> str:
    """The source listing, with each file's size and modification time: a resume against a
    changed source (a file added, removed or replaced) is refused."""
    h = hashlib.sha256()
    for s in SPLITS:
        for path, label in files[s]:
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}\t{st.st_mtime_ns}"
            except OSError as e:  # e.g. a broken link: its decode will list it as unreadable
                stamp = f"unreadable {e.errno}"
            h.update(f"{s}\t{os.path.relpath(path, src)}\t{label}\t{stamp}\n".encode())
    return h.hexdigest()


# -- the whole job ----------------------------------------------------------------------------------
def prepare_store(dataset: str, src: str, out: str, image_size: int = 64, workers: int | None = None,
                  max_bad_fraction: float = MAX_BAD_FRACTION, progress: bool = True,
                  on_shard=None) -> dict:
    """Write the store ``out`` (see the module docstring); returns its index. ``workers``:
    decoding processes (default: one per usable CPU; 0 decodes in this process).
    ``on_shard(n)`` is called after each finished shard (n shards done so far)."""
    if not isinstance(image_size, int) or image_size < 1:
        raise FastDMError(f"--image-size must be a positive integer, got {image_size}")
    if not 0 <= max_bad_fraction <= 1:
        raise FastDMError(f"--max-bad-fraction must be in [0, 1], got {max_bad_fraction}")
    src, out = os.path.abspath(src), os.path.abspath(out)
    settings = {"dataset": dataset, "source": src, "image_size": image_size}
    finished = _finished(out, settings)
    if finished is not None:
        return finished
    files, names = list_source(dataset, src)
    settings["fingerprint"] = _fingerprint(files, src)
    settings["shard"] = SHARD
    partial = out + ".partial"
    with _exclusive(out):
        # again under the lock: another prepare of the same --out may have finished meanwhile
        finished = _finished(out, settings)
        if finished is not None:
            return finished
        token = _start_or_resume(partial, settings)
        index_path = os.path.join(partial, INDEX)
        if os.path.exists(index_path):  # complete before an interruption: only the rename is left
            with open(index_path) as fh:
                index = json.load(fh)
        else:
            index = _build(partial, files, names, dataset, settings, image_size, src, workers,
                           max_bad_fraction, progress, on_shard, token)
        # the resume record goes last: until the rename, a rerun can tell this folder is its own
        for name in os.listdir(partial):
            if name.endswith(".skipped.json"):
                os.remove(os.path.join(partial, name))
        os.remove(os.path.join(partial, "prepare.json"))
        try:
            os.replace(partial, out)
        except OSError as e:
            raise FastDMError(f"cannot rename {partial} to {out}: {e.strerror or e}; the store is "
                              f"complete in {partial}: free the name {out} and rerun") from None
    log.info("store %s: %s", out, ", ".join(f"{s} {index['splits'][s]['images']} images"
                                            for s in SPLITS))
    return index


def _finished(out: str, settings: dict) -> dict | None:
    """The index of a finished store at ``out`` made with ``settings`` (rerunning does
    nothing); None when there is none; an error for another store or a foreign folder."""
    if is_store(out):
        index = read_index(out)
        have = {k: index["prepare"].get(k) for k in settings}
        if have != settings:
            raise FastDMError(f"{out} already holds a store made with {have}; choose another --out "
                              f"or remove it to prepare {settings}")
        log.info("%s is already prepared (%s); nothing to do", out, settings)
        return index
    if os.path.exists(out):
        raise FastDMError(f"--out {out} exists and is not a fastdm store; choose another --out")
    return None


def _build(partial, files, names, dataset, settings, image_size, src, workers, max_bad_fraction,
           progress, on_shard, token) -> dict:
    shards = [(s, i, [p for p, _ in files[s][i:i + SHARD]])
              for s in SPLITS if not os.path.exists(os.path.join(partial, f"{s}.npy"))
              for i in range(0, len(files[s]), SHARD)]
    todo = [sh for sh in shards if not os.path.exists(_marker(partial, sh))]
    _decode_all(todo, sum(len(sh[2]) for sh in shards), image_size, partial, workers, progress,
                on_shard, len(shards) - len(todo), token)
    index = {"format": STORE_FORMAT, "version": STORE_VERSION, "dataset": dataset,
             "image_size": image_size, "channels": 3, "layout": "NCHW uint8, sorted by class",
             "resize": RESIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
             "classes": names, "prepare": settings, "splits": {}}
    for s in SPLITS:
        index["splits"][s] = _assemble(partial, s, files[s], len(names), image_size, src,
                                       max_bad_fraction, token)
    for name in os.listdir(partial):  # the shards are in the arrays now
        if name.startswith(tuple(f"{s}-" for s in SPLITS)):
            os.remove(os.path.join(partial, name))
    atomic_json_dump(index, os.path.join(partial, INDEX))
    return index


def _marker(partial: str, shard) -> str:
    split, start, _ = shard
    return os.path.join(partial, f"{split}-{start // SHARD:07d}.json")


@contextlib.contextmanager
def _exclusive(out: str):
    """One prepare per --out at a time (a second would share the partial folder)."""
    import fcntl

    path = out + ".partial.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FastDMError(f"another fastdm prepare is writing {out} (it holds {path}); wait "
                              f"for it or stop it") from None
        yield
        os.remove(path)
    finally:
        os.close(fd)


def _start_or_resume(partial: str, settings: dict) -> str:
    """Create the partial folder with its resume record, or check an existing one; returns
    the run token the decode workers must find in the record."""
    record = os.path.join(partial, "prepare.json")
    if os.path.isdir(partial):
        before = None
        for path, key in ((record, None), (os.path.join(partial, INDEX), "prepare")):
            try:
                with open(path) as fh:
                    before = json.load(fh)
                before = before[key] if key else before
                break
            except (OSError, ValueError, KeyError):
                continue
        if before is None or {k: before.get(k) for k in settings} != settings:
            what = before and {k: before.get(k) for k in ("dataset", "source", "image_size")}
            raise FastDMError(f"{partial} holds an unfinished prepare with other settings or "
                              f"another source listing ({what}); remove {partial} to start afresh")
        for name in os.listdir(partial):  # a write cut short by the interruption
            if ".tmp" in name:
                os.remove(os.path.join(partial, name))
        log.info("resuming the unfinished prepare in %s", partial)
        if not os.path.exists(record):  # complete already; the record went first
            atomic_json_dump({**settings, "token": "done"}, record)
        with open(record) as fh:
            return json.load(fh)["token"]
    token = secrets.token_hex(8)
    fresh = f"{partial}.new{os.getpid()}"
    os.makedirs(fresh)
    atomic_json_dump({**settings, "token": token}, os.path.join(fresh, "prepare.json"))
    os.replace(fresh, partial)  # the folder appears with its record
    return token


def _decode_all(todo, total: int, size: int, partial: str, workers, progress: bool, on_shard,
                done: int, token: str) -> None:
    from tqdm import tqdm

    finished = total - sum(len(sh[2]) for sh in todo)
    bar = tqdm(total=total, initial=finished, desc="decoding", unit="img",
               disable=not progress or None, dynamic_ncols=True)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    record = os.path.join(partial, "prepare.json")

    def args(sh):
        return sh[2], size, _shard_npy(partial, sh), _marker(partial, sh), record, token

    try:
        if workers == 0 or len(todo) <= 1:
            for sh in todo:
                decode_shard(*args(sh))
                done += 1
                bar.update(len(sh[2]))
                if on_shard is not None:
                    on_shard(done)
            return
        # spawn: the workers need only PIL and numpy, and fork after torch's thread pools
        # started is unsafe
        pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn"),
                                   initializer=worker_init)
        try:
            pending = {pool.submit(decode_shard, *args(sh)): sh for sh in todo}
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    sh = pending.pop(fut)
                    try:
                        fut.result()
                    except BrokenProcessPool:
                        raise FastDMError(
                            "a decode worker process died (killed by the system, out of memory?); "
                            "the finished shards are kept: rerun the same command to go on, with "
                            "fewer --workers if memory is short") from None
                    done += 1
                    bar.update(len(sh[2]))
                    if on_shard is not None:
                        on_shard(done)
        except BaseException:  # stop now: no shard decoded after the interruption
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    finally:
        bar.close()


def _shard_npy(partial: str, shard) -> str:
    return _marker(partial, shard)[:-len(".json")] + ".npy"


def _assemble(partial: str, split: str, files: list, num_classes: int, size: int, src: str,
              max_bad_fraction: float, token: str) -> dict:
    """Concatenate the split's shards into <split>.npy; write its manifest; return its index."""
    shards = [(split, i, files[i:i + SHARD]) for i in range(0, len(files), SHARD)]
    final = os.path.join(partial, f"{split}.npy")
    manifest = os.path.join(partial, f"{split}.files.txt")
    bad, why = [], {}
    if os.path.exists(final):  # assembled before an interruption; its manifest is beside it
        with open(manifest) as fh:
            kept = [line.rstrip("\n").rsplit("\t", 1) for line in fh]
        kept = [(p, int(c)) for p, c in kept]
        meta_path = os.path.join(partial, f"{split}.skipped.json")
        with open(meta_path) as fh:
            skipped = json.load(fh)
        bad, why = skipped["files"], skipped["why"]
    else:
        kept, parts = [], []
        for sh in shards:
            with open(_marker(partial, sh)) as fh:
                marker = json.load(fh)
            npy = _shard_npy(partial, sh)
            rows = np.load(npy, mmap_mode="r").shape[0] if os.path.exists(npy) else -1
            if marker.get("token") != token or marker["files"] != len(sh[2]) \
                    or rows != len(sh[2]) - len(marker["bad"]):
                raise FastDMError(f"shard {npy} does not match its marker (another run's, or "
                                  f"damaged); delete it and {_marker(partial, sh)} and rerun")
            reasons = dict(zip(marker["bad"], marker.get("why") or [None] * len(marker["bad"])))
            for j, (p, c) in enumerate(sh[2]):
                if j in reasons:
                    bad.append(os.path.relpath(p, src))
                    why[bad[-1]] = reasons[j]
                else:
                    kept.append((os.path.relpath(p, src), c))
            parts.append(_shard_npy(partial, sh))
        if len(bad) > max_bad_fraction * len(files):
            shown = ", ".join(f"{b} ({why.get(b)})" for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise FastDMError(f"{len(bad)} of {len(files)} {split} images could not be read or decoded (more "
                              f"than {max_bad_fraction:.0%}): {shown}; fix or remove them, delete "
                              f"{partial} and prepare again")
        tmp = final + ".tmp"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(kept), 3, size, size))
        row = 0
        for part in parts:
            block = np.load(part, mmap_mode="r")
            arr[row:row + len(block)] = block
            row += len(block)
        if row != len(kept):
            raise FastDMError(f"assembling {split}: {row} rows for {len(kept)} files; delete "
                              f"{partial} and prepare again")
        arr.flush()
        del arr
        with open(manifest + ".tmp", "w") as fh:
            fh.writelines(f"{p}\t{c}\n" for p, c in kept)
        os.replace(manifest + ".tmp", manifest)
        atomic_json_dump({"files": bad, "why": why}, os.path.join(partial, f"{split}.skipped.json"))
        os.replace(tmp, final)  # last: its presence says the split is assembled
    if bad:
        log.warning("%s: skipped %d unreadable or undecodable file(s): %s", split, len(bad),
                    ", ".join(f"{b} ({why.get(b)})" for b in bad[:5]) + (" ..." if len(bad) > 5 else ""))
    counts = np.bincount([c for _, c in kept], minlength=num_classes).tolist()
    return {"file": f"{split}.npy", "images": len(kept), "counts": counts,
            "offsets": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist(),
            "manifest": f"{split}.files.txt", "skipped": bad, "skipped_why": why}
