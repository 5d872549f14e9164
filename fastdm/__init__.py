"""fastdm: fast, exact Dataset Condensation by Distribution Matching."""
__version__ = "0.1.0"

from .errors import FastDMError  # noqa: E402

__all__ = ["__version__", "FastDMError", "condense_dataset", "evaluate_synset", "CondenseConfig",
           "load_dataset", "make_plan"]

_LAZY = {"condense_dataset": ("condense", "condense_dataset"),
         "evaluate_synset": ("evaluate_job", "evaluate_synset"),
         "CondenseConfig": ("config", "CondenseConfig"), "load_dataset": ("data", "load_dataset"),
         "make_plan": ("plan", "make_plan")}


def __getattr__(name):  # import torch-heavy modules only when used
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'fastdm' has no attribute {name!r}")
