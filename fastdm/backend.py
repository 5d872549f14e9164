"""Backend choice, in one place: 'torch' (pure PyTorch, every device) or 'triton' (fused
kernels in fastdm.ops, CUDA; CPU only under TRITON_INTERPRET=1 for tests).

FASTDM_BACKEND=auto|torch|triton overrides the automatic choice (Triton on CUDA, torch on
CPU). A choice of Triton that cannot be honoured is logged as a warning, never hidden.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("fastdm")

# Fused operations available on the Triton backend, by name; fastdm.ops registers them.
FUSED_OPS: dict[str, object] = {}
_warned: set = set()


def requested() -> str:
    value = os.environ.get("FASTDM_BACKEND", "auto").strip().lower() or "auto"
    if value not in ("auto", "torch", "triton"):
        from .errors import FastDMError
        raise FastDMError(f"FASTDM_BACKEND={value!r} is not one of auto, torch, triton")
    return value


def triton_importable() -> str | None:
    """Triton's version if it imports, else None."""
    try:
        import triton
    except Exception:
        return None
    return getattr(triton, "__version__", "unknown")


def interpreting() -> bool:
    """Triton kernels run in Triton's CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unusable(op: str, device) -> str | None:
    """Why fused operation ``op`` cannot run on Triton on ``device``, or None if it can."""
    from . import ops  # noqa: F401  (registers the kernels that exist)
    if op not in FUSED_OPS:
        return f"no Triton kernel for '{op}' exists in this version of fastdm"
    if triton_importable() is None:
        return "triton does not import"
    if getattr(device, "type", str(device)) != "cuda" and not interpreting():
        return "Triton needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)"
    return None


def backend_for(op: str, device) -> str:
    """'triton' or 'torch' for fused operation ``op`` on ``device``, with a warning whenever
    Triton was wanted (explicitly, or by default on CUDA) but cannot be used."""
    want = requested()
    dev_type = getattr(device, "type", str(device))
    if want == "torch" or (want == "auto" and dev_type != "cuda"):
        return "torch"
    reason = triton_unusable(op, device)
    if reason is None:
        return "triton"
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        log.warning("Triton backend %s for '%s' but %s: using the torch path",
                    "requested" if want == "triton" else "selected on CUDA", op, reason)
    return "torch"


# -- the CPU embedder's convolution algorithm ---------------------------------------------------
def conv_for(mode: str, device, precision: str, model_why: str | None = None,
             build: bool = True) -> str:
    """'winograd' or 'direct' for the real branch's 3x3 convolutions (fastdm.ops.winograd).
    auto: Winograd on the CPU in fp32 when the native kernels build here; a CPU fp32 run that
    cannot have them logs why (a warning). 'winograd' that cannot run is a FastDMError.
    ``model_why``: why the model has no Winograd layers, or None. ``build=False`` checks that
    the kernels can be built without building them (a dry run)."""
    from .errors import FastDMError
    from .settings import CONV_MODES
    from . import native
    if mode not in CONV_MODES:
        raise FastDMError(f"--conv must be one of {', '.join(CONV_MODES)}, got '{mode}'")
    if mode == "direct":
        return "direct"
    dev_type = getattr(device, "type", str(device))
    why = ("FASTDM_BACKEND=torch asks for pure PyTorch" if requested() == "torch" else
           "it is a CPU kernel (on CUDA, cuDNN chooses the algorithm)" if dev_type != "cpu" else
           f"the kernels are float32 only and the embedder runs in {precision}" if precision != "fp32" else
           model_why)
    expected = why is None  # a CPU fp32 run: the fast path should be taken from here on
    if why is None and not build:
        why = native.unavailable("winograd")
    elif why is None:
        try:
            native.winograd()
        except FastDMError as e:
            why = str(e)
    if why is None:
        return "winograd"
    if mode == "winograd":
        raise FastDMError(f"--conv winograd cannot run: {why}; use --conv direct (or auto)")
    (log.warning if expected else log.debug)(
        "real-branch convolutions: direct, not Winograd (%s)", why)
    return "direct"


def native_for(op: str, device) -> str:
    """'native' or 'torch' for a CPU kernel of fastdm's native library (kernels/) on ``device``:
    native on the CPU unless FASTDM_BACKEND=torch; a CPU that cannot load the library logs why
    (a warning) and takes the torch path."""
    from . import native
    from .errors import FastDMError
    if requested() == "torch" or getattr(device, "type", str(device)) != "cpu":
        return "torch"
    try:
        native.load(op)
    except FastDMError as e:
        if (op, str(e)) not in _warned:
            _warned.add((op, str(e)))
            log.warning("'%s' takes the torch path, not its native kernel: %s", op, e)
        return "torch"
    return "native"
