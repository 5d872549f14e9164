import logging

import pytest

from fastdm import backend
from fastdm.errors import FastDMError


def test_auto_is_torch_on_cpu_without_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        assert backend.backend_for("dsa", "cpu") == "torch"
    assert caplog.text == ""


def test_triton_wanted_but_unavailable_is_said_loudly(monkeypatch, caplog):
    """An op without a kernel: asking for Triton must log, not fall back silently."""
    monkeypatch.setenv("FASTDM_BACKEND", "triton")
    monkeypatch.setattr(backend, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        assert backend.backend_for("no_such_op", "cpu") == "torch"
    assert "Triton backend requested for 'no_such_op'" in caplog.text and "no Triton kernel" in caplog.text


def test_auto_on_cuda_names_the_missing_kernels(monkeypatch, caplog):
    monkeypatch.delenv("FASTDM_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="fastdm"):
        assert backend.backend_for("no_such_op", "cuda") == "torch"
    assert "selected on CUDA" in caplog.text


def test_registered_kernel_is_chosen_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("FASTDM_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(backend.FUSED_OPS, "dsa", object())
    if backend.triton_importable() is None:
        pytest.skip("triton does not import here")
    assert backend.backend_for("dsa", "cpu") == "triton"


def test_bad_backend_value(monkeypatch):
    monkeypatch.setenv("FASTDM_BACKEND", "cuda")
    with pytest.raises(FastDMError, match="FASTDM_BACKEND"):
        backend.requested()
