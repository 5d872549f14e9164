"""ResNet18 (instance norm), ResNet18BN and ResNet18BN_AP, as in the reference.

The _AP variant replaces every stride-2 convolution by a stride-1 convolution followed by
2x2 average pooling (in the residual branch and the shortcut).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import check_size, conv_out


def _norm(norm: str, c: int) -> nn.Module:
    return nn.GroupNorm(c, c, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, avgpool_downsample):
        super().__init__()
        self.pool = avgpool_downsample and stride != 1
        conv_stride = 1 if avgpool_downsample else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            layers = [nn.Conv2d(cin, cout, 1, stride=conv_stride, bias=False)]
            if avgpool_downsample:
                layers.append(nn.AvgPool2d(2, 2))
            self.shortcut = nn.Sequential(*layers, _norm(norm, cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.pool:
            out = F.avg_pool2d(out, 2, 2)
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32), norm="instancenorm",
                 avgpool_downsample=False, name="ResNet18"):
        super().__init__()
        self.ap = avgpool_downsample
        self.conv1 = nn.Conv2d(channel, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = _norm(norm, 64)
        stages, cin = [], 64
        h, w = im_size
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride, norm, avgpool_downsample),
                                        BasicBlock(cout, cout, 1, norm, avgpool_downsample)))
            if stride != 1:
                h, w = ((s // 2) if avgpool_downsample else conv_out(s, 3, 2, 1) for s in (h, w))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if not self.ap:  # the plain ResNet ends with a 4x4 average pool
            h, w = h // 4, w // 4
        if h < 1 or w < 1:
            check_size(name, im_size, "at least 25x25 pixels" if not self.ap else "at least 8x8 pixels")
        self.classifier = nn.Linear(512 * h * w, num_classes)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.ap:
            out = F.avg_pool2d(out, 4)
        return out.flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))
