"""A ConvNet's embedder with its 3x3 convolutions by the native CPU kernels: Winograd for the
wide layers (fastdm.ops.winograd), a first layer of few input channels fused with its norm,
ReLU and pool (fastdm.ops.first_block), and, forward only, the other norm-ReLU-pool blocks on
NHWC (fastdm.ops.norm_pool).

Only ConvNets (``embed`` = features(x).flatten(1) over one Sequential) take this path; the
weights are read from the same modules as ``net.embed``, so weights drawn in place each
iteration reach both, and one compiled graph serves the run."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import first_block
from ..ops.norm_pool import instance_norm_relu_pool
from ..ops.winograd import eligible, winograd_conv2d, winograd_conv2d_grad
from .convnet import ConvNet
from .layers import conv_out


def _plain_convnet(net: nn.Module) -> bool:
    # the path rebuilds ConvNet.embed; a subclass's own embed is not it
    return isinstance(net, ConvNet) and type(net).embed is ConvNet.embed


def first_block_layers(net: nn.Module) -> tuple[int, ...]:
    """Indices in ``net.features`` of the few-channel 3x3 convolutions the first-block kernel
    may compute, with the norm, ReLU and pool after them (empty for models other than ConvNets)."""
    if not _plain_convnet(net):
        return ()
    return tuple(i for i, m in enumerate(net.features) if first_block.eligible(m))


def winograd_layers(net: nn.Module, image_size) -> tuple[int, ...]:
    """Indices in ``net.features`` of the convolutions the Winograd path computes (empty for
    models other than ConvNets)."""
    if not _plain_convnet(net):
        return ()
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


# Batches from which the gradient path takes Winograd: an evaluation training step (eager,
# ConvNet, DSA) of 100 images measured 5-7 % faster with it, one of 10 images 21 % slower
# (the weight transforms and layout copies per call); benchmarks/RESULTS.md, issue 23.
GRAD_MIN_BATCH = 32


def tapped_embed(net: nn.Module, layers: tuple[int, ...] = (), taps: tuple[int, ...] = (),
                 tap=None, first: tuple[int, ...] = (), grad: bool = False, tap_sums=None):
    """``net.embed`` (a ConvNet's: features(x).flatten(1)) with the convolutions at ``layers``
    computed by Winograd and the outputs of the modules at ``taps`` returned after the
    embedding: (embedding, *tapped) when there are taps, each passed through ``tap`` if given
    (inside the embedder, so that a compiled one fuses it with the layer that makes the output,
    and the output itself need not be kept).

    A convolution of few input channels at ``first`` followed by instance norm, ReLU and 2x2 average
    pooling (untapped) runs as one native block, with ``grad=True`` only where the input needs
    no gradient (evaluation's training step; the block's backward reaches its parameters, not
    the images). ``grad=False`` (forward only): with Winograd layers the embedder runs in NHWC
    throughout: the other convolutions (an RGB first layer) measured 1.6x faster on
    channels_last input than on NCHW, and the Winograd op reads and writes NHWC.
    ``tap_sums`` (p, finish), forward only: ``tap(a)`` equals ``finish(sum over channels of
    |a|^p)`` (DataDAM's attention maps), so a tapped ReLU inside a native block costs the block
    only its channel sums: the block stays one native call and the activation is never formed.
    ``grad=True``: gradients flow (to the input and the weights), and each Winograd layer's
    output goes back to NCHW for the modules after it (PyTorch's GroupNorm and its backward are
    slow on channels_last; under torch.compile the copy fuses into them)."""
    chosen, ones, keep = frozenset(layers), frozenset(first), frozenset(taps)
    mods = list(net.features)
    # instance norm, ReLU, 2x2 average pool in a row (untapped, or a tapped ReLU whose channel
    # sums the block writes): one native block on NHWC (forward only), or with a first-block
    # convolution before it, the first block
    sums = tap_sums if not grad else None  # (the blocks' channel sums are forward only)
    fusable = frozenset(i for i in range(len(mods) - 2) if _norm_relu_pool(mods[i:i + 3])
                        and i not in keep and (i + 1 not in keep or sums is not None))
    fused = frozenset(i for i in ones if i + 1 in fusable and i not in keep)
    blocks = frozenset(i for i in fusable if not grad and chosen and i - 1 not in fused)
    # tapped ReLUs that a native block hands over as channel sums
    summed = frozenset({i + 2 for i in fused} | {i + 1 for i in blocks}) & keep

    def power(relu):
        return sums[0] if relu in summed else None

    def embed(x):
        # with gradients, small batches keep the modules (see GRAD_MIN_BATCH)
        wino = chosen if not grad or x.shape[0] >= GRAD_MIN_BATCH else frozenset()
        if chosen and not grad and 0 not in fused:  # (a fused first block reads NCHW, writes NHWC)
            x = x.contiguous(memory_format=torch.channels_last)
        tapped, skip = [], 0

        def take(out, relu):
            if relu in summed:
                out, s = out
                tapped.append(sums[1](s))
            return out

        for i, m in enumerate(mods):
            if skip:  # inside a block: its output stands for the module's (a tapped pool)
                skip -= 1
            elif i in fused and not (grad and x.requires_grad):  # no gradient to the images
                norm = mods[i + 1]
                x, skip = take(first_block.first_block(x, m.weight, m.bias, norm.weight, norm.bias,
                                                       norm.eps, m.padding[0],
                                                       bool(chosen) and not grad,
                                                       channel_power=power(i + 2)), i + 2), 3
            elif i in blocks:
                x, skip = take(instance_norm_relu_pool(x, m.weight, m.bias, m.eps,
                                                       channel_power=power(i + 1)), i + 1), 2
            elif i in wino and grad:
                x = winograd_conv2d_grad(x, m.weight, m.bias, m.padding[0]).contiguous()
            else:
                x = winograd_conv2d(x, m.weight, m.bias, m.padding[0]) if i in wino else m(x)
            if i in keep and i not in summed:
                tapped.append(tap(x) if tap is not None else x)
        return (x.flatten(1), *tapped) if keep else x.flatten(1)

    return embed


def native_forward(net: nn.Module, layers: tuple[int, ...], first: tuple[int, ...] = ()):
    """``net(x)`` of a ConvNet with its convolutions at ``layers`` by Winograd and its first
    block at ``first`` natively, with gradients (evaluation's training step)."""
    embed = tapped_embed(net, layers, first=first, grad=True)
    return lambda x: net.classifier(embed(x))


def _norm_relu_pool(ms) -> bool:
    norm, act, pool = ms
    return (isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine
            and type(act) is nn.ReLU and type(pool) is nn.AvgPool2d and pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)))


def winograd_embed(net: nn.Module, layers: tuple[int, ...], first: tuple[int, ...] = ()):
    """``net.embed`` with the convolutions at ``layers`` computed by Winograd and those at
    ``first`` by the first-block kernel where it applies (forward only)."""
    return tapped_embed(net, layers, first=first)
