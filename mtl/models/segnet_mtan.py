"""SegNet-MTAN: a shared SegNet with one soft-attention module per task at every encoder and
decoder level, the architecture of the NYUv2 and CityScapes benchmarks.

Liu, Johns, Davison, 2019, "End-to-End Multi-Task Learning with Attention", CVPR (arXiv:1803.10704,
Section 3 and Figure 2), as its code builds it (lorenmt/mtan ``model_segnet_mtan.py``; Nash-MTL's
and FAMO's ``SegNetMtan``). On the shared SegNet's tensors (``SegNetFeatures``), task ``k``'s
attended features are, at encoder level ``j`` (``u_j``, ``p_j``: the level's first layer and output)::

    â_k^0 = g_k^0(u_0) ⊙ p_0          â_k^j = g_k^j([u_j, e^{j-1}(â_k^{j-1})]) ⊙ p_j

with ``e^j``: ``3x3 conv → BN → ReLU`` to the next level's width, then a 2x2 max-pool; and at
decoder level ``j`` (``v_j``: the level's unpooled input; ``q_j``: its output; ``ǎ_k^{-1}`` is the
deepest encoder level's ``â_k``)::

    ǎ_k^j = h_k^j([v_j, d^j(up(ǎ_k^{j-1}))]) ⊙ q_j

with ``up`` a bilinear 2x upsampling (corners aligned) and ``d^j``: ``3x3 conv → BN → ReLU`` to
``q_j``'s width. Every mask ``g``, ``h`` is ``1x1 conv → BN → ReLU → 1x1 conv → BN → sigmoid``
(``mtl.models.mtan.attention_mask``). Task ``k``'s head (``DenseHead``) reads its last ``ǎ_k``.

The SegNet and the ``e^j``, ``d^j`` are shared; task ``k``'s masks and head are its own (the
Nash-MTL and FAMO code counts the masks as shared parameters, so that its aggregators see them
with zero gradient from the other tasks; here they get task ``k``'s own gradient, as heads do).
No single representation feeds the heads, so gradient aggregators take the Jacobian engine's
general path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.heads import check_task
from mtl.models.mtan import attention_mask
from mtl.models.segnet import FILTERS, DenseHead, SegNet, conv_layer, xavier_initialized
from mtl.tasks import Task


class SegNetMTAN(nn.Module):
    """A shared ``SegNet(input_shape, filters)``, attention masks per task at its ten levels, and a
    ``DenseHead`` per task."""

    def __init__(self, tasks: Sequence[Task], input_shape: Sequence[int], filters: Sequence[int] = FILTERS) -> None:
        super().__init__()
        self.segnet = SegNet(input_shape, filters)
        levels = len(filters)
        # widths of the decoder levels, deepest first: unpooled input v_j and output q_j
        unpooled = list(reversed(filters))
        decoded = list(reversed([filters[0], *filters[:-1]]))
        self.encoder_blocks = nn.ModuleList(conv_layer(filters[j], filters[min(j + 1, levels - 1)]) for j in range(levels))
        self.decoder_blocks = nn.ModuleList(conv_layer(filters[-1] if j == 0 else decoded[j - 1], decoded[j]) for j in range(levels))
        self.encoder_attention = nn.ModuleDict(
            {task.name: nn.ModuleList(attention_mask(width if j == 0 else 2 * width, width) for j, width in enumerate(filters)) for task in tasks}
        )
        self.decoder_attention = nn.ModuleDict(
            {task.name: nn.ModuleList(attention_mask(unpooled[j] + decoded[j], decoded[j]) for j in range(levels)) for task in tasks}
        )
        self.heads = nn.ModuleDict({task.name: DenseHead(filters[0], task.num_outputs) for task in tasks})
        xavier_initialized(self)

    def attend(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
        """Each task's attended features of the last decoder level, and its masks (encoder levels, then decoder levels)."""
        shared = self.segnet.features(x)
        attended, masks = {}, {}
        for name in self.heads:
            task_masks, features = [], None
            for j, (block, attention) in enumerate(zip(self.encoder_blocks, self.encoder_attention[name])):
                inputs = shared.encoder_inputs[j] if features is None else torch.cat([shared.encoder_inputs[j], features], dim=1)
                task_masks.append(attention(inputs))
                features = F.max_pool2d(block(task_masks[-1] * shared.encoder_outputs[j]), 2, 2)
            for j, (block, attention) in enumerate(zip(self.decoder_blocks, self.decoder_attention[name])):
                upsampled = F.interpolate(features, size=shared.unpooled[j].shape[-2:], mode="bilinear", align_corners=True)
                task_masks.append(attention(torch.cat([shared.unpooled[j], block(upsampled)], dim=1)))
                features = task_masks[-1] * shared.decoder_outputs[j]
            attended[name], masks[name] = features, task_masks
        return attended, masks

    def attention_masks(self, x: Tensor) -> dict[str, list[Tensor]]:
        """``{task: [mask of every encoder level, then of every decoder level]}``, each in (0, 1)."""
        return self.attend(x)[1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        attended, _ = self.attend(x)
        return {name: self.heads[name](features) for name, features in attended.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.segnet.parameters()
        yield from self.encoder_blocks.parameters()
        yield from self.decoder_blocks.parameters()

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        check_task(self.heads, name)
        yield from self.encoder_attention[name].parameters()
        yield from self.decoder_attention[name].parameters()
        yield from self.heads[name].parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The weight and bias of the shared SegNet's last convolution: the layer GradNorm measures."""
        last = [layer for layer in self.segnet.modules() if isinstance(layer, nn.Conv2d)][-1]
        return [last.weight, last.bias]
