"""Shared encoders: each maps an input batch ``(B, *input_shape)`` to a flat representation ``(B, out_features)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class FeatureStages(NamedTuple):
    """A convolutional encoder's forward as ``stages``, each ending in a feature map ``(B, C, H, W)``,
    then ``flatten``, which maps the last map to the flat representation. Views of the encoder's
    modules: their composition is its forward."""

    stages: list[nn.Sequential]
    flatten: nn.Module


class Encoder(nn.Module):
    """A module built from ``input_shape`` that knows the width of its flat output, ``out_features``.

    ``stages()`` splits the forward into the modules whose composition it is, at the points where
    an architecture may join several copies of the encoder (cross-stitch units); an encoder that
    does not split is one stage. A convolutional encoder also cuts its forward at its feature maps,
    ``feature_stages()``, where an architecture may attend to them (MTAN).
    """

    out_features: int

    def stages(self) -> list[nn.Module]:
        return [self]

    def feature_stages(self) -> FeatureStages:
        raise TypeError(f"{type(self).__name__} computes no feature maps; use a convolutional encoder (mtl.models.ResNet, mtl.models.LeNet)")


class MLP(Encoder):
    """Flatten, then ``Linear → ReLU (→ Dropout)`` per entry of ``hidden``."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int] = (256, 256), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        self.stage_ends: list[int] = []
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            self.stage_ends.append(len(layers))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def stages(self) -> list[nn.Module]:
        """One stage per hidden layer."""
        return split_at(self.layers, self.stage_ends)


class LeNet(Encoder):
    """The shared part of the Multi-LeNet of Sener & Koltun 2018 (arXiv:1810.04650), the MultiMNIST standard.

    ``conv 5x5 (10) → maxpool 2 → ReLU → conv 5x5 (20) → dropout2d → maxpool 2 → ReLU → flatten →
    Linear (50) → ReLU``. The flattened size follows from ``input_shape`` (720 for 36x36).
    ``kernel_size`` is one size for both convolutions or one each: Pareto MTL's LeNet (Lin et al.
    2019, arXiv:1912.12854) is ``kernel_size=[9, 5]``, ``dropout=0`` (500 features for 36x36).
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (10, 20), kernel_size: int | Sequence[int] = 5, features: int = 50, dropout: float = 0.5) -> None:
        super().__init__()
        first, second = channels
        first_kernel, second_kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.convolutions = nn.Sequential(
            nn.Conv2d(input_shape[0], first, first_kernel),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(first, second, second_kernel),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        try:
            with torch.no_grad():
                flat = self.convolutions.eval()(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError as error:
            raise ValueError(f"LeNet with kernel_size={kernel_size} cannot take inputs of shape {tuple(input_shape)}: {error}") from None
        self.convolutions.train()
        self.projection = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.convolutions(x))

    def stages(self) -> list[nn.Module]:
        """The first convolution block, the second (flattened), the projection."""
        return [*split_at(self.convolutions, [3, len(self.convolutions)]), self.projection]

    def feature_stages(self) -> FeatureStages:
        """The two convolution blocks, then the flattening and the projection."""
        *blocks, flatten = self.convolutions
        return FeatureStages(split_at(nn.Sequential(*blocks), [3, len(blocks)]), nn.Sequential(flatten, self.projection))


class BasicBlock(nn.Module):
    """The two-convolution residual block of He et al. 2016 (arXiv:1512.03385)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


STEMS = ("small", "imagenet")
PROJECTIONS = ("relu", "batchnorm")


def projection_layers(in_features: int, out_features: int, projection: str, dropout: float) -> list[nn.Module]:
    """The layers of a ``ResNet``'s ``projection``."""
    linear = nn.Linear(in_features, out_features)
    if projection == "relu":
        return [linear, nn.ReLU()]
    nn.init.normal_(linear.weight, 0.0, 0.005)
    nn.init.constant_(linear.bias, 0.1)
    return [linear, nn.BatchNorm1d(out_features), nn.ReLU(), nn.Dropout(dropout)]


class ResNet(Encoder):
    """A ResNet: a stem, one stage of ``blocks`` basic blocks per entry of ``widths`` (stride 2 from
    the second stage on), global average pooling, and with ``features`` a projection to that width:
    ``Linear → ReLU`` (``projection="relu"``) or ``Linear → BatchNorm → ReLU → Dropout(dropout)``
    (``projection="batchnorm"``, its Linear drawn from N(0, 0.005²) with biases 0.1).

    ``stem="small"`` is one 3x3 convolution of stride 1; ``stem="imagenet"`` is torchvision's: a 7x7
    convolution of stride 2 and a 3x3 max-pool of stride 2. ``widths=(64, 128, 256, 512)``,
    ``blocks=2``, ``stem="imagenet"`` is ResNet-18, with ``features=100`` the one of the F-MTL
    MultiMNIST code (Phan et al. 2022, VietHoang1512/FS-MTL ``multi-mnist/model_resnet.py``:
    torchvision's ``resnet18`` on one input channel, its ``fc`` 512 → 100 followed by a ReLU), with
    ``features=512, projection="batchnorm", dropout=0.5`` LibMTL's Office encoder (Lin & Zhang 2023,
    arXiv:2203.14338; LibMTL ``examples/office/main.py``). Convolutions take PyTorch's default
    initialization where torchvision draws them from ``kaiming_normal_``; ``pretrained`` is the path of
    a torchvision ResNet state dict (``mtl.models.pretrained``: ImageNet weights, which LibMTL starts
    from), loaded into the stem and the blocks.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 1,
        stem: str = "small",
        features: int | None = None,
        projection: str = "relu",
        dropout: float = 0.0,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown ResNet stem '{stem}'; valid choices: {list(STEMS)}")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown ResNet projection '{projection}'; valid choices: {list(PROJECTIONS)}")
        if dropout and (features is None or projection != "batchnorm"):
            raise ValueError(f"dropout={dropout} applies to the projection='batchnorm' of features; here features={features}, projection='{projection}'")
        if stem == "small":
            layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        else:
            layers = [nn.Conv2d(input_shape[0], widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        channels = widths[0]
        self.stage_ends = [len(layers)]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
            self.stage_ends.append(len(layers))
        self.feature_ends = self.stage_ends[1:]  # the stem joins the first stage: each ends in a residual block
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if features is not None:
            layers += projection_layers(channels, features, projection, dropout)
            channels = features
        self.stage_ends[-1] = len(layers)  # the pooling (and projection) ends the last stage
        self.layers = nn.Sequential(*layers)
        self.out_features = channels
        self.stem, self.blocks = stem, blocks
        if pretrained is not None:
            from mtl.models.pretrained import load_torchvision_resnet

            load_torchvision_resnet(self, pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def stages(self) -> list[nn.Module]:
        """The stem, then one stage per entry of ``widths`` (the last with the pooling)."""
        return split_at(self.layers, self.stage_ends)

    def feature_stages(self) -> FeatureStages:
        """One stage per entry of ``widths``, the first led by the stem (as LibMTL's MTAN cuts a
        ResNet), then the pooling (and projection)."""
        pooling = self.feature_ends[-1]
        return FeatureStages(split_at(self.layers[:pooling], self.feature_ends), self.layers[pooling:])


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """``3x3 conv (no bias) → BN → ReLU``."""
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class CelebACNN(Encoder):
    """The 9-layer network of FAMO's and Nash-MTL's CelebA benchmark (Liu et al. 2023,
    arXiv:2306.03792; Cranial-XIX/FAMO ``experiments/celeba/models.py``): seven ``3x3 conv → BN →
    ReLU`` layers of widths ``64 | 128 128 | 256 256 | 512 512``, a 2x2 max-pool after each group
    but the last, global average pooling, then two ``Linear (no bias) → BN → ReLU`` layers of
    ``features``. ``widths`` scales the groups (a test's tiny network)."""

    def __init__(self, input_shape: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512), features: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = conv_bn_relu(input_shape[0], widths[0])
        for source, target in zip(widths[:-1], widths[1:]):
            layers += [nn.MaxPool2d(2), *conv_bn_relu(source, target), *conv_bn_relu(target, target)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        width = widths[-1]
        for _ in range(2):
            layers += [nn.Linear(width, features, bias=False), nn.BatchNorm1d(features), nn.ReLU()]
            width = features
        self.layers = nn.Sequential(*layers)
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def split_at(layers: nn.Sequential, ends: Sequence[int]) -> list[nn.Module]:
    """``layers`` cut after each index of ``ends`` (the last must be ``len(layers)``); the pieces
    share the modules. The first piece keeps any layers before the first end (an MLP's Flatten)."""
    ends = list(ends) or [len(layers)]  # no cut: one stage (an MLP without hidden layers)
    starts = [0, *ends[:-1]]
    return [layers[start:end] for start, end in zip(starts, ends)]


def last_weight_layer(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of the last layer of ``module`` with a weight of two or more dimensions (a
    weight matrix or a kernel, in registration order) and its bias: the "last shared layer" that
    GradNorm measures gradient norms on."""
    layers = [layer for layer in module.modules() if getattr(layer, "weight", None) is not None and layer.weight.dim() >= 2]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no weight matrix or kernel to measure gradient norms on")
    return list(layers[-1].parameters(recurse=False))
