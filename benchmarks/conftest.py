"""Options of the micro-benchmarks: ``pytest benchmarks --benchmark-only [--device cuda]
[--bench-size tiny|small|large]``. CI runs them with ``--bench-size tiny --benchmark-disable``
(each body once, as a test) so they do not rot."""
import pytest
import torch

from fastdm.devices import resolve_device, synchronize
from fastdm.errors import FastDMError


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.addoption("--bench-size", default="small", choices=("tiny", "small", "large"),
                     help="problem sizes: tiny (smoke), small (CPU), large (GPU)")


@pytest.fixture(scope="session")
def device(request):
    try:
        return resolve_device(request.config.getoption("--device"))
    except FastDMError as e:
        pytest.exit(str(e), returncode=2)


@pytest.fixture(scope="session")
def size(request):
    return request.config.getoption("--bench-size")


@pytest.fixture
def timed(benchmark, device):
    """benchmark(fn) with the device synchronised after each call (CUDA work is async)."""
    def run(fn, *args):
        def call():
            out = fn(*args)
            synchronize(device)
            return out
        benchmark.extra_info["device"] = str(device)
        benchmark.extra_info["torch"] = torch.__version__
        return benchmark(call)
    return run
