"""Real data: DM at ipc 1 on MNIST beats random real images, evaluated the same way; the bf16
embedder reaches the fp32 accuracy.

Reduced schedule (the paper runs 20000 iterations at batch_real 256 and evaluates with 1000
epochs): 50 iterations at batch_real 64, 2 models per side, 200 epochs, the full official
test split. On 2 CPU cores this takes about four minutes.
"""
import os

import pytest
import torch

from conftest import TEST_DEVICE_NAME as DEVICE
from conftest import engine_for
from fastdm.data import load_dataset
from fastdm.evaluation import EvalConfig, evaluate_images
from fastdm.precision import cpu_native_bf16
from fastdm.runner import run

pytestmark = pytest.mark.slow


def condense_and_evaluate(data, root, precision):
    engine = engine_for(data, data_root=root, ipc=1, iterations=50, batch_real=64, device=DEVICE,
                        precision=precision, compile="on" if precision == "bf16" else "auto")
    cfg = engine.cfg
    assert engine.plan.precision == precision
    state = engine.initial_state()
    run(engine, state, progress=False)
    ev = EvalConfig(model="ConvNet", models=2, epochs=200, strategy=cfg.strategy)
    return ev, evaluate_images(state.images, torch.arange(10), data, ev, DEVICE, progress=False)


@pytest.fixture(scope="module")
def mnist(mnist_root):
    data = load_dataset("mnist", mnist_root)
    ev, dm = condense_and_evaluate(data, mnist_root, "fp32")
    return data, ev, dm


def test_dm_ipc1_beats_random_subsets_on_mnist(mnist):
    data, ev, dm = mnist
    rand = evaluate_images(None, None, data, ev, DEVICE, progress=False, subset_ipc=1)
    print(f"MNIST ipc1 reduced schedule: DM {dm['accs']} random {rand['accs']}")
    assert dm["acc_mean"] > rand["acc_mean"] + 0.10
    assert min(dm["accs"]) > max(rand["accs"])


# bf16 is fast on GPUs and on CPUs with bf16 instructions; a CPU without them emulates it
# (measured on an AVX2-only EPYC: compiled 7.5 s per iteration against fp32's 2 s), and there
# the run (12 minutes) is opt-in: FASTDM_BF16_MNIST=1. It passed there on 2026-12-01.
@pytest.mark.skipif(DEVICE == "cpu" and cpu_native_bf16() is False
                    and os.environ.get("FASTDM_BF16_MNIST") != "1",
                    reason="this CPU emulates bf16 (no avx512_bf16/amx_bf16): the run takes 12 "
                           "minutes; FASTDM_BF16_MNIST=1 runs it")
def test_bf16_embedder_reaches_the_fp32_accuracy(mnist, mnist_root):
    data, _, dm = mnist
    _, dm16 = condense_and_evaluate(data, mnist_root, "bf16")
    print(f"MNIST ipc1 reduced schedule: fp32 {dm['accs']} bf16 {dm16['accs']}")
    assert abs(dm16["acc_mean"] - dm["acc_mean"]) < 0.03
