"""fastdm's native CPU code (kernels/*.cpp): one library, fastdm._kernels, built by CMake
(CMakeLists.txt) when fastdm is installed (pip install --no-build-isolation .). Importing it
registers the operators torch.ops.fastdm_native.*; the library picks, per CPU, the build of each
kernel for the instruction sets the CPU has (generic, AVX2+FMA, AVX-512).

Where the kernels come from (``origin()``):
- prebuilt: the installed library, checked against the torch it was built for (its
  _kernels_build.json) before it is loaded, so a library built for another torch is a one-line
  error that says how to rebuild, never an undefined symbol;
- jit: a source checkout without an installed library (run from the tree, say) builds the same
  CMakeLists.txt, same sources and flags, into ~/.cache/fastdm/native (FASTDM_NATIVE_CACHE
  overrides) on first use, and says so loudly (it needs cmake and a C++ compiler);
- unavailable: ``unavailable()`` says why (None if usable), so callers log the reason or stop
  with it; nothing here falls back silently.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .errors import FastDMError

log = logging.getLogger("fastdm")

ROOT = Path(__file__).resolve().parents[1]  # a source checkout's root (CMakeLists.txt, kernels/)
MODULE = "fastdm._kernels"
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."
_lock = threading.Lock()
_state: dict = {}  # "ops": the loaded ops, "origin": prebuilt | jit, "failed": why


class _Ops:
    """The kernels as functions (torch.ops.fastdm_native.*)."""

    def __init__(self):
        import torch
        ns = torch.ops.fastdm_native
        self.input_transform = ns.winograd_input_transform
        self.output_transform = ns.winograd_output_transform
        self.first_block = ns.first_block
        self.first_block_backward = ns.first_block_backward
        self.norm_relu_pool_nhwc = ns.norm_relu_pool_nhwc
        self.phase_sums = ns.phase_sums
        self.isa = ns.isa
        self.build_info = lambda: json.loads(ns.build_info())


def _prebuilt_spec():
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None
    return spec if spec is not None and spec.origin else None


def _build_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "_kernels_build.json").read_text())
    except (OSError, ValueError):
        return None


def _mismatch(record: dict | None) -> str | None:
    """Why a library built as ``record`` says cannot load under this torch, or None."""
    import torch
    if record is None:
        return f"its build record (_kernels_build.json) is missing; rebuild: {REBUILD}"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    if record.get("torch") != torch.__version__ or int(record.get("cxx11_abi", -1)) != abi:
        return (f"they were built for torch {record.get('torch')} (C++11 ABI "
                f"{record.get('cxx11_abi')}) and this is torch {torch.__version__} (ABI {abi}); "
                f"rebuild them: {REBUILD}")
    return None


def _source_tree() -> bool:
    return (ROOT / "CMakeLists.txt").is_file() and (ROOT / "kernels").is_dir()


def _jit_dir() -> Path:
    import torch
    h = hashlib.sha256()
    for f in [ROOT / "CMakeLists.txt", *sorted((ROOT / "kernels").glob("*"))]:
        h.update(f.name.encode() + f.read_bytes())
    h.update(torch.__version__.encode() + sys.version.encode())
    root = Path(os.environ.get("FASTDM_NATIVE_CACHE", Path.home() / ".cache" / "fastdm" / "native"))
    return root / f"kernels-{h.hexdigest()[:16]}"


def _jit_library() -> Path | None:
    found = sorted(_jit_dir().glob("_kernels*.so")) if _source_tree() else []
    return found[0] if found else None


def unavailable(name: str = "winograd") -> str | None:
    """Why the native kernels cannot be used here, or None. ``name`` is kept for callers that
    name the kernel; every kernel is in the one library."""
    if "ops" in _state:
        return None
    if "failed" in _state:
        return _state["failed"]
    if os.environ.get("FASTDM_NATIVE", "on").strip().lower() == "off":
        return "FASTDM_NATIVE=off"
    spec = _prebuilt_spec()
    if spec is not None:
        return _mismatch(_build_record(Path(spec.origin).parent))
    if not _source_tree():
        return (f"fastdm was installed without its native library and there is no source tree "
                f"to build it from; reinstall: {REBUILD} (in fastdm's source folder)")
    if _jit_library() is not None:
        return None
    missing = [tool for tool in ("cmake", os.environ.get("CXX", "c++")) if shutil.which(tool) is None]
    if missing:
        return (f"no installed library, and building it from {ROOT} needs {' and '.join(missing)} "
                f"on PATH; or install fastdm: {REBUILD}")
    return None


def origin() -> str:
    """prebuilt, jit (built here from the source tree), or 'unavailable: why'."""
    why = unavailable()
    if why is not None:
        return f"unavailable: {why}"
    if "origin" in _state:
        return _state["origin"]
    return "prebuilt" if _prebuilt_spec() is not None else "jit"


def built(name: str = "winograd") -> bool:
    """Whether loading the kernels takes no compile (installed, or already built here)."""
    return "ops" in _state or (unavailable() is None and
                               (_prebuilt_spec() is not None or _jit_library() is not None))


def _build_from_source() -> Path:
    out = _jit_dir()
    log.warning("fastdm's native library is not installed: building it now from %s with CMake "
                "(the same CMakeLists.txt as pip install; about a minute, once) into %s; install "
                "fastdm (%s) to skip this", ROOT, out, REBUILD)
    build = out / "build"
    cmd = [["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release"],
           ["cmake", "--build", str(build), "-j", str(max(1, os.cpu_count() or 1))],
           ["cmake", "--install", str(build), "--prefix", str(out / "install")]]
    for c in cmd:
        p = subprocess.run(c, capture_output=True, text=True)
        if p.returncode != 0:
            lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
            err = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            raise RuntimeError(f"{' '.join(c[:2])} failed: {err.strip()[:300]}")
    lib = next((out / "install" / "fastdm").glob("_kernels*.so"))
    target = out / lib.name
    shutil.copy2(lib, target)
    shutil.copy2(out / "install" / "fastdm" / "_kernels_build.json", out / "_kernels_build.json")
    shutil.rmtree(build, ignore_errors=True)
    return target


def load(name: str = "winograd") -> _Ops:
    """The kernels' ops (built from the source tree first where no library is installed);
    FastDMError if they cannot be used."""
    with _lock:
        if "ops" in _state:
            return _state["ops"]
        why = unavailable(name)
        if why is not None:
            raise FastDMError(f"fastdm's native {name} kernels cannot be used: {why}")
        import torch  # noqa: F401  (the library needs torch's libraries loaded first)
        try:
            if _prebuilt_spec() is not None:
                importlib.import_module(MODULE)
                where = "prebuilt"
            else:
                lib = _jit_library() or _build_from_source()
                why = _mismatch(_build_record(lib.parent))
                if why is not None:
                    raise RuntimeError(why)
                spec = importlib.util.spec_from_file_location(MODULE, lib)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[MODULE] = module
                where = "jit"
        except Exception as e:  # a compiler error, a broken library: say it once, keep it
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            _state["failed"] = f"loading them failed ({first[:300]})"
            raise FastDMError(f"fastdm's native {name} kernels cannot be used: {_state['failed']}") from e
        _state["ops"], _state["origin"] = _Ops(), where
        return _state["ops"]


def winograd() -> _Ops:
    return load("winograd")
