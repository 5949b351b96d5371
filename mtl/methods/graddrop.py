"""Gradient Sign Dropout (GradDrop).

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, 2020, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", arXiv:2010.06808.

Per coordinate, the sign purity of the task gradients decides which sign survives::

    P = ½ (1 + sum_k g_k / sum_k |g_k|)            (P = ½ where every g_k is 0)
    U ~ Uniform[0, 1), one draw per coordinate
    M_k = 1[U < P] 1[g_k > 0] + 1[U ≥ P] 1[g_k < 0]
    M_k ← ℓ_k + (1 - ℓ_k) M_k                      (leak ℓ_k ∈ [0, 1], default 0)
    d = (1/K) sum_k M_k g_k

So with no leak, every coordinate keeps only its positive or only its negative task components,
positive with probability ``P``; where all tasks agree in sign ``P`` is 0 or 1 and the coordinate
is kept whole. ``U`` comes from the method's seeded generator. The paper's ``1[P > U]`` and
``1[P < U]`` differ from the masks above only on the null event ``U = P``, where this version
keeps the negative parts instead of dropping both.

Differences from the paper, each deliberate:

- Where: the paper applies GradDrop to the gradients at a shared activation layer (summed over
  the batch after multiplying by the sign of the input); the aggregator here sees the Jacobian of
  the shared parameters and applies the same rule to each parameter coordinate.
- Scale: the paper sums the masked gradients; ``mtl`` takes their mean (``base.py``'s
  convention: K identical rows give that row). Multiply the learning rate by ``K`` for the
  paper's step.

It is elementwise, not a combination of the rows, so ``last_weights`` stays ``None``. Low
precision Jacobians are masked in float32 and returned in their own dtype. Cost: K task
gradients and O(K P) elementwise work; no solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import GradientAggregator, register


@register("graddrop")
class GradDrop(GradientAggregator):
    """GradDrop: keep, per coordinate, the positive or the negative task components, chosen by sign purity."""

    stochastic = True

    def __init__(self, num_tasks: int, leak: float | Sequence[float] = 0.0, seed: int = 0, **options: Any) -> None:
        super().__init__(num_tasks, seed, **options)
        leaks = [float(leak)] * num_tasks if isinstance(leak, (int, float)) else [float(value) for value in leak]
        if len(leaks) != num_tasks or not all(0.0 <= value <= 1.0 for value in leaks):
            raise ValueError(f"method.leak must be one number or {num_tasks} numbers, each in [0, 1]; got {leak}")
        self.register_buffer("leak", torch.tensor(leaks))

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        matrix = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
        uniform = torch.rand(matrix.shape[1], generator=self.generator, dtype=torch.float64).to(matrix.device, matrix.dtype)
        masks = sign_masks(matrix, uniform)
        leak = self.leak.to(matrix.device, matrix.dtype)[:, None]
        masks = leak + (1 - leak) * masks
        return (masks * matrix).mean(dim=0).to(jacobian.dtype)


def sign_purity(jacobian: Tensor) -> Tensor:
    """``P = ½ (1 + sum_k g_k / sum_k |g_k|)`` per coordinate, ½ where every task gradient is 0."""
    total = jacobian.sum(dim=0)
    magnitude = jacobian.abs().sum(dim=0)
    ratio = torch.where(magnitude > 0, total / magnitude.clamp(min=torch.finfo(jacobian.dtype).tiny), torch.zeros_like(total))
    return 0.5 * (1 + ratio)


def sign_masks(jacobian: Tensor, uniform: Tensor) -> Tensor:
    """``M (K, P)``: 1 on the components of the sign kept at each coordinate (positive where ``U < P``)."""
    keep_positive = uniform < sign_purity(jacobian)
    return torch.where(keep_positive, jacobian > 0, jacobian < 0).to(jacobian.dtype)
