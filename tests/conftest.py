import os
import shutil

# Triton kernels run on the CPU in Triton's interpreter, which is chosen when a kernel is
# defined: set it before fastdm.ops is imported. FASTDM_TEST_DEVICE=cuda (on a GPU machine)
# runs the same kernel tests compiled, on CUDA.
TEST_DEVICE_NAME = os.environ.get("FASTDM_TEST_DEVICE", "cpu")
if TEST_DEVICE_NAME != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

from fastdm.data import ClassImages, Dataset

# the device of the tests that run on CUDA when FASTDM_TEST_DEVICE=cuda (kernels, tiers)
TEST_DEVICE = torch.device(TEST_DEVICE_NAME)

# The official MNIST files live in the steering repo's shared/ folder, beside this checkout.
SHARED = os.environ.get("FASTDM_SHARED_DATA",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """A private copy of the official MNIST files (torchvision extracts them offline)."""
    src = os.path.join(SHARED, "MNIST")
    if not os.path.isdir(src):
        if os.environ.get("CI"):  # in CI the real-data tests must run, not skip
            pytest.fail(f"{src} is missing; set FASTDM_SHARED_DATA to the folder holding MNIST/")
        pytest.skip(f"{src} is not present (set FASTDM_SHARED_DATA)")
    root = tmp_path_factory.mktemp("mnist_root")
    shutil.copytree(src, root / "MNIST")
    return str(root)


def make_dataset(num_classes=4, per_class=(12, 9, 15, 10), channels=3, size=(16, 16), seed=0,
                 name="toy", test_per_class=5) -> Dataset:
    """A small random uint8 dataset; each class has a bright band at its own rows (a spatial
    pattern, which instance-normalised ConvNets can see, unlike a brightness offset)."""
    g = torch.Generator().manual_seed(seed)
    per_class = list(per_class)[:num_classes]

    def split(counts):
        images, labels = [], []
        for c, n in enumerate(counts):
            base = torch.randint(0, 256, (n, channels, *size), generator=g)
            base = base * 0.5
            band = slice(c * size[0] // num_classes, (c + 1) * size[0] // num_classes)
            base[:, :, band, :] += 120
            base = base.clamp(0, 255)
            images.append(base.to(torch.uint8))
            labels += [c] * n
        return ClassImages.sorted(torch.cat(images), torch.tensor(labels), num_classes)

    return Dataset(name, split(per_class), split([test_per_class] * num_classes),
                   [f"c{c}" for c in range(num_classes)], (0.5,) * channels, (0.25,) * channels,
                   "ConvNet", "color_crop_cutout_flip_scale_rotate")


@pytest.fixture
def toy_dataset():
    return make_dataset()


def class_images(split, c: int) -> torch.Tensor:
    """The images of class ``c`` of a class-sorted split (fastdm.data.ClassImages)."""
    start = int(split.offsets[c])
    return split.images[start:start + int(split.counts[c])]


def resolved(data, **settings):
    """The config of ``settings`` with the dataset's defaults filled in and checked."""
    from fastdm.config import CondenseConfig, resolve_config
    return resolve_config(CondenseConfig(dataset=data.name, **settings), data)


def plan_for(data, device=None, classes=None, **settings):
    """The run plan of ``settings`` on ``data`` (``device`` overrides the settings' device)."""
    from fastdm.config import CondenseConfig
    from fastdm.plan import make_plan
    return make_plan(CondenseConfig(dataset=data.name, **settings), data, device, classes)


def engine_for(data, device=None, classes=None, compile_backend="inductor", **settings):
    """A DM engine for ``settings`` on ``data``, built from its run plan as fastdm condense does."""
    from fastdm.engine import DMEngine
    return DMEngine(plan_for(data, device, classes, **settings), data, compile_backend=compile_backend)


def small_engine(data, classes=None, **settings):
    """A seconds-fast engine on ``data``: ipc 2, 4 iterations, 6 real images per class, a
    32-wide ConvNet, on the test device (settings override; ``classes``: a shard)."""
    return engine_for(data, classes=classes, **{"ipc": 2, "iterations": 4, "batch_real": 6, "model": "ConvNetW32",
                               "device": str(TEST_DEVICE), **settings})


@pytest.fixture
def three_classes():
    """3 classes of 9, 4 and 8 images of 12 x 12 (class 1 has fewer than a batch of 6)."""
    return make_dataset(num_classes=3, per_class=(9, 4, 8), size=(12, 12))
