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


def tapped_embed(net: nn.Module, layers: tuple[int, ...] = (), taps: tuple[int, ...] = (),
                 tap=None):
    """``net.embed`` (a ConvNet's: features(x).flatten(1)) with the convolutions at ``layers``
    computed by Winograd (forward only) and the outputs of the modules at ``taps`` returned
    after the embedding: (embedding, *tapped) when there are taps, each passed through ``tap``
    if given (inside the embedder, so that a compiled one fuses it with the layer that makes the
    output, and the output itself need not be kept). With Winograd layers it runs
    in NHWC throughout: the other convolutions (an RGB first layer) measured 1.6x faster on
    channels_last input than on NCHW, and the Winograd op reads and writes NHWC."""
    chosen, keep = frozenset(layers), frozenset(taps)

    def embed(x):
        if chosen:
            x = x.contiguous(memory_format=torch.channels_last)
        tapped = []
        for i, m in enumerate(net.features):
            x = winograd_conv2d(x, m.weight, m.bias, m.padding[0]) if i in chosen else m(x)
            if i in keep:
                tapped.append(tap(x) if tap is not None else x)
        return (x.flatten(1), *tapped) if keep else x.flatten(1)

    return embed


def winograd_embed(net: nn.Module, layers: tuple[int, ...]):
    """``net.embed`` with the convolutions at ``layers`` computed by Winograd (forward only)."""
    return tapped_embed(net, layers)
