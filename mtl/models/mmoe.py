"""MMoE: a mixture of shared experts with one softmax gate per task.

Ma, Zhao, Yi, Chen, Hong, Chi, 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD (Section 3, equations 6-8). With ``n`` experts ``f_i`` and
task ``k``'s gate and tower::

    g^k(x) = softmax(W_gk x)                    W_gk (n, d): a linear map of the input, no bias
    f^k(x) = Σ_i g^k(x)_i f_i(x)
    y_k    = h^k(f^k(x))

The experts are shared (every task's loss reaches them); task ``k``'s gate and tower are its own.
No single representation feeds the towers, so gradient aggregators take the Jacobian engine's
general path (the rows through the whole graph). Defaults: ``n = 8`` experts, as in the paper;
the expert and the tower are factories (``model.expert``, ``model.head``) of any width.
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


class SoftmaxGate(nn.Linear):
    """MMoE's gate: ``softmax(W x)`` over the experts, ``W (num_experts, in_features)`` without bias."""

    def __init__(self, in_features: int, num_experts: int) -> None:
        super().__init__(in_features, num_experts, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(super().forward(x.flatten(start_dim=1)), dim=-1)


Gate = Callable[[int, int], nn.Module]
"""Builds a task's gate from the input features and the number of experts; the gate maps the
input batch to weights ``(B, num_experts)`` that sum to one."""


class MMoE(nn.Module):
    """``num_experts`` experts built by ``expert(input_shape)``, a gate ``gate(input features,
    num_experts)`` and a tower ``head(expert width, task.num_outputs)`` per task."""

    def __init__(
        self,
        expert: Callable[[Sequence[int]], Encoder],
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
        num_experts: int = 8,
        gate: Gate = SoftmaxGate,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"model.num_experts must be at least 1, got {num_experts}")
        self.experts = nn.ModuleList(expert(input_shape) for _ in range(num_experts))
        width = self.experts[0].out_features
        self.gates = nn.ModuleDict({task.name: gate(math.prod(input_shape), num_experts) for task in tasks})
        self.heads = nn.ModuleDict({task.name: head(width, task.num_outputs) for task in tasks})

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """``{task: g^k(x)}``, each ``(B, num_experts)`` and summing to one over the experts."""
        return {name: gate(x) for name, gate in self.gates.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        experts = stacked([expert(x) for expert in self.experts])  # once, for every task's mixture
        return {name: self.heads[name](mixture(weights, experts)) for name, weights in self.gate_weights(x).items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.experts.parameters()

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        check_task(self.heads, name)
        yield from self.gates[name].parameters()
        yield from self.heads[name].parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last weight matrix and bias of every expert: the layer GradNorm measures."""
        return [parameter for expert in self.experts for parameter in last_weight_layer(expert)]

