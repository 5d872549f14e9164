"""Models by name, as in the reference's get_network, each with ``embed`` (features before
the final classifier).

``build_model`` constructs on the meta device and then draws the default initialisation
from fastdm.rng words, so building a model never consumes torch's global RNG.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import FastDMError
from .classic import MLP, VGG11, AlexNet, LeNet
from .convnet import ConvNet
from .init import init_parameters_
from .resnet import ResNet18

__all__ = ["MODELS", "model_names", "create_model", "build_model", "init_parameters_", "uses_batchnorm",
           "ConvNet"]

_CONVNET_VARIANTS = {
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in range(1, 7)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    "ConvNetAS": {"act": "sigmoid"}, "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"}, "ConvNetASwish": {"act": "swish"},
    "ConvNetASwishBN": {"act": "swish", "norm": "batchnorm"},
    "ConvNetNN": {"norm": "none"}, "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"}, "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pool": "none"}, "ConvNetMP": {"pool": "maxpooling"},
    "ConvNetAP": {"pool": "avgpooling"},
}


def _convnet(name, kw):
    return lambda c, n, s: ConvNet(c, n, im_size=s, name=name, **kw)


MODELS: dict[str, Callable[[int, int, tuple], nn.Module]] = {
    **{name: _convnet(name, kw) for name, kw in _CONVNET_VARIANTS.items()},
    "MLP": lambda c, n, s: MLP(c, n, s),
    "LeNet": lambda c, n, s: LeNet(c, n, s),
    "AlexNet": lambda c, n, s: AlexNet(c, n, s),
    "AlexNetBN": lambda c, n, s: AlexNet(c, n, s, batchnorm=True),
    "VGG11": lambda c, n, s: VGG11(c, n, s),
    "VGG11BN": lambda c, n, s: VGG11(c, n, s, batchnorm=True),
    "ResNet18": lambda c, n, s: ResNet18(c, n, s),
    "ResNet18BN": lambda c, n, s: ResNet18(c, n, s, norm="batchnorm", name="ResNet18BN"),
    "ResNet18BN_AP": lambda c, n, s: ResNet18(c, n, s, norm="batchnorm", avgpool_downsample=True,
                                              name="ResNet18BN_AP"),
}


def model_names() -> list[str]:
    return list(MODELS)


def check_model_name(name: str) -> str:
    if name not in MODELS:
        lower = {k.lower(): k for k in MODELS}
        if name.lower() in lower:
            return lower[name.lower()]
        raise FastDMError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    return name


def uses_batchnorm(name: str) -> bool:
    """The spec's rule: names containing 'BN' mix classes in one batch."""
    return "BN" in check_model_name(name)


def create_model(name: str, channel: int, num_classes: int, im_size) -> nn.Module:
    """Construct with torch's own initialisation (consumes the global RNG, like nn.Module)."""
    name = check_model_name(name)
    if isinstance(im_size, int):
        im_size = (im_size, im_size)
    return MODELS[name](int(channel), int(num_classes), tuple(int(s) for s in im_size))


def build_model(name: str, channel: int, num_classes: int, im_size, *words,
                device="cpu") -> nn.Module:
    """Construct on ``device`` with the default initialisation drawn from rng ``words``."""
    with torch.device("meta"):
        model = create_model(name, channel, num_classes, im_size)
    model = model.to_empty(device=device)
    return init_parameters_(model, *words)
