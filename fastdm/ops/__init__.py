"""Fused operations, one module per operation (kernels, torch.library op, autograd, entry point),
with the helpers they share in ``common``.

Importing this package registers the available Triton kernels in ``fastdm.backend.FUSED_OPS``.
"""
from . import attention, characteristic, dsa, gaussian_mmd, linear_mmd, segments  # noqa: F401
