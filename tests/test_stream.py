"""Real-image streaming: tier choice, identical batches from every host tier (gathered ahead in
worker threads or not), the class-balanced sampler, and a 1000-class store condensed with
bounded memory."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import engine_for, make_dataset
from fastdm.config import CondenseConfig
from fastdm.data import load_dataset, stream
from fastdm.data.sampler import RealSampler
from fastdm.data.store import write_store
from fastdm.data.stream import RealStream, choose_tier
from fastdm.errors import FastDMError
from fastdm.runner import run

CPU = torch.device("cpu")


class Rows:
    """A stand-in sampler: the rows of a key from ``fn(key)``."""

    def __init__(self, fn):
        self.fn = fn

    def indices(self, *key, device="cpu"):
        return self.fn(key)


def test_choose_tier(monkeypatch):
    assert choose_tier(10 ** 6, CPU) == "memory"                 # already in RAM
    assert choose_tier(10 ** 6, CPU, mapped=True) == "memory"    # a small store is read in
    monkeypatch.setattr(stream, "host_available_bytes", lambda: 10 ** 6)
    assert choose_tier(10 ** 6, CPU, mapped=True) == "disk"      # larger than half of free RAM
    assert choose_tier(10 ** 6, CPU, "memory", mapped=True) == "memory"  # overridden
    for bad, msg in (("gpu", "needs a CUDA device"), ("pinned", "needs a CUDA device"),
                     ("ssd", "must be one of")):
        with pytest.raises(FastDMError, match=msg):
            choose_tier(10, CPU, bad)
    with pytest.raises(FastDMError, match="already in memory"):
        choose_tier(10, CPU, "disk", mapped=False)


def test_budgets_and_node_sharing(monkeypatch):
    monkeypatch.setattr(stream, "host_available_bytes", lambda: 4 * 10 ** 6)
    assert choose_tier(10 ** 6, CPU, mapped=True) == "memory"
    # 4 ranks on the node each copy their shard: 4 x 1 MB > half of 4 MB
    assert choose_tier(10 ** 6, CPU, mapped=True, host_sharers=4) == "disk"
    monkeypatch.setenv("FASTDM_HOST_BUDGET", "0.1")
    assert choose_tier(10 ** 6, CPU, mapped=True) == "disk"
    for bad in ("0", "1.5", "half"):
        monkeypatch.setenv("FASTDM_HOST_BUDGET", bad)
        with pytest.raises(FastDMError, match="FASTDM_HOST_BUDGET must be a fraction"):
            choose_tier(10 ** 6, CPU, mapped=True)


@pytest.fixture
def store(tmp_path):
    data = make_dataset(num_classes=5, per_class=(9, 4, 8, 7, 6), size=(12, 12))
    write_store(tmp_path / "store", {"train": (data.train.images.numpy(), data.train.counts.tolist()),
                                     "val": (data.test.images.numpy(), data.test.counts.tolist())},
                data.classes, data.mean, data.std)
    return data, str(tmp_path / "store")


def _run(data, **kw):
    e = engine_for(data, ipc=2, iterations=3, batch_real=5, model="ConvNetW32", class_chunk=2,
                   device="cpu", compile="off", **kw)
    state = e.initial_state()
    run(e, state, progress=False)
    return e, state


def test_every_tier_gives_the_same_run(store):
    data, root = store
    mapped = load_dataset("store", root)
    assert mapped.train.mapped and not data.train.mapped
    ref_e, ref = _run(data)
    assert ref_e.plan.real_tier == "memory"
    for tier in ("memory", "disk"):
        e, s = _run(mapped, real_tier=tier)
        assert e.plan.real_tier == tier
        assert torch.equal(s.images, ref.images) and s.losses == ref.losses, tier
        # batches were gathered ahead by the worker threads (chunks 2..3 of each iteration and
        # the next iteration's first), and only iteration 0's first chunks directly
        assert e.stream.stats["prefetched"] >= 6, e.stream.stats
    assert isinstance(e.stream.images, torch.Tensor) and e.stream.images.data_ptr() != 0


def test_stream_without_plan_and_with_stale_plan():
    images = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)

    st = RealStream(images, CPU, "memory", Rows(lambda key: (torch.tensor(key), torch.tensor([len(key)]))))
    st.plan([(1, 2), (3,), (4, 5)])
    out, n = st.take((3,))                     # out of order: still right
    assert torch.equal(out, images[[3]]) and n.tolist() == [1]
    st.plan([(7,)])                             # the earlier plan is dropped
    assert list(st.pending) == [(7,)]
    assert torch.equal(st.take((0, 9))[0], images[[0, 9]])  # never planned: gathered directly
    # batches gathered ahead keep their buffers while other batches are taken directly
    st.plan([(1, 2), (3, 4)])
    for i in range(8):
        assert torch.equal(st.take((i, 9 - i))[0], images[[i, 9 - i]])
    assert torch.equal(st.take((1, 2))[0], images[[1, 2]])
    assert torch.equal(st.take((3, 4))[0], images[[3, 4]])
    assert len(st.free) <= st.depth + 2  # buffers are reused, not piled up
    st.close()


def test_buffers_are_reused_across_chunk_sizes():
    images = torch.arange(400, dtype=torch.uint8).view(100, 1, 2, 2)
    st = RealStream(images, CPU, "memory",
                    Rows(lambda key: (torch.arange(key[1]) + key[0], torch.tensor([key[1]]))))
    for it in range(20):  # chunks of 10, 10 and 3 images, as a last smaller chunk gives
        keys = [(it, 10), (it + 1, 10), (it + 2, 3)]
        st.plan(keys)
        for k in keys:
            got, _ = st.take(k)
            assert torch.equal(got, images[k[0]:k[0] + k[1]])
    assert st.stats["buffers"] <= st.depth + 2, st.stats
    st.close()


def test_gather_threads_run_their_torch_ops_inline():
    """The stream's gatherers run with one OpenMP thread each (fastdm.worker_threads): a torch op
    in a worker thread with a team of its own would slow every parallel op of the main thread
    (libgomp's throttled spinning once threads outnumber cores). The main thread keeps its
    count."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's parallel backend here is not OpenMP")
    main = torch.get_num_threads()
    seen = []
    st = RealStream(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), CPU, "memory",
                    Rows(lambda key: (seen.append(torch.get_num_threads()) or torch.tensor(key),
                                      torch.tensor([len(key)]))))
    st.plan([(0, 1), (2, 3)])
    st.take((0, 1))
    st.take((2, 3))
    st.close()
    assert seen == [1, 1]
    assert torch.get_num_threads() == main


def test_one_thread_finds_torchs_runtime_beside_another():
    """A second OpenMP runtime in the process (scikit-learn ships its own libgomp) must not be
    the one set: one_thread checks that torch's count changed."""
    pytest.importorskip("sklearn.utils._openmp_helpers")
    from concurrent.futures import ThreadPoolExecutor

    from fastdm.worker_threads import one_thread
    with ThreadPoolExecutor(1, initializer=one_thread) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1


def test_a_failed_gather_names_its_batch():
    st = RealStream(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), CPU, "memory",
                    Rows(lambda key: (torch.tensor([99]), torch.tensor([1]))))
    st.plan([(0, 1)])
    with pytest.raises(FastDMError, match=r"gathering the real images of \(0, 1\) failed"):
        st.take((0, 1))
    st.close()


def test_sampler_is_class_balanced_without_replacement(toy_dataset):
    counts, offsets = toy_dataset.train.counts, toy_dataset.train.offsets
    sampler = RealSampler(counts, offsets, batch_real=10, seed=0)
    prev = None
    for it in range(5):
        idx, n = sampler.indices(it, 0, 4)
        assert n.tolist() == counts.clamp(max=10).tolist()
        parts = idx.split(n.tolist())
        for c, p in enumerate(parts):
            assert len(set(p.tolist())) == len(p)  # without replacement
            assert bool(((p >= offsets[c]) & (p < offsets[c] + counts[c])).all())
            # a function of (seed, iteration, class): the same draw in any chunk
            alone, _ = sampler.indices(it, c, c + 1)
            assert torch.equal(alone, p)
        if prev is not None:
            assert not torch.equal(idx, prev)
        prev = idx


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from benchmarks.measure import peak_rss_bytes, reset_peak_rss
    from fastdm.condense_job import condense_dataset
    from fastdm.config import CondenseConfig
    from fastdm.data.store import write_store
    root, out = sys.argv[1], sys.argv[2]
    k, n, s = 1000, 6, 16
    rng = np.random.default_rng(0)
    write_store(root, {"train": (rng.integers(0, 256, (k * n, 3, s, s), dtype=np.uint8), [n] * k),
                       "val": (rng.integers(0, 256, (k, 3, s, s), dtype=np.uint8), [1] * k)},
                [f"c{c}" for c in range(k)])
    import torch
    torch.zeros(1)  # libraries loaded before the baseline
    # the peak mark from now on (importing torch peaks far above what it keeps resident)
    assert reset_peak_rss(), "cannot reset the peak RSS mark here"
    base = peak_rss_bytes()
    res = condense_dataset(CondenseConfig(dataset="store", data_root=root, ipc=1, iterations=2,
                                          batch_real=4, model="ConvNetW32", device="cpu",
                                          real_tier="disk", checkpoint_every=0,
                                          class_chunk=int(sys.argv[3]) if len(sys.argv) > 3 else None),
                           out=out, progress=False)
    peak = peak_rss_bytes()
    plan = res["plan"]
    print(json.dumps({"growth_mb": (peak - base) / 2**20, "chunk": plan.class_chunk,
                      "tier": plan.real_tier, "estimated_mb": plan.estimated_peak_bytes / 2**20,
                      "per_it": res["metrics"]["timings"]["per_iteration_s"]}))
""")



@pytest.mark.slow
def test_1000_class_store_condenses_with_bounded_memory(tmp_path):
    """The automatic chunk bounds what grows with the classes: measured (peak RSS over the
    process after its imports, 2 iterations) 288 MB with the automatic chunk of 409 classes and
    515 MB with all 1000 in one chunk, of which about 150 MB is the runtime's own (libraries,
    allocator caches: 152 MB with one class per chunk). The uint8 store is 4.6 MB and the
    synthetic set 3 MB: what grows is the activations. The run plan's estimate (working memory,
    not the runtime's) follows the chunk: its difference between the two runs is within 2x of the
    measured one (163 vs 227 MB)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {}
    for name, chunk in (("auto", []), ("all", ["1000"])):
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / f"store-{name}"),
                               str(tmp_path / f"run-{name}"), *chunk], capture_output=True,
                              text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(runs)
    auto, everything = runs["auto"], runs["all"]
    assert auto["tier"] == "disk" and auto["chunk"] < 1000 and everything["chunk"] == 1000
    assert auto["growth_mb"] < 0.75 * everything["growth_mb"], runs
    grown = everything["growth_mb"] - auto["growth_mb"]
    estimated = everything["estimated_mb"] - auto["estimated_mb"]
    assert 0.5 < grown / estimated < 2, runs
    synset = torch.load(tmp_path / "run-auto" / "synset.pt", weights_only=False)
    assert synset["images"].shape == (1000, 3, 16, 16)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_shard_engine_holds_and_streams_only_its_classes(store, mapped):
    """A rank's engine (classes [1, 4)) keeps only those classes' rows and gathers the same
    batches as the whole-set engine; the index arithmetic equals the boolean-mask selection."""
    from fastdm import rng
    data, root = store
    if mapped:
        data = load_dataset("store", root)
    kw = dict(ipc=2, iterations=3, batch_real=5, model="ConvNetW32", class_chunk=2, device="cpu",
              compile="off")
    whole, part = engine_for(data, **kw), engine_for(data, classes=(1, 4), **kw)
    counts = data.train.counts
    assert part.stream.images.shape[0] == int(counts[1:4].sum()) < whole.stream.images.shape[0]
    if mapped:  # the auto tier read only the shard into RAM; the disk tier maps a view of it
        assert part.plan.real_tier == "memory"
        disk = engine_for(data, classes=(1, 4), real_tier="disk", **kw)
        assert disk.stream.images.data_ptr() == data.train.images[int(counts[0])].data_ptr()
        disk.close()
    for it in (0, 2):
        for c0, c1 in ((1, 3), (3, 4)):
            a, na = whole.stream.take((it, c0, c1))
            a = a.clone()
            b, nb = part.stream.take((it, c0, c1))
            assert torch.equal(a, b) and torch.equal(na, nb)
            pos, valid = rng.sample_without_replacement(counts[c0:c1], 5, 0, rng.REAL, it,
                                                        classes=torch.arange(c0, c1))
            rows, n = whole.sampler.indices(it, c0, c1)
            assert torch.equal(rows, (data.train.offsets[c0:c1, None] + pos)[valid])
            assert torch.equal(n, valid.sum(1))
    s0 = whole.initial_state().images[2:8]
    assert torch.equal(part.initial_state().images, s0)
    whole.close()
    part.close()


def test_resume_refuses_a_store_written_anew_at_the_same_path(store, tmp_path):
    import shutil
    from fastdm.condense_job import condense_dataset
    data, root = store
    cfg = CondenseConfig(dataset="store", data_root=root, ipc=2, iterations=2, batch_real=5,
                         model="ConvNetW32", device="cpu", compile="off", checkpoint_every=1,
                         keep_checkpoint=True)
    out = str(tmp_path / "run")
    condense_dataset(cfg, out, progress=False)
    again = CondenseConfig(**{**cfg.to_dict(), "iterations": 3})
    condense_dataset(again, out, resume=True, progress=False)  # the same store: resumes
    shutil.rmtree(root)
    write_store(root, {"train": (data.train.images.numpy(), data.train.counts.tolist()),
                       "val": (data.test.images.numpy(), data.test.counts.tolist())},
                data.classes, data.mean, data.std)
    with pytest.raises(FastDMError, match="data_fingerprint"):
        condense_dataset(CondenseConfig(**{**cfg.to_dict(), "iterations": 4}), out, resume=True,
                         progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU tiers need CUDA")
def test_every_cuda_tier_gives_the_same_run(store):
    """gpu (on-device gather), pinned (pinned buffers + side-stream copies) and disk on CUDA:
    the same images; depth 1 reuses each pinned buffer as early as allowed."""
    data, root = store
    mapped = load_dataset("store", root)
    runs = {}
    for tier in ("gpu", "pinned", "disk"):
        e = engine_for(mapped, ipc=2, iterations=3, batch_real=5, model="ConvNetW32",
                       class_chunk=2, device="cuda", compile="off", precision="fp32", real_tier=tier)
        e.stream.depth = 1
        state = e.initial_state()
        run(e, state, progress=False)
        assert e.plan.real_tier == tier
        runs[tier] = state.images.cpu()
        e.close()
    assert torch.equal(runs["gpu"], runs["pinned"]) and torch.equal(runs["gpu"], runs["disk"])
