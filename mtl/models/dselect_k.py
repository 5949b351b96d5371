"""DSelect-k: a differentiable gate that converges to a mixture of at most ``k`` experts.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, 2021, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS (arXiv:2106.03760, Section 3). The ``n = 2^m`` experts are indexed by their ``m``-bit binary
codes. A single-expert selector with ``m`` logits ``z`` puts on expert ``j`` the weight

    r(z)_j = Π_i ( S(z_i) if bit i of j is 1 else 1 - S(z_i) )

with the smooth step ``S(t) = 0`` for ``t <= -γ/2``, ``1`` for ``t >= γ/2`` and
``-2t³/γ³ + 3t/(2γ) + 1/2`` between, so ``r(z)`` sums to one and is one-hot once every ``|z_i| >= γ/2``.
A gate combines ``k`` selectors with softmax weights ``α``: ``w = Σ_l softmax(α)_l r(z^(l))``, which
at convergence has at most ``k`` non-zeros. Per example (``per_example=True``, as in LibMTL), ``z``
and ``α`` are linear maps of the input; otherwise (the paper's static gate) they are parameters.
Initialization as the authors' code: ``z`` uniform in ``±γ/100``, ``α`` uniform in ``±0.05``.

Each task has its own gate and tower over the shared experts (MMoE's architecture, ``mtl.models.mmoe``,
with DSelect-k gates). Defaults: ``k = 2``, ``γ = 1`` (the authors' code). The experts must be a power
of two: for other counts the authors add a term to the training loss that keeps the weight on the
codes of existing experts, which a model's forward cannot add. The optional entropy regularizer of
the authors' code is left out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mtl.models.encoders import Encoder
from mtl.models.mmoe import MMoE
from mtl.tasks import Task


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """``S(t)``: 0 below ``-γ/2``, 1 above ``γ/2``, the cubic ``-2t³/γ³ + 3t/(2γ) + 1/2`` between."""
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectGate(nn.Module):
    """A DSelect-k gate over ``num_experts`` (a power of two) experts: ``forward(x) -> (B, num_experts)``."""

    def __init__(self, in_features: int, num_experts: int, k: int = 2, gamma: float = 1.0, per_example: bool = True) -> None:
        super().__init__()
        bits = int(math.log2(num_experts)) if num_experts > 1 else 0
        if num_experts < 2 or 2**bits != num_experts:
            raise ValueError(f"DSelect-k encodes the experts in binary: model.num_experts must be a power of two (2, 4, 8, ...), got {num_experts}")
        if k < 1:
            raise ValueError(f"model.k must be at least 1, got {k}")
        self.k, self.bits, self.gamma = k, bits, gamma
        codes = torch.tensor([[(expert >> (bits - 1 - bit)) & 1 for bit in range(bits)] for expert in range(num_experts)], dtype=torch.bool)
        self.register_buffer("codes", codes, persistent=False)  # (n, m): row j is the binary code of expert j
        if per_example:
            self.selectors, self.selector_weights = nn.Linear(in_features, k * bits), nn.Linear(in_features, k)
            for layer, bound in ((self.selectors, gamma / 100), (self.selector_weights, 0.05)):
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.uniform_(layer.bias, -bound, bound)
        else:
            self.z = nn.Parameter(torch.empty(k, bits).uniform_(-gamma / 100, gamma / 100))
            self.alpha = nn.Parameter(torch.empty(k).uniform_(-0.05, 0.05))
        self.per_example = per_example

    def selector_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``r(z^(l))`` of every selector ``(B, k, n)`` and the selectors' weights ``softmax(α)`` ``(B, k)``."""
        if self.per_example:
            flat = x.flatten(start_dim=1)
            z, alpha = self.selectors(flat).view(len(x), self.k, self.bits), self.selector_weights(flat)
        else:
            z, alpha = self.z.expand(len(x), -1, -1), self.alpha.expand(len(x), -1)
        steps = smooth_step(z, self.gamma)[:, :, None, :]  # (B, k, 1, m)
        outputs = torch.where(self.codes, steps, 1 - steps).prod(dim=-1)  # (B, k, n)
        return outputs, torch.softmax(alpha, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """The expert weights ``(B, num_experts)``: at convergence at most ``k`` non-zeros."""
        outputs, weights = self.selector_outputs(x)
        return torch.einsum("bk,bkn->bn", weights, outputs)


class DSelectK(MMoE):
    """MMoE with a DSelect-k gate per task: ``num_experts`` (a power of two) shared experts built by
    ``expert(input_shape)``, a gate selecting ``k`` of them and a tower per task."""

    def __init__(
        self,
        expert: Callable[[Sequence[int]], Encoder],
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
        num_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        per_example: bool = True,
    ) -> None:
        gate = functools.partial(DSelectGate, k=k, gamma=gamma, per_example=per_example)
        super().__init__(expert, head, tasks, input_shape, num_experts, gate)
