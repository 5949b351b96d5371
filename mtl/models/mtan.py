"""MTAN: a shared convolutional network with one soft-attention module per task at every stage.

Liu, Johns, Davison, 2019, "End-to-End Multi-Task Learning with Attention", CVPR (arXiv:1803.10704,
Section 3.1). The shared encoder is cut into stages (``Encoder.feature_stages()``); stage ``j``
computes intermediate features ``u^j`` (every layer of the stage but its last) and its output
``p^j`` (the last layer on ``u^j``). Task ``k``'s attended features are::

    a_k^1 = g_k^1(u^1) ⊙ p^1
    a_k^j = g_k^j([u^j, f^{j-1}(a_k^{j-1})]) ⊙ p^j        j > 1

    g_k^j: 1x1 conv → BN → ReLU → 1x1 conv → BN → sigmoid     task k's attention mask at stage j
    f^j:   3x3 conv → BN → ReLU, then max-pooled to stage j+1's resolution     shared

with ``[·, ·]`` the channel concatenation and the masks as wide as ``p^j``. The shared path runs
unchanged; each task's head reads its own ``a_k`` of the last stage, flattened as the encoder
flattens its last map. This is LibMTL's form over a ResNet (the stem leads the first stage, the
last residual block of each stage is ``p^j``), with the paper's 3x3 ``f^j`` where LibMTL 1.1.5
puts a residual block and with one attention module per task where LibMTL's list repeats one
module for every task. Any convolutional encoder whose stages end in a layer that keeps the
resolution works: a ResNet needs ``blocks >= 2``.

The encoder, the ``f^j`` and the flattening are shared; task ``k``'s masks and head are its own.
No single representation feeds the heads, so gradient aggregators take the Jacobian engine's
general path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.encoders import Encoder, last_weight_layer
from mtl.models.heads import check_task
from mtl.tasks import Task


def attention_mask(in_channels: int, out_channels: int) -> nn.Sequential:
    """``g``: ``1x1 conv → BN → ReLU → 1x1 conv → BN → sigmoid``, ``out_channels`` wide in the middle
    (the official code's ``att_layer([in, out, out])``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )


def shared_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """``f``: ``3x3 conv → BN → ReLU`` (the official code's ``conv_layer``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


def pooled_to(features: Tensor, reference: Tensor) -> Tensor:
    """``features`` max-pooled to the height and width of ``reference`` (unchanged if they match)."""
    if features.shape[-2:] == reference.shape[-2:]:
        return features
    return F.adaptive_max_pool2d(features, reference.shape[-2:])


class MTAN(nn.Module):
    """A shared encoder ``encoder(input_shape)``, an attention mask per task at each of its feature
    stages, and a head ``head(out_features, task.num_outputs)`` per task."""

    def __init__(
        self,
        encoder: Callable[[Sequence[int]], Encoder],
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.encoder = encoder(input_shape)
        # views of the encoder's modules, in a tuple and a list so that they are not registered twice
        self.cut = self.encoder.feature_stages()
        self.splits = [(stage[:-1], stage[-1]) for stage in self.cut.stages]
        intermediate, output = self._shapes(input_shape)
        self.blocks = nn.ModuleList(shared_block(output[j][0], intermediate[j + 1][0]) for j in range(len(self.splits) - 1))
        widths = [shape[0] if j == 0 else 2 * shape[0] for j, shape in enumerate(intermediate)]  # [u^j, f^{j-1}(a^{j-1})]
        self.attention = nn.ModuleDict(
            {task.name: nn.ModuleList(attention_mask(width, shape[0]) for width, shape in zip(widths, output)) for task in tasks}
        )
        self.heads = nn.ModuleDict({task.name: head(self.encoder.out_features, task.num_outputs) for task in tasks})

    def _shapes(self, input_shape: Sequence[int]) -> tuple[list[torch.Size], list[torch.Size]]:
        """The shapes ``(C, H, W)`` of every stage's ``u^j`` and ``p^j``, from one probe in eval mode."""
        training = self.encoder.training
        intermediate, output = [], []
        features = torch.zeros(2, *input_shape)
        with torch.no_grad():
            self.encoder.eval()
            for j, (prefix, last) in enumerate(self.splits):
                if len(prefix) == 0:
                    raise ValueError(f"MTAN attends inside each stage, but stage {j} of {type(self.encoder).__name__} is one layer; give it two or more (a ResNet: blocks >= 2)")
                u = prefix(features)
                features = last(u)
                if u.dim() != 4 or u.shape[-2:] != features.shape[-2:]:
                    raise ValueError(f"MTAN needs stage {j}'s last layer to keep the resolution of its feature map; it maps {tuple(u.shape[1:])} to {tuple(features.shape[1:])}")
                intermediate.append(u.shape[1:])
                output.append(features.shape[1:])
        self.encoder.train(training)
        return intermediate, output

    def attend(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
        """Each task's attended features of the last stage ``a_k``, and its masks ``g_k^j(·)`` of every stage."""
        shared = x
        attended: dict[str, Tensor] = {}
        masks: dict[str, list[Tensor]] = {name: [] for name in self.attention}
        for j, (prefix, last) in enumerate(self.splits):
            intermediate = prefix(shared)
            shared = last(intermediate)
            for name, attention in self.attention.items():
                inputs = intermediate if j == 0 else torch.cat([intermediate, pooled_to(self.blocks[j - 1](attended[name]), intermediate)], dim=1)
                masks[name].append(attention[j](inputs))
                attended[name] = masks[name][-1] * shared
        return attended, masks

    def attention_masks(self, x: Tensor) -> dict[str, list[Tensor]]:
        """``{task: [g_k^j(·) for every stage j]}``, each in (0, 1) and shaped like that stage's output."""
        return self.attend(x)[1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        attended, _ = self.attend(x)
        return {name: self.heads[name](self.cut.flatten(features)) for name, features in attended.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.blocks.parameters()

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        check_task(self.heads, name)
        yield from self.attention[name].parameters()
        yield from self.heads[name].parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's last weight tensor and its bias: the layer GradNorm measures."""
        return last_weight_layer(self.encoder)
