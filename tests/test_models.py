import math

import pytest
import torch
from torch import nn

from fastdm.errors import FastDMError
from fastdm.models import MODELS, build_model, create_model, init_parameters_, model_names, uses_batchnorm

# Parameter counts of the reference architectures (VICO-UoE/DatasetCondensation networks.py,
# counted with that code), 10 classes: (1 x 28 x 28, 3 x 32 x 32, 3 x 64 x 64); None where the
# reference architecture cannot take the size (fastdm sizes the classifier from the input).
REFERENCE_COUNTS = {
    "MLP": (118282, 411146, None), "ConvNet": (317706, 320010, 381450),
    "LeNet": (61706, 62006, None), "AlexNet": (1865802, 1872202, None),
    "AlexNetBN": (1867722, 1874122, None), "VGG11": (9229962, 9231114, None),
    "VGG11BN": (9229962, 9231114, None), "ResNet18": (11172810, 11173962, None),
    "ResNet18BN": (11172810, 11173962, None), "ResNet18BN_AP": (11213770, 11250762, None),
    "ConvNetD1": (329226, 331530, 1314570), "ConvNetD2": (231306, 233610, 479370),
    "ConvNetD3": (317706, 320010, 381450), "ConvNetD4": (450186, 452490, 467850),
    "ConvNetW32": (24138, 24714, 40074), "ConvNetW64": (85130, 86282, 117002),
    "ConvNetW128": (317706, 320010, 381450), "ConvNetW256": (1225226, 1229834, 1352714),
    "ConvNetAS": (317706, 320010, 381450), "ConvNetAR": (317706, 320010, 381450),
    "ConvNetAL": (317706, 320010, 381450), "ConvNetASwish": (317706, 320010, 381450),
    "ConvNetASwishBN": (317706, 320010, 381450), "ConvNetNN": (316938, 319242, 380682),
    "ConvNetBN": (317706, 320010, 381450), "ConvNetLN": (661002, 663306, 1756938),
    "ConvNetIN": (317706, 320010, 381450), "ConvNetGN": (317706, 320010, 381450),
    "ConvNetNP": (1607946, 1610250, 5542410), "ConvNetMP": (317706, 320010, 381450),
    "ConvNetAP": (317706, 320010, 381450),
}
SIZES = [(1, 28), (3, 32), (3, 64)]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_convnet_cifar_parameter_count_from_the_spec():
    m = create_model("ConvNet", 3, 10, 32)
    assert n_params(m) == 320_010
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    assert [n_params(c) for c in convs] == [3584, 147584, 147584]
    assert n_params(m.classifier) == 20490


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name):
    for (c, s), want in zip(SIZES, REFERENCE_COUNTS[name]):
        if want is not None:
            assert n_params(create_model(name, c, 10, s)) == want, (name, c, s)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("c,s", SIZES)
def test_output_and_embed_shapes(name, c, s):
    if name == "ConvNetD6" and s < 64:  # six 2x2 poolings need 64 px
        with pytest.raises(FastDMError, match="cannot take"):
            create_model(name, c, 7, s)
        return
    m = create_model(name, c, 7, s)
    x = torch.randn(2, c, s, s)
    out, emb = m(x), m.embed(x)
    assert out.shape == (2, 7)
    assert emb.dim() == 2 and emb.shape[0] == 2
    last = [l for l in m.modules() if isinstance(l, nn.Linear)][-1]
    assert emb.shape[1] == last.in_features


# The reference's first-layer rule keys on the channel count alone (networks.py: `padding=3 if
# channel == 1` and the like): (first conv padding, spatial side after every conv, embedding
# side of the feature blocks' output) for 1-channel inputs; None where the architecture cannot take the size. Derived by hand
# from the layer definitions (side + 2 * pad - kernel + 1, then halved by each 2x2 pooling).
ONE_CHANNEL = {
    "ConvNet": (3, {8: ([12, 6, 3], 1), 16: ([20, 10, 5], 2), 28: ([32, 16, 8], 4),
                    64: ([68, 34, 17], 8)}),
    "ConvNetD4": (3, {8: None, 16: ([20, 10, 5, 2], 1), 28: ([32, 16, 8, 4], 2),
                      64: ([68, 34, 17, 8], 4)}),
    "LeNet": (2, {8: None, 16: ([16, 4], 2), 28: ([28, 10], 5), 64: ([64, 28], 14)}),
    "AlexNet": (4, {8: ([12, 6, 3, 3, 3], 1), 16: ([20, 10, 5, 5, 5], 2),
                    28: ([32, 16, 8, 8, 8], 4), 64: ([68, 34, 17, 17, 17], 8)}),
    "VGG11": (3, {8: None, 16: None, 28: ([32, 16, 8, 8, 4, 4, 2, 2], 1),
                  64: ([68, 34, 17, 17, 8, 8, 4, 4], 2)}),
}
ONE_CHANNEL["AlexNetBN"] = ONE_CHANNEL["AlexNet"]
ONE_CHANNEL["VGG11BN"] = ONE_CHANNEL["VGG11"]
# every ConvNet variant of depth 3 with pooling follows ConvNet's table
for _name in ("ConvNetW32", "ConvNetAS", "ConvNetBN", "ConvNetLN", "ConvNetNN", "ConvNetMP",
              "ConvNetGN", "ConvNetASwishBN"):
    ONE_CHANNEL[_name] = ONE_CHANNEL["ConvNet"]


def _conv_sides(m, x):
    sides = []
    hooks = [c.register_forward_hook(lambda mod, a, out: sides.append(out.shape[-1]))
             for c in m.modules() if isinstance(c, nn.Conv2d)]
    maps = m.features(x)
    for h in hooks:
        h.remove()
    return sides, maps


@pytest.mark.parametrize("name", sorted(ONE_CHANNEL))
@pytest.mark.parametrize("size", [8, 16, 28, 64])
def test_one_channel_first_layer_padding_at_every_size(name, size):
    """Not only 28x28: 8x8 digits, 16 px and 64 px 1-channel folders get the reference's padding
    too (fastdm once applied it at 28x28 alone, a different network everywhere else)."""
    pad, table = ONE_CHANNEL[name]
    want = table[size]
    if want is None:
        with pytest.raises(FastDMError, match="cannot take"):
            create_model(name, 1, 10, size)
        return
    m = create_model(name, 1, 10, size).eval()
    first = next(c for c in m.modules() if isinstance(c, nn.Conv2d))
    assert first.padding == (pad, pad)
    sides, maps = _conv_sides(m, torch.randn(2, 1, size, size))
    want_sides, side = want
    assert sides == want_sides
    assert tuple(maps.shape[-2:]) == (side, side)
    # three channels keep the default padding
    default = {3: 1, 2: 0, 4: 2}[pad]
    rgb = next(c for c in create_model(name, 3, 10, 32).modules() if isinstance(c, nn.Conv2d))
    assert rgb.padding == (default, default)


def test_digits_embedder_has_the_reference_first_layer():
    """The embedded default (1 x 8 x 8): padding 3, so the maps are 12 -> 6 -> 3 -> 1."""
    from fastdm.data import load_dataset
    d = load_dataset("digits")
    m = create_model(d.default_model, d.channels, d.num_classes, d.image_size)
    assert m.features[0].padding == (3, 3)
    assert _conv_sides(m, torch.randn(1, 1, 8, 8))[0] == [12, 6, 3]


def test_resnet_has_no_one_channel_rule():
    conv = create_model("ResNet18", 1, 10, 28).conv1
    assert conv.padding == (1, 1)


def test_convnet_variants_and_28_to_32_rule():
    m = create_model("ConvNet", 1, 10, 28)
    assert m.features[0].padding == (3, 3) and m.feature_shape == (128, 4, 4)
    assert create_model("ConvNet", 3, 10, 32).feature_shape == (128, 4, 4)
    assert create_model("ConvNetD4", 3, 10, 64).feature_shape == (128, 4, 4)
    assert create_model("ConvNet", 1, 10, 8).feature_shape == (128, 1, 1)
    kinds = {name: {type(l).__name__ for l in create_model(name, 3, 10, 32).features}
             for name in ("ConvNetBN", "ConvNetLN", "ConvNetNN", "ConvNetMP", "ConvNetNP", "ConvNetAS",
                          "ConvNetAL", "ConvNetASwish", "ConvNetGN")}
    assert "BatchNorm2d" in kinds["ConvNetBN"] and "LayerNorm" in kinds["ConvNetLN"]
    assert not kinds["ConvNetNN"] & {"GroupNorm", "BatchNorm2d", "LayerNorm"}
    assert "MaxPool2d" in kinds["ConvNetMP"] and not kinds["ConvNetNP"] & {"AvgPool2d", "MaxPool2d"}
    assert "Sigmoid" in kinds["ConvNetAS"] and "LeakyReLU" in kinds["ConvNetAL"]
    assert "Swish" in kinds["ConvNetASwish"]
    gn = [l for l in create_model("ConvNetGN", 3, 10, 32).features if isinstance(l, nn.GroupNorm)][0]
    assert gn.num_groups == 4
    inn = [l for l in create_model("ConvNet", 3, 10, 32).features if isinstance(l, nn.GroupNorm)][0]
    assert inn.num_groups == 128
    assert uses_batchnorm("ConvNetBN") and uses_batchnorm("ResNet18BN_AP") and not uses_batchnorm("ConvNet")


def test_too_small_images_give_a_clear_error():
    with pytest.raises(FastDMError, match="ConvNetD4 cannot take 8x8 images"):
        create_model("ConvNetD4", 1, 10, 8)
    with pytest.raises(FastDMError, match="ResNet18 cannot take 8x8"):
        create_model("ResNet18", 1, 10, 8)
    with pytest.raises(FastDMError, match="unknown model 'ConvNetZ'"):
        create_model("ConvNetZ", 3, 10, 32)
    assert n_params(create_model("convnet", 3, 10, 32)) == 320_010  # names are case-tolerant


def test_build_model_leaves_the_global_rng_alone_and_is_deterministic():
    state = torch.get_rng_state()
    a = build_model("ConvNetBN", 3, 10, 32, 1, 2, 3)
    b = build_model("ConvNetBN", 3, 10, 32, 1, 2, 3)
    c = build_model("ConvNetBN", 3, 10, 32, 1, 2, 4)
    assert torch.equal(state, torch.get_rng_state())
    for (na, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        if na.endswith("weight") and pa.dim() > 1:
            assert not torch.equal(pa, pc)
    assert torch.equal(a.features[1].running_var, torch.ones(128))


def test_init_matches_the_default_distribution():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv/linear weights and biases (what
    nn.Module's reset_parameters gives), ones/zeros for norm layers."""
    m = build_model("ConvNetBN", 3, 10, 32, 5)
    for layer in m.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            b = 1 / math.sqrt(layer.weight[0].numel())
            w = layer.weight
            assert w.abs().max() <= b and w.abs().max() > 0.99 * b
            assert abs(w.std().item() - b / math.sqrt(3)) < 0.03 * b
            assert abs(w.mean().item()) < 0.03 * b
            assert layer.bias.abs().max() <= b
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0)


def test_init_rejects_unknown_parametrised_modules():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="Weird"):
        init_parameters_(nn.Sequential(Weird()), 0)


def test_registry_has_every_spec_name():
    spec = ["ConvNet", "ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4", "ConvNetW32", "ConvNetW64",
            "ConvNetW128", "ConvNetW256", "ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetASwish",
            "ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN", "ConvNetNP", "ConvNetMP",
            "ConvNetAP", "ConvNetASwishBN", "MLP", "LeNet", "AlexNet", "AlexNetBN", "VGG11", "VGG11BN",
            "ResNet18", "ResNet18BN", "ResNet18BN_AP", "ConvNetD5", "ConvNetD6"]
    assert set(spec) <= set(MODELS)
