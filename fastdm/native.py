"""fastdm's native CPU code (kernels/*.cpp), compiled on first use with torch's C++ extension
builder and cached, per source, torch version and compiler flags, under
~/.cache/fastdm/native (FASTDM_NATIVE_CACHE overrides). The first build takes about a minute
on 2 cores; later processes load the cached library.

``unavailable()`` says why the native code cannot be used here (None if it can), so callers
can log the reason or stop with it; nothing here falls back silently.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

from .errors import FastDMError

log = logging.getLogger("fastdm")

SOURCES = Path(__file__).resolve().parents[1] / "kernels"
_lock = threading.Lock()
_loaded: dict = {}
_failed: dict = {}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cflags() -> list[str]:
    flags = ["-O3", "-fopenmp"]
    have = _cpu_flags()
    if {"avx2", "fma"} <= have:  # chosen from this CPU; part of the cache key below
        flags += ["-mavx2", "-mfma"]
    return flags


def _source(name: str) -> Path:
    return SOURCES / f"{name}.cpp"


def unavailable(name: str = "winograd") -> str | None:
    """Why native module ``name`` cannot be built or loaded here, or None."""
    if name in _loaded:
        return None
    if name in _failed:
        return _failed[name]
    if os.environ.get("FASTDM_NATIVE", "on").strip().lower() == "off":
        return "FASTDM_NATIVE=off"
    if not _source(name).is_file():
        return f"its source {_source(name)} is not there (fastdm installed without kernels/)"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return "no C++ compiler (c++/g++) on PATH"
    if not _ninja_on_path():
        return "ninja (torch's extension builder needs it) is not installed: pip install ninja"
    return None


def _ninja_on_path() -> bool:
    """ninja on PATH, putting the pip package's binary there when the venv is not activated."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def load(name: str = "winograd"):
    """The compiled module ``name`` (built on first use); FastDMError if it cannot be."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        why = unavailable(name)
        if why is not None:
            raise FastDMError(f"fastdm's native {name} kernels cannot be used: {why}")
        quiet = logging.getLogger("torch.utils.cpp_extension")  # its import warns that there is
        level = quiet.level                                     # no CUDA: irrelevant to CPU code
        quiet.setLevel(logging.ERROR)
        try:
            from torch.utils import cpp_extension
        finally:
            quiet.setLevel(level)

        src = _source(name)
        cflags = _cflags()
        build, key = _build_dir(name)
        build.mkdir(parents=True, exist_ok=True)
        if not any(build.glob("*.so")):
            log.info("building fastdm's native %s kernels (once; about a minute) in %s", name, build)
        try:
            module = cpp_extension.load(f"fastdm_{name}_{key}", [str(src)], extra_cflags=cflags,
                                        extra_ldflags=["-fopenmp"], build_directory=str(build),
                                        verbose=False)
        except Exception as e:  # a compiler error, missing ninja, ...: say it once, keep it
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            _failed[name] = f"building {src.name} failed ({first[:300]})"
            raise FastDMError(f"fastdm's native {name} kernels cannot be used: {_failed[name]}") from e
        _loaded[name] = module
        return module


def _build_dir(name: str) -> tuple[Path, str]:
    """The cache folder of ``name``'s build, keyed by its source, torch, Python, the machine
    and the compiler flags, and the key."""
    import torch
    key = hashlib.sha256(_source(name).read_bytes() + torch.__version__.encode() +
                         sys.version.encode() + platform.machine().encode() +
                         " ".join(_cflags()).encode()).hexdigest()[:16]
    root = Path(os.environ.get("FASTDM_NATIVE_CACHE", Path.home() / ".cache" / "fastdm" / "native"))
    return root / f"{name}-{key}", key


def built(name: str = "winograd") -> bool:
    """Whether ``name`` is loaded or built in the cache (loading it then takes no compile)."""
    if name in _loaded:
        return True
    if not _source(name).is_file():
        return False
    return any(_build_dir(name)[0].glob("*.so"))


def winograd():
    return load("winograd")
