"""fastdm.host_memory: CPU jobs reuse freed host memory instead of page-faulting it anew."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastdm import host_memory

_SCRIPT = """
import json, resource, torch
from fastdm import host_memory


def iteration():  # blocks of 16-64 MB (above glibc's largest mmap threshold), touched, freed
    a, b = torch.ones(16 << 20), torch.ones(4 << 20)
    c = a[:10 << 20] * 2
    del a
    d = torch.ones(12 << 20)
    del b, c, d


def faults():  # page faults of 10 iterations after 2
    iteration(), iteration()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        iteration()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


default = faults()
state = host_memory.keep_freed_memory()
print(json.dumps({"default": default, "state": state, "kept": faults()}))
"""


@pytest.mark.slow  # a subprocess importing torch (4 s)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    env = {k: v for k, v in os.environ.items() if k not in ("FASTDM_HOST_MEMORY", "LD_PRELOAD")}
    p = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["state"] == "kept"
    # 10 iterations of 168 MB touched: about 400k 4-KB pages faulted anew by default (measured
    # 405k), reused when kept (10k-47k measured)
    assert got["default"] > 100_000
    assert got["kept"] < got["default"] / 4


def test_planned_by_device_and_setting(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {})  # as in a process that has not applied it yet
    monkeypatch.delenv("FASTDM_HOST_MEMORY", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    if sys.platform.startswith("linux"):
        assert host_memory.planned(torch.device("cpu")) == "kept"
    assert host_memory.planned(torch.device("cuda")) == "system: not a CPU job"
    monkeypatch.setenv("FASTDM_HOST_MEMORY", "system")
    assert host_memory.planned(torch.device("cpu")) == "system: FASTDM_HOST_MEMORY=system"
    monkeypatch.setenv("FASTDM_HOST_MEMORY", "keep")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert "another allocator" in host_memory.planned(torch.device("cpu"))
    monkeypatch.setattr(host_memory, "_state", {"state": "kept"})  # once applied, it stays so
    assert host_memory.planned(torch.device("cpu")) == "kept"
    assert host_memory.apply(torch.device("cuda")) == "system: not a CPU job"


def test_the_plan_records_it(toy_dataset):
    from conftest import plan_for
    plan = plan_for(toy_dataset, device="cpu", ipc=1, iterations=1, batch_real=4, model="ConvNetW32")
    assert plan.host_memory == host_memory.planned(torch.device("cpu"))
    assert plan.to_dict()["host_memory"] == plan.host_memory
