"""Small building blocks shared by the model files."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import FastDMError


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    if name == "swish":
        return Swish()
    raise FastDMError(f"unknown activation '{name}'; choose from relu, sigmoid, leakyrelu, swish")


def norm2d(name: str, channels: int, hw: tuple[int, int]) -> nn.Module | None:
    """instancenorm = GroupNorm(C, C); groupnorm = GroupNorm(4, C); layernorm over [C, H, W]."""
    if name == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if name == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if name == "layernorm":
        return nn.LayerNorm([channels, hw[0], hw[1]], elementwise_affine=True)
    if name == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if name == "none":
        return None
    raise FastDMError(f"unknown norm '{name}'; choose from instancenorm, groupnorm, layernorm, "
                      f"batchnorm, none")


def conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def check_size(model: str, hw: tuple[int, int], minimum: str) -> None:
    """Raise the clear one-line error for an input too small for ``model``."""
    raise FastDMError(f"model {model} cannot take {hw[0]}x{hw[1]} images (its feature map shrinks "
                      f"to nothing; it needs {minimum}); use a shallower model such as ConvNetD1-D3, "
                      f"or larger images")


def first_padding(channel: int, extra: int, default: int) -> int:
    """The reference's first-layer rule: every 1-channel input gets ``extra`` padding (a 28x28
    MNIST image is then seen at 32x32 as CIFAR is); the reference keys it on the channel count
    alone, whatever the image size."""
    return extra if channel == 1 else default
