"""SegNet, the dense encoder-decoder of the NYUv2 and CityScapes benchmarks, and its task heads.

Badrinarayanan, Kendall, Cipolla, 2017, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", TPAMI (arXiv:1511.00561), as the MTAN code builds it (Liu, Johns, Davison
2019, lorenmt/mtan ``model_segnet_split.py``; Nash-MTL's and FAMO's ``SegNetSplit``): five
encoder levels of widths ``filters = (64, 128, 256, 512, 512)``, level ``i`` a ``3x3 conv → BN →
ReLU`` to its width (``u_i``) then one more such layer (two from the third level on) (``p_i``),
then a 2x2 max-pool that keeps its indices; five decoder levels mirror them, each unpooling with
the indices of its encoder level and narrowing to the width below. The output is the last decoder
level's features ``(B, 64, H, W)``, at the input's resolution; ``H`` and ``W`` must be multiples
of 32. Every convolution is drawn from Xavier's normal initialization with zero bias, as there.

``DenseHead`` is the code's prediction layer: ``3x3 conv`` (same width) ``→ 1x1 conv`` to the
task's outputs. ``model=segnet`` is this encoder shared by one head per task (the code's "split").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.encoders import Encoder

FILTERS = (64, 128, 256, 512, 512)


def conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """``3x3 conv → BN → ReLU``."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


def xavier_initialized(module: nn.Module) -> nn.Module:
    """``module`` with every convolution redrawn from Xavier's normal initialization, biases zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


class SegNetFeatures(NamedTuple):
    """The shared path's tensors, one per level: each encoder level's first layer ``u_i`` and
    output ``p_i`` (before pooling), and each decoder level's unpooled input and output, the
    decoder's in the order they run (the deepest first)."""

    encoder_inputs: list[Tensor]
    encoder_outputs: list[Tensor]
    unpooled: list[Tensor]
    decoder_outputs: list[Tensor]


class SegNet(Encoder):
    """The encoder-decoder; ``out_features`` is the width of its output feature map."""

    def __init__(self, input_shape: Sequence[int], filters: Sequence[int] = FILTERS) -> None:
        super().__init__()
        channels, height, width = input_shape
        scale = 2 ** len(filters)
        if height % scale or width % scale:
            raise ValueError(f"SegNet pools {len(filters)} times: the input's height and width must be multiples of {scale}, got {height}x{width}")
        depth = [1 if level < 2 else 2 for level in range(len(filters))]  # layers after a level's first
        self.encoder_first = nn.ModuleList(conv_layer(source, target) for source, target in zip([channels, *filters[:-1]], filters))
        self.encoder_rest = nn.ModuleList(nn.Sequential(*(conv_layer(width, width) for _ in range(count))) for width, count in zip(filters, depth))
        narrower = [filters[0], *filters[:-1]]  # decoder level k ends at the width of encoder level k - 1
        self.decoder_first = nn.ModuleList(conv_layer(source, target) for source, target in zip(filters, narrower))
        self.decoder_rest = nn.ModuleList(nn.Sequential(*(conv_layer(width, width) for _ in range(count))) for width, count in zip(narrower, depth))
        self.filters = tuple(filters)
        self.out_features = filters[0]
        xavier_initialized(self)

    def features(self, x: Tensor) -> SegNetFeatures:
        encoder_inputs, encoder_outputs, indices = [], [], []
        for first, rest in zip(self.encoder_first, self.encoder_rest):
            encoder_inputs.append(first(x))
            encoder_outputs.append(rest(encoder_inputs[-1]))
            x, index = F.max_pool2d(encoder_outputs[-1], 2, 2, return_indices=True)
            indices.append(index)
        unpooled, decoder_outputs = [], []
        for level in reversed(range(len(self.filters))):
            unpooled.append(F.max_unpool2d(x, indices[level], 2, 2))
            x = self.decoder_rest[level](self.decoder_first[level](unpooled[-1]))
            decoder_outputs.append(x)
        return SegNetFeatures(encoder_inputs, encoder_outputs, unpooled, decoder_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).decoder_outputs[-1]


class DenseHead(nn.Sequential):
    """``3x3 conv (in_channels) → 1x1 conv (out_channels)``: a task's per-pixel prediction."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.Conv2d(in_channels, out_channels, 1))
        xavier_initialized(self)
