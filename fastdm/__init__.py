"""fastdm: fast, exact Dataset Condensation by Distribution Matching.

From Python: ``fastdm.condense(...)`` returns a synthetic set as tensors and
``fastdm.evaluate(...)`` its test accuracies (fastdm.api). Progress is logged to the
``fastdm`` logger, shown at INFO unless the application configures logging itself;
``logging.getLogger("fastdm").setLevel(logging.WARNING)`` silences it.
"""
import logging as _logging
import sys as _sys

__version__ = "0.1.0"

from .errors import FastDMError  # noqa: E402

__all__ = ["__version__", "FastDMError", "condense", "evaluate", "CondenseResult", "EvalResult",
           "CondenseConfig", "condense_dataset", "evaluate_synset", "load_dataset", "make_plan"]

_LAZY = {"condense": ("api", "condense"), "evaluate": ("api", "evaluate"),
         "CondenseResult": ("api", "CondenseResult"), "EvalResult": ("api", "EvalResult"),
         "condense_dataset": ("condense_job", "condense_dataset"),
         "evaluate_synset": ("evaluate_job", "evaluate_synset"),
         "CondenseConfig": ("config", "CondenseConfig"), "load_dataset": ("data", "load_dataset"),
         "make_plan": ("plan", "make_plan")}


def __getattr__(name):  # import torch-heavy modules only when used
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'fastdm' has no attribute {name!r}")


class _DefaultHandler(_logging.Handler):
    """fastdm's messages on stderr while nothing else prints them: once the application (or
    the command line) configures logging, its handlers take over and this one is silent."""

    def emit(self, record):
        if _logging.getLogger().handlers:
            return
        try:
            _sys.stderr.write(f"fastdm: {record.getMessage()}\n")
        except Exception:  # a closed stream must not break the run
            pass


_log = _logging.getLogger("fastdm")
if not any(isinstance(h, _DefaultHandler) for h in _log.handlers):
    _log.addHandler(_DefaultHandler())
if _log.level == _logging.NOTSET:
    _log.setLevel(_logging.INFO)
