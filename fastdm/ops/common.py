"""What every fused op shares, once: Triton's import, the CUDA device guard, the float dtypes,
the backend check and the registration of kernels in ``fastdm.backend.FUSED_OPS``."""
from __future__ import annotations

import contextlib

import torch

from ..backend import FUSED_OPS, backend_for, triton_unusable
from ..errors import FastDMError

try:  # triton ships with torch on Linux; elsewhere only the torch path exists
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the platform
    triton = tl = None

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def register(op: str, module: str) -> None:
    """Declare that fused op ``op`` has Triton kernels (in ``module``)."""
    FUSED_OPS[op] = module


def choose_backend(op: str, backend: str | None, device) -> str:
    """``backend`` checked ('torch' or 'triton', usable here), or the automatic choice."""
    if backend is None:
        return backend_for(op, device)
    if backend not in ("torch", "triton"):
        raise FastDMError(f"backend must be 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and (why := triton_unusable(op, device)) is not None:
        raise FastDMError(f"backend='triton' cannot run here: {why}")
    return backend


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def programs_wanted(device: torch.device) -> int:
    """Enough programs to fill the device (a few per SM); the interpreter pays per program."""
    if device.type != "cuda":
        return 1
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> GPU without a sync (a plain copy from pageable memory waits for the stream):
    through pinned memory, asynchronously."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels take a row stride; columns must be unit-stride."""
    return x if x.stride(-1) == 1 else x.contiguous()


def wide(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 computed in float32 (as the kernels accumulate); float64 stays (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def no_real_grad(t: torch.Tensor, backend: str) -> None:
    """The fused distances differentiate w.r.t. the synthetic side only."""
    if backend == "triton" and t.requires_grad and torch.is_grad_enabled():
        raise FastDMError("the fused MMD differentiates w.r.t. the synthetic features only; detach "
                          "the real side (DM never trains it) or use backend='torch'")


def check_conv3x3(x, weight, bias, padding, what: str, channels: int | None = None) -> None:
    """One-line errors for the native CPU 3x3 convolutions (stride 1, float32); ``channels``
    fixes the input's channel count (the 1-channel kernel)."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        raise FastDMError(f"{what} takes tensors x and weight")
    c = "C" if channels is None else str(channels)
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or \
            (channels is not None and (x.shape[1] != channels or weight.shape[1] != channels)):
        raise FastDMError(f"{what} needs x [N, {c}, H, W] and a 3x3 weight [K, {c}, 3, 3], got x "
                          f"{tuple(x.shape)} and weight {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise FastDMError(f"{what}: x has {x.shape[1]} channels, the weight expects {weight.shape[1]}")
    tensors = [x, weight] + ([bias] if bias is not None else [])
    if any(t.dtype != torch.float32 for t in tensors):
        raise FastDMError(f"{what} is float32 only, got x {x.dtype}, weight {weight.dtype}")
    if any(t.device.type != "cpu" for t in tensors):
        raise FastDMError(f"{what} runs on the CPU (on CUDA, cuDNN chooses its own algorithm)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise FastDMError(f"{what}: bias of shape {tuple(bias.shape)} for {weight.shape[0]} "
                          f"output channels")
    if not isinstance(padding, int) or padding < 0:
        raise FastDMError(f"{what}: padding must be an integer >= 0, got {padding!r}")
    if min(x.shape[2:]) + 2 * padding < 3:
        raise FastDMError(f"{what}: a {x.shape[2]}x{x.shape[3]} input with padding {padding} is "
                          f"smaller than the 3x3 kernel")
