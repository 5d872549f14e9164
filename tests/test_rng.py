import torch

from fastdm import rng


def test_same_words_same_values_and_broadcasting():
    idx = torch.arange(1000)
    a = rng.uniform(7, rng.AUG, 3, idx)
    b = rng.uniform(7, rng.AUG, 3, idx)
    assert torch.equal(a, b)
    # Element i depends only on its own words, not on the batch it is drawn with.
    assert torch.equal(rng.uniform(7, rng.AUG, 3, idx[500:]), a[500:])
    assert torch.equal(rng.uniform(7, rng.AUG, 3, 123), a[123])


def test_different_words_differ():
    idx = torch.arange(4096)
    a = rng.uniform(1, 2, 3, idx)
    for other in (rng.uniform(1, 2, 4, idx), rng.uniform(2, 2, 3, idx), rng.uniform(1, 3, 3, idx)):
        assert (a != other).float().mean() > 0.99
        assert abs(torch.corrcoef(torch.stack([a, other]))[0, 1]) < 0.05


def test_uniform_statistics():
    u = rng.uniform(0, torch.arange(200_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)
    # neighbouring counters are uncorrelated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]) < 0.01


def test_randint_range_and_coverage():
    r = rng.randint(-4, 5, 3, torch.arange(50_000))
    assert r.min() == -4 and r.max() == 4
    counts = torch.bincount(r + 4)
    assert counts.numel() == 9 and torch.all((counts / r.numel() - 1 / 9).abs() < 0.01)


def test_normal_statistics():
    z = rng.normal(5, torch.arange(100_000))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert torch.isfinite(z).all()


def test_large_and_tensor_words():
    big = 2 ** 40 + 17
    a = rng.uniform(big, torch.tensor([big, 3]))
    assert a.shape == (2,) and a[0] != a[1]
    assert rng.uniform(big) != rng.uniform(big + 2 ** 32)


def test_sample_without_replacement_properties():
    counts = torch.tensor([5, 300, 1, 40])
    classes = torch.tensor([0, 1, 2, 3])
    pos, valid = rng.sample_without_replacement(counts, 32, 9, rng.REAL, 0, classes=classes)
    assert pos.shape == (4, 32)
    assert valid.sum(1).tolist() == [5, 32, 1, 32]
    for c in range(4):
        chosen = pos[c][valid[c]]
        assert len(set(chosen.tolist())) == len(chosen)
        assert chosen.min() >= 0 and chosen.max() < counts[c]
    # a class's draw depends on its own words only, not on which classes come along
    pos1, valid1 = rng.sample_without_replacement(counts[1:2], 32, 9, rng.REAL, 0, classes=classes[1:2])
    assert torch.equal(pos1[0][valid1[0]], pos[1][valid[1]])
    # different iterations give different subsets
    pos2, _ = rng.sample_without_replacement(counts, 32, 9, rng.REAL, 1, classes=classes)
    assert not torch.equal(pos2[1], pos[1])


def test_sampling_is_uniform_over_images():
    counts = torch.tensor([20])
    hits = torch.zeros(20)
    for it in range(2000):
        pos, _ = rng.sample_without_replacement(counts, 5, 1, it, classes=torch.tensor([0]))
        hits[pos[0]] += 1
    assert torch.all((hits / 2000 - 0.25).abs() < 0.04)


def test_permutation():
    p = rng.permutation(1000, 3, 4)
    assert torch.equal(torch.sort(p).values, torch.arange(1000))
    assert not torch.equal(p, torch.arange(1000))
    assert torch.equal(p, rng.permutation(1000, 3, 4))


def test_global_rng_untouched():
    state = torch.get_rng_state()
    rng.uniform(1, torch.arange(100))
    rng.normal(1, torch.arange(100))
    rng.sample_without_replacement(torch.tensor([10]), 3, 1, classes=torch.tensor([0]))
    assert torch.equal(state, torch.get_rng_state())
