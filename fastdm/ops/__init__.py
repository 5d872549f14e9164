"""Fused operations (Triton kernels + autograd + torch.library ops), one module per operation.

Importing this package registers the available kernels in ``fastdm.backend.FUSED_OPS``.
"""
from . import dsa  # noqa: F401
from . import mmd  # noqa: F401
