"""`fastdm info`: versions, devices and usable backends."""
from __future__ import annotations

import platform


def info() -> dict:
    import numpy
    import torch
    import torchvision

    from . import __version__, ops  # noqa: F401  (importing ops registers the fused kernels)
    from . import native
    from .backend import FUSED_OPS, interpreting, requested, triton_importable

    try:
        import sklearn
        sk = sklearn.__version__
    except ImportError:
        sk = None
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    triton = triton_importable()
    return {
        "fastdm": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "triton": triton, "numpy": numpy.__version__,
        "scikit-learn": sk, "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(), "cuda_devices": cuda,
        "backends": {
            "torch": "usable on cpu" + (" and cuda" if cuda else ""),
            "triton": ("not importable" if triton is None else
                       "usable" if (cuda or interpreting()) and FUSED_OPS
                       else f"importable (v{triton}) but " +
                       ("no fused kernels in this version" if not FUSED_OPS else
                        "no CUDA device (set TRITON_INTERPRET=1 to interpret on the CPU)")),
            "fused_ops": sorted(FUSED_OPS),
            "FASTDM_BACKEND": requested(),
        },
        "native_kernels": _native(native),
    }


def _native(native) -> dict:
    """Where the native CPU kernels come from (prebuilt, jit, or why unavailable); an installed
    library is loaded to report its build and the instruction set it picked here."""
    where = native.origin()
    out = {"origin": where}
    if where == "prebuilt":
        ops = native.load()
        out.update(isa=ops.isa(), build=ops.build_info())
    elif where == "jit":
        out["note"] = ("no installed library: the first use builds one from the source tree with "
                       "CMake (install fastdm to prebuild it)")
    return out
