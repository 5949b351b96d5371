"""PLE and CGC: shared and task-specific experts, mixed per task by gates, in stacked layers.

Tang, Liu, Zhao, Gong, 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys (Section 4). An extraction layer ``j`` has
``m_s`` shared experts ``E_s`` and ``m_t`` experts ``E_k`` of each task; task ``k``'s gate mixes
its own experts and the shared ones, read at task ``k``'s input of the layer::

    g^{k,j} = softmax(W^{k,j} g^{k,j-1}) · [E_k(g^{k,j-1}); E_s(g^{s,j-1})]      g^{k,0} = g^{s,0} = x

Every layer but the last also has a shared gate, which mixes all the layer's experts (every task's
and the shared ones) into the next layer's shared input ``g^{s,j}``. The towers read the last
layer: ``y_k = t^k(g^{k,L})``. CGC (Customized Gate Control, Section 4.1) is one such layer
(``levels=1``); PLE stacks ``levels`` of them (the paper's experiments use two).

Which parameters are shared follows from which losses reach them: the shared experts and gates,
and every task's experts below the last layer (the shared gate mixes them into every task's
path), are shared; task ``k``'s own are its tower, its experts and gate of the last layer, and its
gate of the layer below (which feeds only those). No single representation feeds the towers, so
gradient aggregators take the Jacobian engine's general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl.models.encoders import Encoder, last_weight_layer
from mtl.models.experts import mixture, stacked
from mtl.models.heads import check_task
from mtl.tasks import Task

ExpertFactory = Callable[[Sequence[int]], Encoder]


class ExtractionLayer(nn.Module):
    """One layer of shared and task-specific experts with a gate per task (and, with
    ``shared_gate``, one for the next layer's shared input)."""

    def __init__(self, expert: ExpertFactory, input_shape: Sequence[int], task_names: Sequence[str], shared_experts: int, task_experts: int, shared_gate: bool) -> None:
        super().__init__()
        features = math.prod(input_shape)
        self.shared_experts = nn.ModuleList(expert(input_shape) for _ in range(shared_experts))
        self.task_experts = nn.ModuleDict({name: nn.ModuleList(expert(input_shape) for _ in range(task_experts)) for name in task_names})
        self.gates = nn.ModuleDict({name: nn.Linear(features, task_experts + shared_experts, bias=False) for name in task_names})
        self.shared_gate = nn.Linear(features, len(task_names) * task_experts + shared_experts, bias=False) if shared_gate else None
        self.out_features = self.shared_experts[0].out_features

    def forward(self, inputs: dict[str, Tensor], shared_input: Tensor) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]:
        """Each task's output, the shared output (None in a layer without a shared gate) and each
        task's gate weights ``(B, m_t + m_s)``."""
        shared = [expert(shared_input) for expert in self.shared_experts]
        own = {name: [expert(inputs[name]) for expert in experts] for name, experts in self.task_experts.items()}
        weights = {name: torch.softmax(gate(inputs[name].flatten(start_dim=1)), dim=-1) for name, gate in self.gates.items()}
        outputs = {name: mixture(weights[name], stacked([*own[name], *shared])) for name in own}
        if self.shared_gate is None:
            return outputs, None, weights
        shared_weights = torch.softmax(self.shared_gate(shared_input.flatten(start_dim=1)), dim=-1)
        return outputs, mixture(shared_weights, stacked([*(output for name in own for output in own[name]), *shared])), weights


class PLE(nn.Module):
    """``levels`` extraction layers of experts built by ``expert(input shape)`` (``shared_experts``
    shared, ``task_experts`` per task), then a tower ``head(expert width, task.num_outputs)`` per task."""

    def __init__(
        self,
        expert: ExpertFactory,
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
        levels: int = 2,
        shared_experts: int = 1,
        task_experts: int = 1,
    ) -> None:
        super().__init__()
        if levels < 1 or shared_experts < 1 or task_experts < 1:
            raise ValueError(f"model.levels, shared_experts and task_experts must each be at least 1, got {levels}, {shared_experts}, {task_experts}")
        names = [task.name for task in tasks]
        self.levels = nn.ModuleList()
        shape = tuple(input_shape)
        for level in range(levels):
            self.levels.append(ExtractionLayer(expert, shape, names, shared_experts, task_experts, shared_gate=level < levels - 1))
            shape = (self.levels[-1].out_features,)
        self.heads = nn.ModuleDict({task.name: head(shape[0], task.num_outputs) for task in tasks})

    def extract(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each task's output of the last layer and its gate weights there."""
        inputs, shared = {name: x for name in self.heads}, x
        for layer in self.levels:
            inputs, shared, weights = layer(inputs, shared)
        return inputs, weights

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{task: weights}`` of the last layer's gates, each ``(B, m_t + m_s)`` (own experts first)."""
        return self.extract(x)[1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs, _ = self.extract(x)
        return {name: self.heads[name](output) for name, output in outputs.items()}

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        check_task(self.heads, name)
        last = self.levels[-1]
        yield from self.heads[name].parameters()
        yield from last.task_experts[name].parameters()
        yield from last.gates[name].parameters()
        if len(self.levels) > 1:
            yield from self.levels[-2].gates[name].parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        own = {id(parameter) for name in self.heads for parameter in self.task_parameters(name)}
        return (parameter for parameter in self.levels.parameters() if id(parameter) not in own)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last weight matrix and bias of the last layer's shared experts: the layer GradNorm measures."""
        return [parameter for expert in self.levels[-1].shared_experts for parameter in last_weight_layer(expert)]

