"""MLP, LeNet, AlexNet(BN) and VGG11(BN): the reference's cross-architecture models.

Layer sizes follow the reference architectures; the classifier's input size is computed
from the image size, so the parameter counts equal the reference's at its sizes (28 px
1-channel, 32 px 3-channel) and other sizes work too.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import check_size, conv_out, first_padding


class MLP(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32)):
        super().__init__()
        self.fc_1 = nn.Linear(channel * im_size[0] * im_size[1], 128)
        self.fc_2 = nn.Linear(128, 128)
        self.fc_3 = nn.Linear(128, num_classes)

    def embed(self, x):
        x = F.relu(self.fc_1(x.flatten(1)))
        return F.relu(self.fc_2(x))

    def forward(self, x):
        return self.fc_3(self.embed(x))


class LeNet(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32)):
        super().__init__()
        pad = first_padding(channel, 2, 0)
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, kernel_size=5, padding=pad), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        h, w = (conv_out(conv_out(s, 5, 1, pad) // 2, 5) // 2 for s in im_size)
        if h < 1 or w < 1:
            check_size("LeNet", im_size, "at least 16x16 pixels")
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, num_classes)

    def embed(self, x):
        x = self.features(x).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))

    def forward(self, x):
        return self.fc_3(self.embed(x))


class AlexNet(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32), batchnorm=False):
        super().__init__()

        def block(cin, cout, k, pad):
            layers = [nn.Conv2d(cin, cout, kernel_size=k, padding=pad)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU(inplace=True)]

        pad = first_padding(channel, 4, 2)
        self.features = nn.Sequential(
            *block(channel, 128, 5, pad), nn.MaxPool2d(2, 2),
            *block(128, 192, 5, 2), nn.MaxPool2d(2, 2),
            *block(192, 256, 3, 1), *block(256, 192, 3, 1), *block(192, 192, 3, 1),
            nn.MaxPool2d(2, 2),
        )
        h, w = (conv_out(s, 5, 1, pad) // 8 for s in im_size)
        if h < 1 or w < 1:
            check_size("AlexNet", im_size, "at least 8x8 pixels")
        self.fc = nn.Linear(192 * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.fc(self.embed(x))


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32), batchnorm=False):
        super().__init__()
        layers, cin = [], channel
        h, w = im_size
        for i, v in enumerate(VGG11_CFG):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                continue
            pad = first_padding(channel, 3, 1) if i == 0 else 1
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=pad),
                       nn.BatchNorm2d(v) if batchnorm else nn.GroupNorm(v, v, affine=True),
                       nn.ReLU(inplace=True)]
            h, w = conv_out(h, 3, 1, pad), conv_out(w, 3, 1, pad)
            cin = v
        if h < 1 or w < 1:
            check_size("VGG11", im_size, "at least 32x32 pixels")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))
