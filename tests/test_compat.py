"""fastdm.compat against the spec and the reference's own utils.py: DiffAugment's draws
(values and order), images and RNG hygiene; get_dataset's tensors; get_eval_pool;
TensorDataset; evaluate_synset's training (same RNG calls, same weights)."""
import copy
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastdm.compat import (DiffAugment, ParamDiffAug, TensorDataset, draw_reference_table,
                           evaluate_synset, get_dataset, get_eval_pool, get_network)
from fastdm.errors import FastDMError

from spec_oracle import spec_diffaugment

STRATEGIES = ["color_crop_cutout_flip_scale_rotate", "color_crop_cutout_scale_rotate", "crop",
              "color", "cutout", "flip", "scale", "rotate", "scale_rotate_crop"]
SHAPES = [(5, 3, 12, 12), (1, 1, 9, 7), (3, 3, 8, 8), (2, 1, 28, 28), (4, 3, 32, 32)]


def _oracle(x, strategy, seed, mode):
    state = torch.get_rng_state()
    try:
        return spec_diffaugment(x, strategy, seed, mode)
    finally:
        torch.set_rng_state(state)


def _param(mode):
    p = ParamDiffAug()
    p.aug_mode = mode
    return p


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mode", ["S", "M"])
def test_same_images_as_the_spec_for_the_same_seed(strategy, mode):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{strategy}{mode}".encode()))
    for shape in SHAPES:
        for seed in (0, 1, 4242, 99999):
            x = torch.randn(*shape, generator=gen)
            want, _ = _oracle(x, strategy, seed, mode)
            got = DiffAugment(x, strategy, seed=seed, param=_param(mode))
            assert torch.equal(got, want), (strategy, mode, shape, seed)


@pytest.mark.parametrize("mode", ["S", "M"])
def test_draw_order_and_values_match_the_spec(mode):
    """Check the draws themselves: the table holds exactly what the spec's reseeded draws give."""
    strategy = "color_crop_cutout_flip_scale_rotate"
    for seed in range(40):
        x = torch.randn(3, 3, 16, 16)
        _, draws = _oracle(x, strategy, seed, mode)
        table, group, next_seed = draw_reference_table(x, strategy, seed, _param(mode))
        d = {name: v for name, v in draws}
        names = [name for name, _ in draws]
        assert next_seed == seed + len(draws)  # one seed per draw, consumed in order
        if mode == "S":
            assert names[0] == "op" and int(table.op[0]) == int(d["op"])
        else:
            assert names == ["brightness", "saturation", "contrast", "crop_x", "crop_y", "cutout_x",
                             "cutout_y", "flip", "scale_x", "scale_y", "rotate"]
        if "brightness" in d:
            assert torch.equal(table.brightness[0], (d["brightness"][0, 0, 0, 0] - 0.5) * 1.0)
            assert torch.equal(table.saturation[0], d["saturation"][0, 0, 0, 0] * 2.0)
            assert torch.equal(table.contrast[0], d["contrast"][0, 0, 0, 0] + 0.5)
        if "crop_x" in d:
            assert table.crop[0].tolist() == [int(d["crop_x"][0]), int(d["crop_y"][0])]
        if "flip" in d:
            assert bool(table.flip[0]) == bool(d["flip"][0] < 0.5)
        if "scale_x" in d:
            assert torch.equal(table.scale[0, 0, 0], d["scale_x"][0] * (1.2 - 1 / 1.2) + 1 / 1.2)
        assert table.groups == 1 and torch.equal(group, torch.zeros(3, dtype=torch.long))


def test_without_seed_draws_per_sample_from_the_global_rng_like_the_spec():
    for strategy in STRATEGIES:
        for mode in ("S", "M"):
            x = torch.randn(4, 3, 10, 10)
            torch.manual_seed(123)
            want, _ = spec_diffaugment(x, strategy, -1, mode)
            after_spec = torch.get_rng_state()
            torch.manual_seed(123)
            got = DiffAugment(x, strategy, seed=-1, param=_param(mode))
            assert torch.equal(got, want), (strategy, mode)
            assert torch.equal(torch.get_rng_state(), after_spec)  # same amount consumed


def test_global_rng_untouched_with_a_seed():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    for strategy in STRATEGIES:
        DiffAugment(torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)), strategy,
                    seed=55, param=ParamDiffAug())
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_twice_identical_and_seeds_differ():
    x = torch.randn(6, 3, 16, 16)
    a = DiffAugment(x, STRATEGIES[0], seed=10, param=ParamDiffAug())
    b = DiffAugment(x, STRATEGIES[0], seed=10, param=ParamDiffAug())
    assert torch.equal(a, b)
    outs = [DiffAugment(x, STRATEGIES[0], seed=s, param=ParamDiffAug()) for s in range(10, 20)]
    assert sum(not torch.equal(a, o) for o in outs[1:]) >= 8


def test_siamese_real_and_synthetic_batches_share_the_transform():
    real = torch.randn(1, 3, 16, 16).expand(9, 3, 16, 16).contiguous()
    syn = real[:2].clone()
    for seed in range(30):
        r = DiffAugment(real, STRATEGIES[0], seed=seed, param=ParamDiffAug())
        s = DiffAugment(syn, STRATEGIES[0], seed=seed, param=ParamDiffAug())
        assert torch.allclose(r[0], s[0], atol=1e-6) and torch.allclose(r, r[:1].expand_as(r), atol=1e-6)


def test_batch_of_one_works():
    x = torch.randn(1, 3, 8, 8)
    for strategy in STRATEGIES:
        want, _ = _oracle(x, strategy, 3, "S")
        assert torch.equal(DiffAugment(x, strategy, seed=3, param=ParamDiffAug()), want)


def test_param_object_state_and_none_strategy():
    p = ParamDiffAug()
    x = torch.randn(2, 3, 8, 8)
    assert DiffAugment(x, "none", seed=1, param=p) is x
    DiffAugment(x, "crop", seed=100, param=p)
    assert p.Siamese is True and p.latestseed == 103  # op choice + two crop draws
    with pytest.raises(FastDMError):
        DiffAugment(torch.randn(8, 8), "crop", seed=1, param=p)


def test_get_network_signature_and_embed():
    net = get_network("ConvNet", 3, 10, (32, 32))
    assert sum(p.numel() for p in net.parameters()) == 320_010
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10) and net.embed(x).shape == (2, 2048)
    with pytest.raises(FastDMError, match="unknown model"):
        get_network("ConvNetXYZ", 3, 10)


# -- the reference itself ------------------------------------------------------------------------
# A checkout of VICO-UoE/DatasetCondensation, or its bare git directory (read at HEAD).
REFERENCE = os.environ.get("FASTDM_REFERENCE_REPO", "/work/.mirror/VICO-UoE+DatasetCondensation/repo")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The reference's utils module, imported from a scratch copy (skips when unavailable)."""
    folder = tmp_path_factory.mktemp("reference")
    for name in ("utils.py", "networks.py"):
        src = os.path.join(REFERENCE, name)
        if os.path.isfile(src):
            shutil.copy(src, folder / name)
            continue
        r = subprocess.run(["git", f"--git-dir={REFERENCE}", "show", f"HEAD:{name}"],
                           capture_output=True)
        if r.returncode:
            pytest.skip(f"the reference is not at {REFERENCE} (set FASTDM_REFERENCE_REPO)")
        (folder / name).write_bytes(r.stdout)
    sys.path.insert(0, str(folder))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import importlib
            return importlib.import_module("utils")
    except Exception as e:  # its imports (scipy, torchvision) may be missing
        pytest.skip(f"the reference's utils.py does not import: {e}")
    finally:  # generic module names: keep them out of other tests' way
        sys.path.remove(str(folder))
        sys.modules.pop("utils", None)
        sys.modules.pop("networks", None)


@pytest.mark.parametrize("mode", ["S", "M"])
def test_diffaugment_equals_the_reference_code(reference, mode):
    for seed in (-1, 0, 77):
        for strategy in ("color_crop_cutout_flip_scale_rotate", "scale_rotate_crop"):
            x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(seed + 2))
            p = reference.ParamDiffAug()
            p.aug_mode = mode
            torch.manual_seed(5)
            want = reference.DiffAugment(x, strategy, seed=seed, param=p)
            state = torch.get_rng_state()
            torch.manual_seed(5)
            got = DiffAugment(x, strategy, seed=seed, param=p)
            assert torch.equal(got, want), (seed, strategy)
            if seed == -1:  # same draws from the global RNG
                assert torch.equal(torch.get_rng_state(), state)


# -- get_dataset ---------------------------------------------------------------------------------
def write_fake_mnist(root, folder="MNIST", n_train=30, n_test=12, seed=0):
    """Random images in torchvision's MNIST raw format (read offline: no checksum on these)."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, n) + y.tobytes())
        out[split] = (x, y)
    return out


def write_fake_cifar(root, monkeypatch, name, per_file=4, seed=0):
    """Random images in torchvision's CIFAR10/CIFAR100 pickle format; md5 checks switched off."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar
    cls = getattr(tvd, name)
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, cls.base_folder)
    os.makedirs(folder)
    k = 10 if name == "CIFAR10" else 100
    with open(os.path.join(folder, cls.meta["filename"]), "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{c}" for c in range(k)]}, f)
    for file, _ in cls.train_list + cls.test_list:
        with open(os.path.join(folder, file), "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8),
                         "labels" if k == 10 else "fine_labels": rng.integers(0, 4, per_file).tolist()}, f)


def write_fake_svhn(root, monkeypatch, n=6, seed=0):
    """Random images in SVHN's .mat format (labels 1..10, 10 meaning 0); no download or md5."""
    import scipy.io
    import torchvision.datasets as tvd
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.SVHN, "download", lambda self: None)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        scipy.io.savemat(os.path.join(root, tvd.SVHN.split_list[split][1]),
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": rng.integers(1, 11, (n, 1))})


def _by_class(dst):
    """(label, image) of every item, each class's images in the split's order, classes sorted."""
    items = [(int(lab), img) for img, lab in (dst[i] for i in range(len(dst)))]
    return sorted(items, key=lambda t: t[0])  # stable: keeps the order within a class


def _assert_same_items(got, want):
    assert len(got) == len(want)
    for (lg, xg), (lw, xw) in zip(_by_class(got), _by_class(want)):
        assert lg == lw and torch.equal(xg, xw)


def test_get_dataset_mnist_equals_totensor_normalize_written_out(tmp_path):
    arrays = write_fake_mnist(str(tmp_path))
    channel, im_size, num_classes, names, mean, std, dst_train, dst_test, testloader = \
        get_dataset("MNIST", str(tmp_path))
    assert (channel, im_size, num_classes, names) == (1, (28, 28), 10, [str(c) for c in range(10)])
    assert (mean, std) == ([0.1307], [0.3081])
    for split, dst in (("train", dst_train), ("test", dst_test)):
        x, y = arrays[split]
        # ToTensor (uint8 / 255 in float32) then Normalize ((x - mean) / std), per image
        want = (torch.from_numpy(x).float().div(255).unsqueeze(1) - 0.1307) / 0.3081
        expected = TensorDataset(want, torch.from_numpy(y).long())
        _assert_same_items(dst, expected)
        assert all(isinstance(dst[i][1], int) for i in range(3))  # torchvision's label type
    batches = list(testloader)
    assert testloader.batch_size == 256 and len(batches) == 1
    assert torch.equal(batches[0][0], torch.stack([dst_test[i][0] for i in range(len(dst_test))]))
    assert batches[0][1].dtype == torch.int64


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "SVHN", "CIFAR10", "CIFAR100"])
def test_get_dataset_equals_the_reference(reference, tmp_path, monkeypatch, name):
    if name.startswith("CIFAR"):
        write_fake_cifar(str(tmp_path), monkeypatch, name)
    elif name == "SVHN":
        write_fake_svhn(str(tmp_path), monkeypatch)
    else:
        write_fake_mnist(str(tmp_path), folder=name)
    got = get_dataset(name, str(tmp_path))
    want = reference.get_dataset(name, str(tmp_path))
    assert len(got) == len(want) == 9
    assert got[:6] == want[:6]  # channel, im_size, num_classes, class_names, mean, std
    _assert_same_items(got[6], want[6])
    _assert_same_items(got[7], want[7])
    # main_DM's draw of n images of class c by position picks the same images
    idx = {k: [[i for i in range(len(d)) if int(d[i][1]) == c] for c in range(got[2])]
           for k, d in (("got", got[6]), ("want", want[6]))}
    for c in range(got[2]):
        if not idx["got"][c]:
            continue
        np.random.seed(c)
        a = np.random.permutation(idx["got"][c])[:2]
        np.random.seed(c)
        b = np.random.permutation(idx["want"][c])[:2]
        for i, j in zip(a, b):
            assert torch.equal(got[6][int(i)][0], want[6][int(j)][0])


def test_get_dataset_reads_the_references_tinyimagenet_file(reference, tmp_path):
    g = torch.Generator().manual_seed(0)
    names = [f"n{c:03d}" for c in range(200)]  # the reference fixes 200 classes
    data = {"classes": names,
            "images_train": torch.randint(0, 256, (5, 3, 64, 64), generator=g, dtype=torch.uint8),
            "labels_train": torch.tensor([1, 0, 1, 1, 0]),
            "images_val": torch.randint(0, 256, (3, 3, 64, 64), generator=g, dtype=torch.uint8),
            "labels_val": torch.tensor([0, 1, 0])}
    torch.save(data, tmp_path / "tinyimagenet.pt")
    got = get_dataset("TinyImageNet", str(tmp_path))
    assert got[:6] == (3, (64, 64), 200, names, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    m, s = torch.tensor(got[4]).view(1, 3, 1, 1), torch.tensor(got[5]).view(1, 3, 1, 1)
    assert torch.equal(got[6].images, (data["images_train"].float() / 255 - m) / s)
    assert torch.equal(got[7].labels, data["labels_val"])
    want = reference.get_dataset("TinyImageNet", str(tmp_path))
    assert got[:6] == want[:6]
    assert torch.equal(got[6].images, want[6].images) and torch.equal(got[7].images, want[7].images)


def test_get_dataset_unknown_name_is_a_one_line_error(tmp_path):
    with pytest.raises(FastDMError, match="MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, TinyImageNet") as e:
        get_dataset("ImageNette", str(tmp_path))
    assert "\n" not in str(e.value)


# -- get_eval_pool, TensorDataset ----------------------------------------------------------------
def test_get_eval_pool():
    assert get_eval_pool("M", "ConvNet", "ConvNet") == ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"]
    assert get_eval_pool("D", "ConvNet", "X") == ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"]
    assert get_eval_pool("S", "ConvNetBN", "X") == ["ConvNet"]
    assert get_eval_pool("SS", "ConvNetBN", "X") == ["ConvNetBN"]
    assert get_eval_pool("anything", "ConvNet", "VGG11") == ["VGG11"]


def test_get_eval_pool_equals_the_reference(reference, capsys):
    for mode in ("M", "B", "W", "D", "A", "P", "N", "S", "SS", "X"):
        for model in ("ConvNet", "ConvNetBN", "AlexNetBN"):
            assert get_eval_pool(mode, model, "LeNet") == reference.get_eval_pool(mode, model, "LeNet")
            for name in get_eval_pool(mode, model, "LeNet"):  # each one builds
                get_network(name, 1, 2, (28, 28))


def test_tensor_dataset():
    x = torch.arange(24, dtype=torch.int64).view(2, 3, 2, 2)
    y = torch.tensor([1, 0])
    ds = TensorDataset(x.float().requires_grad_(True), y)
    assert len(ds) == 2 and ds.images.dtype == torch.float32 and not ds.images.requires_grad
    img, lab = ds[1]
    assert torch.equal(img, x[1].float()) and int(lab) == 0
    img, lab = ds[torch.tensor([1, 0])]
    assert img.shape == (2, 3, 2, 2) and lab.tolist() == [0, 1]


# -- evaluate_synset -----------------------------------------------------------------------------
def _eval_setup(mode, param=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 8, 8, generator=g), torch.arange(4).repeat_interleave(3)
    test = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.arange(4).repeat(4))
    loader = torch.utils.data.DataLoader(test, batch_size=256, shuffle=False)
    dc = {"crop": 4, "scale": 0.2, "rotate": 45, "noise": 0.001,
          "strategy": "crop_scale_rotate_noise" if mode == "dc" else "none"}
    # 4 epochs: 5 passes, the rate drops after pass 3; batches of 5 leave a partial one
    args = SimpleNamespace(lr_net=0.01, epoch_eval_train=4, batch_train=5, device="cpu",
                           dsa=mode == "dsa", dsa_strategy="color_crop_cutout_flip_scale_rotate",
                           dsa_param=param if param is not None else ParamDiffAug(), dc_aug_param=dc)
    torch.manual_seed(5)
    net = get_network("ConvNetW32", 3, 4, (8, 8)).cpu()
    return net, x, y, loader, args


def _train(fn, net, x, y, loader, args):
    torch.manual_seed(1)
    np.random.seed(1)
    out = fn(0, net, x, y, loader, args)
    return out, torch.get_rng_state(), np.random.get_state()[1].copy()


def _max_diff(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_evaluate_synset_without_augmentation_equals_sgd_written_out(capsys):
    net, x, y, loader, args = _eval_setup("none")
    ref = copy.deepcopy(net)
    (got, acc_train, acc_test), rng_after, _ = _train(evaluate_synset, net, x, y, loader, args)
    # the protocol by hand: epochs + 1 shuffled passes, x0.1 and a new SGD after pass E // 2 + 1
    torch.manual_seed(1)
    train = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)
    lr = 0.01
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for ep in range(5):
        correct = 0
        for xb, yb in train:
            out = ref(xb)
            correct += int((out.argmax(1) == yb).sum())
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep == 3:
            lr *= 0.1
            opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for _ in loader:  # the test pass draws its loader's base seed too
        pass
    assert torch.equal(rng_after, torch.get_rng_state())
    assert _max_diff(got, ref) < 1e-6 and acc_train == correct / 12
    ref.eval()
    with torch.no_grad():
        want_test = float((ref(loader.dataset.images).argmax(1) == loader.dataset.labels).float().mean())
    assert acc_test == want_test
    assert "Evaluate_00: epoch = 0004" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["dsa", "none", "dc"])
def test_evaluate_synset_equals_the_reference(reference, mode, capsys):
    """Same initial net, same RNG seeds: the same draws (order, DSA or DC augmentation) and the
    same trained weights (float tolerance), accuracies and RNG states afterwards."""
    net, x, y, loader, args = _eval_setup(mode, reference.ParamDiffAug())
    (a, acc_a, test_a), torch_a, np_a = _train(evaluate_synset, copy.deepcopy(net), x, y, loader, args)
    (b, acc_b, test_b), torch_b, np_b = _train(reference.evaluate_synset, copy.deepcopy(net), x, y,
                                               loader, args)
    assert _max_diff(a, b) < 1e-5
    assert (acc_a, test_a) == pytest.approx((acc_b, test_b))
    assert torch.equal(torch_a, torch_b) and np.array_equal(np_a, np_b)
    lines = [re.sub(r"^\[.*?\] |train time = \d+ s ", "", line)
             for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == lines[1]  # the reference's log line, but for the clock


def test_evaluate_synset_needs_the_reference_args():
    net, x, y, loader, args = _eval_setup("none")
    del args.lr_net
    with pytest.raises(FastDMError, match="args.lr_net"):
        evaluate_synset(0, net, x, y, loader, args)
    args.lr_net = 0.01
    with pytest.raises(FastDMError, match="as many labels"):
        evaluate_synset(0, net, x, y[:3], loader, args)


# -- real MNIST ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_mnist_get_dataset_and_evaluate_synset_equal_the_reference(reference, mnist_root, capsys):
    got = get_dataset("MNIST", mnist_root)
    want = reference.get_dataset("MNIST", mnist_root)
    assert got[:6] == want[:6]
    for d_got, d_want in ((got[6], want[6]), (got[7], want[7])):
        batches = [torch.utils.data.DataLoader(d, batch_size=4096) for d in (d_got, d_want)]
        xs = [torch.cat([b[0] for b in loader]) for loader in batches]
        ys = [torch.cat([b[1] for b in loader]) for loader in batches]
        order = torch.sort(ys[1], stable=True).indices  # fastdm's splits are class-sorted
        assert torch.equal(ys[0], ys[1][order]) and torch.equal(xs[0], xs[1][order])
    # DM's evaluation of 10 real images per class, DSA on, both sides from the same state
    idx = torch.cat([torch.nonzero(got[6].split.labels == c)[:10, 0] for c in range(10)])
    x = torch.stack([got[6][int(i)][0] for i in idx])
    y = torch.arange(10).repeat_interleave(10)
    args = SimpleNamespace(lr_net=0.01, epoch_eval_train=20, batch_train=256, device="cpu", dsa=True,
                           dsa_strategy="color_crop_cutout_scale_rotate",
                           dsa_param=reference.ParamDiffAug(), dc_aug_param=None)
    torch.manual_seed(0)
    net = get_network("ConvNetW32", 1, 10, (28, 28)).cpu()
    (a, acc_a, test_a), torch_a, _ = _train(evaluate_synset, copy.deepcopy(net), x, y, got[8], args)
    (b, acc_b, test_b), torch_b, _ = _train(reference.evaluate_synset, copy.deepcopy(net), x, y,
                                            want[8], args)
    assert _max_diff(a, b) < 1e-4 and torch.equal(torch_a, torch_b)
    assert acc_a == pytest.approx(acc_b) and test_a == pytest.approx(test_b, abs=2e-4)
    assert test_a > 0.5  # it learned something
