"""fastdm.compat against the spec: draws (values and order), images, RNG hygiene."""
import zlib

import pytest
import torch

from fastdm.compat import DiffAugment, ParamDiffAug, draw_reference_table, get_network
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
