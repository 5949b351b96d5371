"""Cross-stitch networks: one encoder per task, joined after every stage by learned linear units.

Misra, Shrivastava, Gupta, Hebert, 2016, "Cross-stitch Networks for Multi-task Learning", CVPR
(Section 3). Each task has its own copy of the encoder; after stage ``s`` (``Encoder.stages()``),
task ``k``'s input to the next stage is a learned combination of every task's activations::

    x̃_k^(s) = Σ_j α^(s)_{kj} x_j^(s)                   α^(s): a (K, K) cross-stitch unit

initialized as the paper recommends, ``α_kk = alpha_same`` (0.9) and ``α_kj = (1 - alpha_same) / (K - 1)``
(0.1 for two tasks), so each task starts mostly on its own network. The heads read the combination
after the last stage. One ``α`` per pair of tasks and stage, as in the paper's experiments (its
Section 3 also allows one per channel). The paper trains the units with a larger learning rate;
here they are ordinary parameters of the optimizer.

Every encoder copy reaches every task's loss through the units, so the encoders and the units are
the shared parameters and the heads the tasks' own; gradient aggregators take the Jacobian engine's
general path over ``K`` copies of the encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl.models.encoders import Encoder, last_weight_layer
from mtl.models.heads import check_task
from mtl.tasks import Task


class CrossStitch(nn.Module):
    """An encoder ``encoder(input_shape)`` per task, a cross-stitch unit after each of its stages,
    and a head ``head(out_features, task.num_outputs)`` per task."""

    def __init__(
        self,
        encoder: Callable[[Sequence[int]], Encoder],
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
        alpha_same: float = 0.9,
    ) -> None:
        super().__init__()
        if len(tasks) < 2 or not 0.0 <= alpha_same <= 1.0:
            raise ValueError(f"a cross-stitch network joins two or more tasks with model.alpha_same in [0, 1]; got {len(tasks)} tasks and {alpha_same}")
        names = [task.name for task in tasks]
        self.encoders = nn.ModuleDict({name: encoder(input_shape) for name in names})
        # each encoder's stages, cut once: views of its modules (a list, so not registered twice)
        self.stages = [self.encoders[name].stages() for name in names]
        stages = len(self.stages[0])
        others = (1.0 - alpha_same) / (len(names) - 1)
        initial = torch.full((len(names), len(names)), others).fill_diagonal_(alpha_same)
        self.units = nn.ParameterList(nn.Parameter(initial.clone()) for _ in range(stages))
        width = next(iter(self.encoders.values())).out_features
        self.heads = nn.ModuleDict({task.name: head(width, task.num_outputs) for task in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        names = list(self.heads)
        activations = [x] * len(names)
        for level, unit in enumerate(self.units):
            outputs = torch.stack([self.stages[task][level](activations[task]) for task in range(len(names))])  # (K, B, ...)
            activations = list(torch.tensordot(unit, outputs, dims=1))
        return {name: self.heads[name](activation) for name, activation in zip(names, activations)}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoders.parameters()
        yield from self.units.parameters()

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        check_task(self.heads, name)
        return self.heads[name].parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last weight tensor and bias of every task's encoder: the layer GradNorm measures."""
        return [parameter for encoder in self.encoders.values() for parameter in last_weight_layer(encoder)]
