"""Models. Inputs are always images in [0, 1]; normalization is the model's first layer.

Keeping normalization inside the model means every attack works in pixel space, where an
L-inf epsilon such as 8/255 means what it says, and nobody can forget to normalize adversarial
inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they move with the model and land in checkpoints."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """The usual MNIST-scale CNN (two conv blocks + two linear layers, as in Madry et al.'s
    mnist_challenge model: conv 32 -> pool -> conv 64 -> pool -> fc 1024). ``width`` scales the
    channels so that CI-sized runs stay cheap (width=0.25 gives 8/16 channels, fc 256)."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10, size: int = 28, width: float = 1.0):
        super().__init__()
        c1, c2, h = max(1, int(32 * width)), max(1, int(64 * width)), max(1, int(1024 * width))
        self.conv1 = nn.Conv2d(in_ch, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc1 = nn.Linear(c2 * (size // 4) ** 2, h)
        self.fc2 = nn.Linear(h, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016), the usual CIFAR-10 AT baseline (e.g. Rice et al. 2020)."""

    def __init__(self, in_ch: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_ch, w, 3, 1, 1, bias=False)
        layers, in_planes = [], w
        for planes, stride in [
            (w, 1),
            (w, 1),
            (2 * w, 2),
            (2 * w, 1),
            (4 * w, 2),
            (4 * w, 1),
            (8 * w, 2),
            (8 * w, 1),
        ]:
            layers.append(PreActBlock(in_planes, planes, stride))
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class WideBasic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(o)))))
        return o + sc


class WideResNet(nn.Module):
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016); WRN-34-10 is the usual AT model (TRADES)."""

    def __init__(
        self, in_ch: int = 3, num_classes: int = 10, depth: int = 28, widen: int = 10, dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for i, stride in enumerate([1, 2, 2]):
            for j in range(n):
                blocks.append(WideBasic(in_planes, widths[i + 1], stride if j == 0 else 1, dropout))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _small_cnn(ch, k, size, width):
    return SmallCNN(ch, k, size, width)


def _preact(ch, k, size, width):
    return PreActResNet18(ch, k, width=int(64 * width))


def _wrn(depth, widen):
    return lambda ch, k, size, width: WideResNet(ch, k, depth=depth, widen=max(1, int(round(widen * width))))


# name -> builder(channels, num_classes, size, width) ; ``width`` scales every model's channels.
MODELS: dict[str, Callable[[int, int, int, float], nn.Module]] = {
    "small_cnn": _small_cnn,
    "preact_resnet18": _preact,
    "wrn_28_10": _wrn(28, 10),
    "wrn_34_10": _wrn(34, 10),
    "wrn_16_4": _wrn(16, 4),
}


def build_model(
    name: str, channels: int, num_classes: int, size: int, mean, std, width: float = 1.0
) -> nn.Sequential:
    """A model that takes [0,1] images: ``Sequential(Normalize(mean, std), net)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    if name == "small_cnn" and size % 4:
        raise ValueError(f"small_cnn needs an image size divisible by 4, got {size}")
    return nn.Sequential(Normalize(mean, std), MODELS[name](channels, num_classes, size, width))
