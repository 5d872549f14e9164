"""Condensation under torchrun (gloo, 2-3 processes on this CPU): the same synthetic set as one
process, bit for bit (classes are independent and every draw derives from (seed, iteration,
class)); resume with the same or another number of processes; a failed rank stops the job
with an error naming it and leaves no outputs.

Bit for bit needs the same CPU threads per process: torchrun gives each worker one
(OMP_NUM_THREADS=1), and with 2 threads the convolutions sum in another order (measured: 5e-6
apart after 3 iterations). So the one-process runs here use one thread too."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fastdm.cli import main

pytestmark = pytest.mark.slow

ARGS = ["--dataset", "digits", "--no-progress", "--checkpoint-every", "3"]


def torchrun(n, *args, fail=None, timeout=300):
    """``fastdm condense`` under torchrun; ``fail=(rank, iteration, 'raise'|'kill')`` makes that
    rank fail before that iteration (tests/failing_rank.py)."""
    entry = ["-m", "fastdm"] if fail is None else \
        [os.path.join(os.path.dirname(__file__), "failing_rank.py"), *map(str, fail)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           *entry, "condense", *ARGS, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def one_process(*args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["condense", *ARGS, *args])
    finally:
        torch.set_num_threads(threads)


def images(out):
    return torch.load(os.path.join(out, "synset.pt"), weights_only=False)["images"]


def resumed_from(out):
    with open(os.path.join(out, "metrics.json")) as fh:
        return json.load(fh)["resumed_from"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, 6 iterations: what every distributed variant must reproduce."""
    out = str(tmp_path_factory.mktemp("single") / "run")
    assert one_process("--iterations", "6", "--out", out) == 0
    return out


def test_two_ranks_equal_one_process(single, tmp_path):
    out = str(tmp_path / "run")
    done = torchrun(2, "--iterations", "6", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(images(out), images(single))
    m, m1 = (json.load(open(os.path.join(o, "metrics.json"))) for o in (out, single))
    # the logged loss sums the ranks' partial sums: another float summation order
    assert m["processes"] == 2 and m["loss_history"] == pytest.approx(m1["loss_history"], rel=1e-6)
    # the ranks' checkpoint files are removed once rank 0 has written the outputs
    assert sorted(os.listdir(out)) == ["grid.png", "loss.png", "metrics.json", "synset.pt"]


def test_noise_init_and_uneven_shards(tmp_path):
    """3 ranks: shards of 3, 3 and 4 classes. With one class per chunk every convolution sees
    the same batch as in one process: bit for bit. With 2 classes per chunk the chunks differ
    ((2,3) and (3,5) instead of (2,4)), and convolutions of other batch sizes round differently:
    close, not equal (measured 5e-6)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    extra = ["--iterations", "3", "--init", "noise", "--class-chunk", "1"]
    assert one_process(*extra, "--out", a) == 0
    done = torchrun(3, *extra, "--out", b)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(images(a), images(b))
    c = str(tmp_path / "c")
    done = torchrun(3, *extra[:-1], "2", "--out", c)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(images(c), images(a), atol=1e-4, rtol=0)


def test_resume_with_the_same_and_other_process_counts(single, tmp_path):
    out = str(tmp_path / "run")
    done = torchrun(2, "--iterations", "3", "--out", out, "--keep-checkpoint")
    assert done.returncode == 0, done.stderr[-3000:]
    for n, target in ((2, tmp_path / "same"), (3, tmp_path / "more"), (1, tmp_path / "one")):
        shutil.copytree(out, target)
        if n == 1:
            assert one_process("--iterations", "6", "--out", str(target), "--resume") == 0
        else:
            done = torchrun(n, "--iterations", "6", "--out", str(target), "--resume")
            assert done.returncode == 0, done.stderr[-3000:]
        assert torch.equal(images(str(target)), images(single)), n
        assert resumed_from(str(target)) == 3, n  # continued, not started again
    # and a one-process checkpoint resumed by two ranks
    one = str(tmp_path / "one3")
    assert one_process("--iterations", "3", "--out", one, "--keep-checkpoint") == 0
    done = torchrun(2, "--iterations", "6", "--out", one, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(images(one), images(single)) and resumed_from(one) == 3
    assert not os.path.exists(os.path.join(one, "checkpoint.pt"))  # superseded by the shards


def test_a_failed_rank_stops_the_job_with_a_clear_error(single, tmp_path):
    out = str(tmp_path / "run")
    done = torchrun(2, "--iterations", "6", "--checkpoint-every", "1", "--out", out,
                    fail=(1, 4, "raise"))
    assert done.returncode != 0
    assert "fastdm: error: rank 1 of 2: failed: RuntimeError: injected failure" in done.stderr
    assert not os.path.exists(os.path.join(out, "synset.pt"))  # no outputs of a failed job
    manifest = json.load(open(os.path.join(out, "checkpoint.json")))
    assert manifest["iteration"] == 4  # the last complete checkpoint
    done = torchrun(2, "--iterations", "6", "--out", out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(images(out), images(single)) and resumed_from(out) == 4


def test_a_killed_rank_is_reported_and_a_failed_resume_leaves_no_old_outputs(single, tmp_path):
    """Rank 1 dies by SIGKILL (as by the OOM killer) in a resumed run: rank 0 says it stopped
    because another rank went, torchrun names rank 1, and the finished run's earlier outputs
    are gone (they would otherwise sit beside a newer checkpoint)."""
    out = str(tmp_path / "run")
    done = torchrun(2, "--iterations", "3", "--out", out, "--keep-checkpoint")
    assert done.returncode == 0 and os.path.exists(os.path.join(out, "synset.pt"))
    done = torchrun(2, "--iterations", "6", "--checkpoint-every", "1", "--out", out, "--resume",
                    fail=(1, 4, "kill"))
    assert done.returncode != 0
    assert "fastdm: error: rank 0 of 2: stopped: another rank failed or was killed" in done.stderr, \
        done.stderr[-3000:]
    assert "rank      : 1" in done.stderr and "SIGKILL" in done.stderr  # torchrun's root cause
    assert not any(os.path.exists(os.path.join(out, f))
                   for f in ("synset.pt", "metrics.json", "grid.png", "loss.png"))
    assert json.load(open(os.path.join(out, "checkpoint.json")))["iteration"] == 4


def test_ctrl_c_stops_every_rank_at_a_log_point_with_a_checkpoint(single, tmp_path):
    import signal
    import time
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "fastdm", "condense", *ARGS, "--iterations", "100000", "--checkpoint-every", "0",
           "--out", out]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.isdir(out) and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # inside the loop
    assert p.poll() is None
    p.send_signal(signal.SIGINT)  # torchrun forwards it to both ranks
    _, err = p.communicate(timeout=120)
    # (torchrun itself then reports the signal with a traceback of its own)
    assert "rank 0 interrupted" in err and "rank 1 interrupted" in err, err[-3000:]
    assert "the same torchrun command with --resume" in err, err[-3000:]
    manifest = json.load(open(os.path.join(out, "checkpoint.json")))
    done = manifest["iteration"]
    assert done >= 10 and done % 10 == 0 and manifest["world"] == 2  # both ranks, at a log point
    done2 = torchrun(2, "--iterations", str(done + 1), "--out", out, "--resume")
    assert done2.returncode == 0, done2.stderr[-3000:]
    assert torch.load(os.path.join(out, "synset.pt"), weights_only=False)["iterations"] == done + 1


def test_shards_and_unshardable_models(tmp_path):
    from fastdm.distributed import shard
    from fastdm.errors import FastDMError
    assert [shard(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard(1000, r, 8) for r in (0, 7)] == [(0, 125), (875, 1000)]
    with pytest.raises(FastDMError, match="at least one class"):
        shard(10, 0, 11)
    done = torchrun(2, "--iterations", "1", "--out", str(tmp_path / "x"), "--model", "ConvNetBN")
    assert done.returncode != 0
    assert "BatchNorm" in done.stderr and "cannot be sharded" in done.stderr
