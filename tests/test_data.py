import os
import pickle

import numpy as np
import pytest
import torch

from PIL import Image

from conftest import class_images
from fastdm.data import ClassImages, dataset_info, default_model_for_size, load_dataset, normalize
from fastdm.data.folders import decode_image
from fastdm.errors import FastDMError


def test_digits_split_is_deterministic_stratified_and_uint8():
    d = load_dataset("digits")
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (1, 8, 8)
    assert len(d.train) + len(d.test) == 1797
    assert 0.19 < len(d.test) / 1797 < 0.21
    frac = d.test.counts.float() / (d.test.counts + d.train.counts).float()
    assert torch.all((frac - 0.2).abs() < 0.02)
    assert d.num_classes == 10 and d.train.images.max() == 255
    d2 = load_dataset("digits")
    assert torch.equal(d.train.images, d2.train.images) and torch.equal(d.test.labels, d2.test.labels)
    x = d.normalize(d.train.images).double()
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01  # its constants fit its train split
    assert d.default_strategy == "color_crop_cutout_scale_rotate"


def test_class_images_sorting_and_offsets():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    ci = ClassImages.sorted(images, torch.tensor([2, 0, 2, 1, 0, 2]), 4)
    assert ci.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert ci.images.flatten().tolist() == [1, 4, 3, 0, 2, 5]  # stable within a class
    assert ci.counts.tolist() == [2, 1, 3, 0] and ci.offsets.tolist() == [0, 2, 3, 6]
    with pytest.raises(ValueError):
        ClassImages(images, torch.tensor([1, 0, 0, 0, 0, 0]), 2)


def test_normalize_equals_torchvision_to_tensor_and_normalize():
    from torchvision import transforms
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    want = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])(Image.fromarray(arr))
    got = normalize(torch.from_numpy(arr).permute(2, 0, 1)[None], mean, std)[0]
    assert torch.equal(got, want)


def test_dataset_names_and_defaults():
    assert dataset_info("CIFAR10").name == "cifar10" and dataset_info("Fashion-MNIST").name == "fashionmnist"
    with pytest.raises(FastDMError, match="unknown dataset 'cifar11'"):
        dataset_info("cifar11")
    assert [default_model_for_size(s) for s in (8, 28, 32, 64, 128, 256)] == \
        ["ConvNet", "ConvNet", "ConvNet", "ConvNetD4", "ConvNetD5", "ConvNetD6"]
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("svhn").strategy.find("flip") < 0


def test_mnist_from_the_official_files(mnist_root):
    d = load_dataset("mnist", mnist_root)
    assert len(d.train) == 60000 and len(d.test) == 10000
    assert d.train.images.shape[1:] == (1, 28, 28) and d.train.images.dtype == torch.uint8
    assert d.train.counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert bool((d.train.labels[1:] >= d.train.labels[:-1]).all())
    assert d.mean == (0.1307,) and d.default_model == "ConvNet"


def test_missing_root_and_files_give_clear_errors(tmp_path):
    with pytest.raises(FastDMError, match="needs --data-root"):
        load_dataset("cifar10")
    with pytest.raises(FastDMError, match=r"--data-root .* does not exist"):
        load_dataset("mnist", str(tmp_path / "nope"))
    with pytest.raises(FastDMError, match=r"cifar10 not found under --data-root .*--download"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(FastDMError, match="mnist not found"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(FastDMError, match="image-size"):
        load_dataset("digits", image_size=16)


def _no_integrity(monkeypatch):
    """Generated files cannot match the official md5 sums torchvision checks."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as cifar
    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.SVHN):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("name,folder,n_cls", [("cifar10", "cifar-10-batches-py", 10),
                                               ("cifar100", "cifar-100-python", 100)])
def test_cifar_layout(tmp_path, monkeypatch, name, folder, n_cls):
    _no_integrity(monkeypatch)
    root = tmp_path / folder
    root.mkdir()
    rng = np.random.default_rng(1)
    key = "labels" if n_cls == 10 else "fine_labels"
    files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if n_cls == 10 else ["train", "test"]
    for f in files:
        n = 2 * n_cls
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: list(rng.permutation(np.arange(n) % n_cls))}
        with open(root / f, "wb") as fh:
            pickle.dump(entry, fh)
    meta_key, meta_file = ("label_names", "batches.meta") if n_cls == 10 else ("fine_label_names", "meta")
    with open(root / meta_file, "wb") as fh:
        pickle.dump({meta_key: [f"class{i}" for i in range(n_cls)]}, fh)
    d = load_dataset(name, str(tmp_path))
    assert d.train.images.shape == ((10 if n_cls == 10 else 2) * n_cls, 3, 32, 32)
    assert d.num_classes == n_cls and d.classes[3] == "class3"
    assert d.train.counts.unique().numel() == 1
    # pixel layout: CIFAR rows are R plane, G plane, B plane of 32x32
    with open(root / files[0], "rb") as fh:
        e = pickle.load(fh)
    first = torch.from_numpy(e["data"][0].reshape(3, 32, 32))
    c0 = e[key][0]
    assert any(torch.equal(first, img) for img in class_images(d.train, c0))


def test_svhn_layout(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    _no_integrity(monkeypatch)
    rng = np.random.default_rng(2)
    for split, n in (("train", 30), ("test", 20)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN labels 1..10, 10 meaning digit 0
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    d = load_dataset("svhn", str(tmp_path))
    assert d.train.images.shape == (30, 3, 32, 32) and d.train.counts.tolist() == [3] * 10
    assert d.mean == (0.4377, 0.4438, 0.4728)


def _write_image(path, size, mode="RGB", seed=0, fmt=None):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    im = Image.fromarray(arr, "RGBA").convert(mode)
    im.save(path, format=fmt)


def _tiny_imagenet(root, wnids=("n01", "n02", "n03"), per_class=20, val_per_class=4, corrupt=0):
    base = root / "tiny-imagenet-200"
    k = 0
    for w in wnids:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = (64, 64) if i % 3 else (80, 70)  # some need resizing
            _write_image(folder / f"{w}_{i}.JPEG", size, seed=k, fmt="JPEG")
            k += 1
    for i in range(corrupt):
        (base / "train" / wnids[0] / "images" / f"bad_{i}.JPEG").write_bytes(b"not a jpeg")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for w in wnids:
        for i in range(val_per_class):
            name = f"val_{w}_{i}.JPEG"
            _write_image(base / "val" / "images" / name, (64, 64), seed=k, fmt="JPEG")
            k += 1
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {w}, other" for w in wnids) + "\n")
    return base


def test_tinyimagenet_layout_with_one_corrupt_file(tmp_path, caplog):
    _tiny_imagenet(tmp_path, per_class=20, corrupt=1)  # 1 of 61: under the 2% limit
    d = load_dataset("tinyimagenet", str(tmp_path), progress=False)
    assert d.train.counts.tolist() == [20, 20, 20] and d.test.counts.tolist() == [4, 4, 4]
    assert d.train.images.shape[1:] == (3, 64, 64) and d.classes == ["thing n01", "thing n02", "thing n03"]
    assert "skipped 1 corrupt" in caplog.text and "bad_0.JPEG" in caplog.text
    assert d.default_model == "ConvNetD4" and d.mean == (0.485, 0.456, 0.406)
    d32 = load_dataset("tinyimagenet", str(tmp_path / "tiny-imagenet-200"), image_size=32, progress=False)
    assert d32.train.images.shape[1:] == (3, 32, 32) and d32.default_model == "ConvNet"


def test_tinyimagenet_too_many_corrupt_files_fail(tmp_path):
    _tiny_imagenet(tmp_path, per_class=5, corrupt=3)
    with pytest.raises(FastDMError, match=r"3 of 18 images in tinyimagenet train could not be decoded"):
        load_dataset("tinyimagenet", str(tmp_path), progress=False)


def test_tinyimagenet_layout_errors(tmp_path):
    with pytest.raises(FastDMError, match="tiny-imagenet-200"):
        load_dataset("tinyimagenet", str(tmp_path))
    base = _tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    os.remove(base / "val" / "val_annotations.txt")
    with pytest.raises(FastDMError, match="val_annotations.txt not found"):
        load_dataset("tinyimagenet", str(tmp_path), progress=False)


def test_imagefolder_mixed_modes_and_sizes(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        for ci, cls in enumerate(("cat", "dog")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i, (mode, fmt, ext) in enumerate([("L", "PNG", "png"), ("RGB", "JPEG", "jpg"),
                                                 ("RGBA", "PNG", "png"), ("CMYK", "JPEG", "jpeg"),
                                                 ("RGB", "PNG", "png"), ("P", "PNG", "png")][:n]):
                _write_image(folder / f"{i}.{ext}", (40 + 7 * i, 30 + 5 * ci), mode, seed=i, fmt=fmt)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    d = load_dataset("imagefolder", str(tmp_path), image_size=24, progress=False)
    assert d.classes == ["cat", "dog"] and d.train.counts.tolist() == [6, 6]
    assert d.test.counts.tolist() == [2, 2] and d.train.images.shape[1:] == (3, 24, 24)
    with pytest.raises(FastDMError, match="needs train/"):
        load_dataset("imagefolder", str(tmp_path / "train" / "cat"), progress=False)


def test_decode_resizes_shorter_side_then_centre_crops(tmp_path):
    path = tmp_path / "wide.png"
    _write_image(path, (60, 30), seed=3, fmt="PNG")
    got = decode_image(str(path), 15)
    im = Image.open(path).convert("RGB").resize((30, 15), Image.BICUBIC).crop((7, 0, 22, 15))
    assert torch.equal(got, torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    assert decode_image(str(tmp_path / "missing.png"), 8) is None  # unreadable: skipped
