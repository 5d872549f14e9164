"""The real branch's embedder with its 3x3 convolutions by Winograd (fastdm.ops.winograd).

Only ConvNets (``embed`` = features(x).flatten(1) over one Sequential) take this path; the
weights are read from the same modules as ``net.embed``, so weights drawn in place each
iteration reach both, and one compiled graph serves the run."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.winograd import eligible, winograd_conv2d
from .convnet import ConvNet
from .layers import conv_out


def winograd_layers(net: nn.Module, image_size) -> tuple[int, ...]:
    """Indices in ``net.features`` of the convolutions the Winograd path computes (empty for
    models other than ConvNets)."""
    if not isinstance(net, ConvNet) or type(net).embed is not ConvNet.embed:
        return ()  # the path rebuilds ConvNet.embed; a subclass's own embed is not it
    h, w = image_size
    layers = []
    for i, m in enumerate(net.features):
        if isinstance(m, nn.Conv2d):
            if eligible(m, (h, w)):
                layers.append(i)
            h, w = (conv_out(n, m.kernel_size[0], m.stride[0], m.padding[0]) for n in (h, w))
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            h, w = h // 2, w // 2
    return tuple(layers)


def winograd_embed(net: nn.Module, layers: tuple[int, ...]):
    """``net.embed`` with the convolutions at ``layers`` computed by Winograd (forward only),
    in NHWC throughout: the other convolutions (an RGB first layer) measured 1.6x faster on
    channels_last input than on NCHW, and the Winograd op reads and writes NHWC."""
    chosen = frozenset(layers)

    def embed(x):
        x = x.contiguous(memory_format=torch.channels_last)
        for i, m in enumerate(net.features):
            x = winograd_conv2d(x, m.weight, m.bias, m.padding[0]) if i in chosen else m(x)
        return x.flatten(1)

    return embed
