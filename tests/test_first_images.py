"""``--init first`` and ``--real-batches first``: DANCE's and NCFM's use of each class's first
images in dataset order, against references written from their loaders' rules."""
import pytest
import torch
import torch.nn.functional as F

from conftest import engine_for, make_dataset, resolved
from fastdm.data.images import ClassImages, Dataset


def interleaved(num_classes=3, per_class=(9, 7, 11), size=12, seed=0):
    """A dataset whose files hold the classes interleaved: labels[i] and images[i] in file order,
    plus the fastdm dataset built from them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    images = torch.randint(0, 256, (len(labels), 1, size, size), generator=g, dtype=torch.uint8)
    test = make_dataset(num_classes, channels=1, size=(size, size)).test
    data = Dataset("toy", ClassImages.sorted(images, labels, num_classes), test,
                   [f"c{c}" for c in range(num_classes)], (0.5,), (0.25,), "ConvNet",
                   "color_crop_cutout_scale_rotate")
    return images, labels, data


def mix_init(first: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """DANCE's Synthesizer.init('mix') for one class, from its first ipc * factor^2 images: tile
    (i, j), k = i * factor + j, of stored image s is image k * ipc + s shrunk by nearest."""
    n, ch, h, w = first.shape
    s = h // factor
    out = torch.zeros(ipc, ch, h, w)
    for i in range(factor):
        for j in range(factor):
            k = i * factor + j
            out[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] = F.interpolate(
                first[k * ipc:(k + 1) * ipc], size=(s, s))
    return out


def test_init_first_tiles_each_class_with_its_first_images():
    images, labels, data = interleaved(per_class=(10, 9, 11))
    for ipc, factor in ((1, 2), (2, 2), (2, 1), (1, 3)):
        e = engine_for(data, init="first", ipc=ipc, factor=factor, model="ConvNetW32",
                       conv="direct", device="cpu", batch_real=4, strategy="none")
        got = e.initial_state().images
        for c in range(3):
            first = data.normalize(images[labels == c][:ipc * factor ** 2])
            torch.testing.assert_close(got[c * ipc:(c + 1) * ipc], mix_init(first, ipc, factor),
                                       rtol=0, atol=0)
        e.close()
    # a shard (torchrun rank) of classes 1-2 starts from the same images
    full = engine_for(data, init="first", factor=2, model="ConvNetW32", conv="direct",
                      device="cpu", batch_real=4, strategy="none", ipc=1)
    shard = engine_for(data, classes=(1, 3), init="first", factor=2, model="ConvNetW32",
                       conv="direct", device="cpu", batch_real=4, strategy="none", ipc=1)
    assert torch.equal(shard.initial_state().images, full.initial_state().images[1:3])
    full.close()
    shard.close()


def test_first_real_batches_are_the_same_first_images_every_iteration():
    """NCFM's ClassMemDataLoader.class_sample(c, n): the class's first n images in file order,
    every call; a class with fewer gives all of them."""
    images, labels, data = interleaved()
    e = engine_for(data, real_batches="first", batch_real=8, ipc=1, model="ConvNetW32",
                   conv="direct", device="cpu", strategy="none")
    for it in (0, 1, 5):
        idx, n = e.sampler.indices(it, 0, 3)
        assert n.tolist() == [8, 7, 8]
        for c, rows in enumerate(idx.split(n.tolist())):
            assert torch.equal(data.train.images[rows], images[labels == c][:8])
        # the same rows from a one-class chunk
        assert torch.equal(e.sampler.indices(it, 1, 2)[0], idx[8:15])
    shard = engine_for(data, classes=(1, 3), real_batches="first", batch_real=8, ipc=1,
                       model="ConvNetW32", conv="direct", device="cpu", strategy="none")
    idx, n = shard.sampler.indices(3, 1, 3)
    for c, rows in zip((1, 2), idx.split(n.tolist())):  # rows of the shard's own images
        assert torch.equal(shard.stream.images[rows], images[labels == c][:8])
    shard.close()
    random = engine_for(data, batch_real=8, ipc=1, model="ConvNetW32", conv="direct",
                        device="cpu", strategy="none")
    assert not torch.equal(random.sampler.indices(0, 0, 3)[0], random.sampler.indices(1, 0, 3)[0])
    e.close()
    random.close()


def test_presets_take_first_images_as_their_code_does():
    data = make_dataset()
    assert (resolved(data, method="ncfm", embedders="random", ipc=1).real_batches,
            resolved(data, method="ncfm", embedders="random", ipc=1).init) == ("first", "first")
    dance = resolved(data, method="dance", embedders="random", ipc=1)
    assert (dance.init, dance.real_batches) == ("first", "random")
    for method in ("dm", "datadam", "idm", "m3d"):
        cfg = resolved(data, method=method, embedders="random", ipc=1)
        assert (cfg.init, cfg.real_batches) == ("real", "random"), method
    given = resolved(data, method="ncfm", embedders="random", real_batches="random",
                     init="real", ipc=1)
    assert (given.init, given.real_batches) == ("real", "random")
    # NCFM's ImageNet-1K loader (ImageNetMemoryDataLoader.class_sample) draws at random
    from fastdm.methods import preset
    row = preset("ncfm", "store", 1, "ConvNetD4", classes=1000)
    assert (row["init"], row["real_batches"]) == ("real", "random")
    assert preset("ncfm", "store", 1, "ConvNetD4", classes=100)["real_batches"] == "first"


def test_init_first_needs_enough_images_in_every_class():
    from fastdm.errors import FastDMError
    data = make_dataset(per_class=(12, 3, 15, 10))
    with pytest.raises(FastDMError, match="smallest class of toy .class c1 has 3"):
        resolved(data, init="first", ipc=1, factor=2)


def test_records_from_before_keep_random_real_batches():
    from fastdm.config import CondenseConfig
    old = resolved(make_dataset(), method="dm", ipc=1).to_dict()
    del old["real_batches"]
    assert CondenseConfig.from_dict(old).real_batches == "random"
