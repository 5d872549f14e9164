"""The one image decode of fastdm's folder datasets, free of torch so that fastdm prepare's
worker processes start fast (numpy and PIL only).

Decoding: PIL, converted to RGB (16-bit integer images scaled to 8 bits first); an image whose size differs from the target is resized so
its shorter side equals the target (PIL bicubic, which filters over the whole footprint when
shrinking, i.e. antialiased) and centre-cropped to a square.
"""
from __future__ import annotations

import json
import os

import numpy as np



def decode_array(path: str, size: int) -> np.ndarray | None:
    """One file -> uint8 numpy [3, size, size], or None when it cannot be read or decoded."""
    return decode_checked(path, size)[0]


def decode_checked(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """(uint8 [3, size, size], None), or (None, why) for a file that cannot be read (the file
    system's error) or decoded (damaged content): such files are skipped and listed, and too
    many of them fail the split (a dead mount shows up there). Any mode goes through PIL's
    convert('RGB') (L, P, RGBA, CMYK ...; alpha dropped, not composited), except 16/32-bit
    integer images (I;16*, I), which convert('RGB') would clip to almost white: their values
    are taken as 16-bit and scaled to 8 bits (v / 257, rounded) first."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "I" or im.mode.startswith("I;16"):
                wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
                im = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (size, size):
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except MemoryError:
        raise
    except OSError as e:
        if e.errno is not None:  # the file system's error (EIO, EACCES, ENOENT, EISDIR)
            return None, f"unreadable: {e.strerror or e}"
        return None, _undecodable(e, path)  # PIL's own OSErrors (truncated, cannot identify)
    except Exception as e:  # PIL raises many types for damaged content; all mean "skip it"
        return None, _undecodable(e, path)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), None


def _undecodable(e: Exception, path: str) -> str:
    text = str(e).replace(f"'{path}'", "").replace(path, "").strip(" :")  # the path is listed anyway
    return f"undecodable: {type(e).__name__}" + (f": {text}" if text else "")


def decode_shard(paths: list[str], size: int, npy: str, marker: str, record: str, token: str) -> None:
    """Decode ``paths`` into npy (uint8 [n_ok, 3, size, size]); marker (JSON) lists the
    positions that could not be decoded. Each appears under its name only when complete
    (written under a temporary name, fsynced, renamed), the marker last; and only while the
    prepare that asked for it (``token`` in ``record``) still owns the folder: a worker
    orphaned by a killed prepare must not write into a later one."""
    arrays, bad, why = [], [], []
    for i, p in enumerate(paths):
        a, reason = decode_checked(p, size)
        if a is None:
            bad.append(i)
            why.append(reason)
        else:
            arrays.append(a)
    out = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    meta = json.dumps({"files": len(paths), "bad": bad, "why": why, "token": token}).encode()
    for path, write in ((npy, lambda fh: np.save(fh, out)), (marker, lambda fh: fh.write(meta))):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if not _owns(record, token):
            os.remove(tmp)
            return
        os.replace(tmp, path)


def _owns(record: str, token: str) -> bool:
    try:
        with open(record) as fh:
            return json.load(fh).get("token") == token
    except (OSError, ValueError):
        return False


def worker_init() -> None:
    """Decode workers die with the prepare that started them (Linux: PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the token check still guards the folder
        pass
