"""Which checkpoint a resume reads when a save was cut short between writing one kind
(checkpoint.pt of one process, or per-rank files + checkpoint.json of several) and removing
the other: the later complete one."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

from fastdm.checkpoint import RunState, _payload, load_checkpoint, save_checkpoint
from fastdm.config import CondenseConfig
from fastdm.errors import FastDMError

CFG = CondenseConfig(dataset="toy", ipc=2)


def plan(classes=(0, 4)):
    """What checkpoints read of a run plan (fastdm.plan.RunPlan)."""
    return SimpleNamespace(config=CFG, data_fingerprint=None, classes=classes, device="cpu")


def state(it, value):
    return RunState(images=torch.full((8, 1, 2, 2), float(value)), momentum=None, iteration=it)


def write_ranks(out, it, value, world=2, drop=None):
    """A 2-rank checkpoint of 4 classes (ipc 2) at iteration ``it``, as the ranks write it."""
    files = []
    for r in range(world):
        lo, hi = r * 4 // world, (r + 1) * 4 // world
        name = f"checkpoint-it{it:08d}-rank{r}-of{world}.pt"
        part = RunState(images=torch.full(((hi - lo) * 2, 1, 2, 2), float(value)), momentum=None,
                        iteration=it)
        if r != drop:
            torch.save(_payload(plan((lo, hi)), part), os.path.join(out, name))
        files.append(name)
    with open(os.path.join(out, "checkpoint.json"), "w") as fh:
        json.dump({"format": "fastdm-checkpoint", "iteration": it, "world": world, "files": files}, fh)


def test_the_later_complete_checkpoint_is_resumed(tmp_path):
    out = str(tmp_path)
    save_checkpoint(out, plan(), state(5, 1.0))            # one process at iteration 5
    write_ranks(out, 3, 2.0)                            # ranks at 3, not yet superseded
    assert load_checkpoint(out, plan()).iteration == 5
    write_ranks(out, 8, 3.0)                            # ranks at 8, checkpoint.pt not yet removed
    got = load_checkpoint(out, plan())
    assert got.iteration == 8 and bool((got.images == 3.0).all())
    assert load_checkpoint(out, plan((2, 4))).images.shape[0] == 4
    write_ranks(out, 9, 4.0, drop=1)                    # a manifest naming a missing file
    assert load_checkpoint(out, plan()).iteration == 5  # falls back to checkpoint.pt
    os.remove(os.path.join(out, "checkpoint.pt"))
    with pytest.raises(FastDMError, match="names missing files"):
        load_checkpoint(out, plan())


def test_a_one_process_save_supersedes_rank_files(tmp_path):
    out = str(tmp_path)
    write_ranks(out, 3, 2.0)
    save_checkpoint(out, plan(), state(6, 1.0))
    assert sorted(os.listdir(out)) == ["checkpoint.pt"]
    assert load_checkpoint(out, plan()).iteration == 6


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_users_umask_not_the_temp_files_mode(tmp_path, mask):
    import os
    import stat
    from fastdm.io import atomic_json_dump, atomic_torch_save
    old = os.umask(mask)
    try:
        atomic_json_dump({"a": 1}, str(tmp_path / "m.json"))
        atomic_torch_save({"a": 1}, str(tmp_path / "s.pt"))
        plain = tmp_path / "plain"
        plain.write_text("x")  # what open() gives a new file under this umask
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("m.json", "s.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
