"""Sums of cos and sin along the rows of a matrix of phases, without storing cos or sin: the
real side of NCFM's span draw (fastdm.objectives.span_draw), whose phases are a GEMM's output
[M, n]. A native CPU kernel (kernels/phase_sums.cpp: one range reduction for both, the sums in
registers; 0.39 against torch's 3.0 ms at 4096 x 256 on two cores, benchmarks/RESULTS.md),
forward only (the real side needs no gradient).

- ``cos_sin_sums(*parts, backend=)``: the entry point, [2, M] from parts [M, *];
- ``reference_cos_sin_sums``: the same in torch (every device), for the tests and the torch path.
"""
import torch

from .. import native
from ..errors import FastDMError


@torch.library.custom_op("fastdm::phase_sums", mutates_args=())
def _native(parts: list[torch.Tensor]) -> torch.Tensor:
    out = parts[0].new_empty((2, parts[0].shape[0]))
    for i, q in enumerate(parts):
        native.load("phase_sums").phase_sums(q if q.stride(-1) == 1 else q.contiguous(), out, i > 0)
    return out


@_native.register_fake
def _(parts):
    return parts[0].new_empty((2, parts[0].shape[0]))


def reference_cos_sin_sums(*parts: torch.Tensor) -> torch.Tensor:
    return torch.stack([sum(torch.cos(q).sum(1) for q in parts),
                        sum(torch.sin(q).sum(1) for q in parts)])


def cos_sin_sums(*parts: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """[sum_k cos q[m, k], sum_k sin q[m, k]] over the columns of every part q [M, *]: [2, M].
    ``backend`` 'native' (float32 CPU tensors, no gradient) or 'torch'."""
    if backend == "torch":
        return reference_cos_sin_sums(*parts)
    if backend != "native":
        raise FastDMError(f"cos_sin_sums: backend must be 'native' or 'torch', got '{backend}'")
    m = parts[0].shape[0]
    for q in parts:
        if q.dim() != 2 or q.shape[0] != m or q.dtype != torch.float32 or q.device.type != "cpu":
            raise FastDMError(f"cos_sin_sums (native): parts must be float32 CPU matrices of {m} "
                              f"rows, got {q.dtype} {tuple(q.shape)} on {q.device}")
        if q.requires_grad and torch.is_grad_enabled():
            raise FastDMError("cos_sin_sums (native) has no gradient; use backend='torch'")
    return _native(list(parts))
