"""Small value checks shared by the settings and the ops' entry points."""
from __future__ import annotations

from .errors import FastDMError


def positive_floats(values, what: str) -> list[float]:
    """``values`` as a non-empty list of positive, finite floats, or a FastDMError naming ``what``."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise FastDMError(f"{what} must be a list of positive numbers, got {values!r}") from None
    if not out or not all(0 < v < float("inf") for v in out):
        raise FastDMError(f"{what} must be a non-empty list of positive, finite numbers, got {out}")
    return out
