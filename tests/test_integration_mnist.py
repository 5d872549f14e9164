"""Real data: DM at ipc 1 on MNIST beats random real images, evaluated the same way; the bf16
embedder reaches the fp32 accuracy.

Reduced schedule (the paper runs 20000 iterations at batch_real 256 and evaluates with 1000
epochs): 50 iterations at batch_real 64, 2 models per side, 200 epochs, the full official
test split. On 2 CPU cores this takes about four minutes.
"""
import os

import pytest
import torch

from fastdm.condense import DMEngine, run
from fastdm.config import CondenseConfig
from fastdm.data import load_dataset
from fastdm.evaluate import EvalConfig, evaluate_images

pytestmark = pytest.mark.slow

DEVICE = os.environ.get("FASTDM_TEST_DEVICE", "cpu")


def condense_and_evaluate(data, root, precision):
    cfg = CondenseConfig(dataset="mnist", data_root=root, ipc=1, iterations=50, batch_real=64,
                         device=DEVICE, precision=precision,
                         compile="on" if precision == "bf16" else "auto").resolved(data)
    engine = DMEngine(cfg, data, DEVICE)
    assert engine.precision == precision
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


# bf16 is the GPU's fast arithmetic; on this CPU its convolutions at MNIST's shapes are slow
# (compiled: 7.5 s per iteration against fp32's 2 s; eager: 15x slower), so the CPU run (12
# minutes) is opt-in: FASTDM_BF16_MNIST=1. It passed on the CPU on 2026-12-01 (RESULTS.md).
@pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("FASTDM_BF16_MNIST") != "1",
                    reason="bf16 on the CPU takes 12 minutes here: FASTDM_BF16_MNIST=1 runs it "
                           "(it runs by default with FASTDM_TEST_DEVICE=cuda)")
def test_bf16_embedder_reaches_the_fp32_accuracy(mnist, mnist_root):
    data, _, dm = mnist
    _, dm16 = condense_and_evaluate(data, mnist_root, "bf16")
    print(f"MNIST ipc1 reduced schedule: fp32 {dm['accs']} bf16 {dm16['accs']}")
    assert abs(dm16["acc_mean"] - dm["acc_mean"]) < 0.03
