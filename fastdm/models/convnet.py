"""The ConvNet family: depth x [Conv3x3 -> norm -> act -> pool], then one Linear."""
from __future__ import annotations

from torch import nn

from ..errors import FastDMError
from .layers import activation, check_size, conv_out, first_padding, norm2d


class ConvNet(nn.Module):
    def __init__(self, channel: int, num_classes: int, width: int = 128, depth: int = 3,
                 act: str = "relu", norm: str = "instancenorm", pool: str = "avgpooling",
                 im_size: tuple[int, int] = (32, 32), name: str = "ConvNet"):
        super().__init__()
        if pool not in ("avgpooling", "maxpooling", "none"):
            raise FastDMError(f"unknown pooling '{pool}'; choose from avgpooling, maxpooling, none")
        layers = []
        h, w = im_size
        cin = channel
        for d in range(depth):
            pad = first_padding(channel, 3, 1) if d == 0 else 1
            layers.append(nn.Conv2d(cin, width, kernel_size=3, padding=pad))
            h, w = conv_out(h, 3, 1, pad), conv_out(w, 3, 1, pad)
            n = norm2d(norm, width, (h, w))
            if n is not None:
                layers.append(n)
            layers.append(activation(act))
            if pool != "none":
                layers.append(nn.AvgPool2d(2, 2) if pool == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                check_size(name, im_size, f"at least {2 ** depth}x{2 ** depth} pixels")
            cin = width
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, h, w)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))
