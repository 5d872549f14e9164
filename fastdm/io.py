"""Atomic file writes and loading synthetic sets (fastdm's and the reference's)."""
from __future__ import annotations

import json
import os
import tempfile

import torch

from .errors import FastDMError

SYNSET_FORMAT = "fastdm-synset"
SYNSET_VERSION = 1


def _file_mode() -> int:
    """The mode a new file gets from the user's umask (mkstemp's own is 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: str, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename: the file appears
    complete or not at all, even if the process dies mid-write. The file gets the mode any new
    file of the user's gets (the umask), not the temp file's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # full disk, no permission, a file where a folder should be
            raise FastDMError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_torch_save(obj, path: str) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path: str) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_json_dump(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def _numpy_safe_globals() -> list:
    """Reference result files hold numpy scalars (accuracies): allow exactly those types,
    under both the numpy 1 and numpy 2 module names a pickle may use."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    safe = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    return safe


def _torch_load(path: str):
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise FastDMError(f"{path} is not a fastdm or reference synset (torch.load could not read "
                          f"it: {type(e).__name__} {first})") from None


def _decode_stored(obj: dict, path: str):
    """A synset file holding only the stored (partitioned) images: the decoded set."""
    from .augment.partition import decode_set
    stored, labels = obj["stored"], obj.get("stored_labels")
    factor = obj.get("factor", (obj.get("config") or {}).get("factor", 1))
    if not isinstance(labels, torch.Tensor) or labels.shape != (stored.shape[0],):
        raise FastDMError(f"{path}: 'stored' needs 'stored_labels', one label per stored image")
    if not isinstance(factor, int) or factor < 1 or stored.dim() != 4 or \
            stored.shape[-1] % factor or stored.shape[-2] % factor:
        raise FastDMError(f"{path}: factor {factor!r} does not partition the stored images")
    with torch.no_grad():
        return decode_set(stored.float(), labels.long(), factor)


def load_synset(path: str, exp: int | None = None) -> dict:
    """Load ``path`` -> {images, labels, config (may be empty), kind}.

    Accepts fastdm's synset.pt and the reference's res_DM_*.pt (``{'data': [[images,
    labels], ...], ...}``); for the latter ``exp`` picks one experiment (default: the last).
    """
    if not os.path.isfile(path):
        raise FastDMError(f"synset file {path} not found; pass the synset.pt written by "
                          f"'fastdm condense' (in its --out folder)")
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == SYNSET_FORMAT:
        images, labels, config, kind = obj.get("images"), obj.get("labels"), obj.get("config", {}), "fastdm"
        if images is None and isinstance(obj.get("stored"), torch.Tensor):  # decode it here
            images, labels = _decode_stored(obj, path)
    elif isinstance(obj, dict) and isinstance(obj.get("data"), list) and obj["data"]:
        entries = obj["data"]
        i = len(entries) - 1 if exp is None else exp
        if not 0 <= i < len(entries):
            raise FastDMError(f"{path} holds {len(entries)} experiment(s); --exp {exp} is out of range")
        entry = entries[i]
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise FastDMError(f"{path} is not a fastdm or reference synset (data[{i}] is not "
                              f"[images, labels])")
        images, labels = entry
        config, kind = obj.get("config", {}) if isinstance(obj.get("config"), dict) else {}, "reference"
    else:
        raise FastDMError(f"{path} is not a fastdm or reference synset (expected a dict with "
                          f"'images'/'labels' or 'data': [[images, labels]])")
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise FastDMError(f"{path}: images must be a float N x C x H x W tensor")
    if not (isinstance(labels, torch.Tensor) and labels.shape == (images.shape[0],)):
        raise FastDMError(f"{path}: labels must be a tensor with one label per image")
    return {"images": images.float(), "labels": labels.long(), "config": dict(config), "kind": kind}
