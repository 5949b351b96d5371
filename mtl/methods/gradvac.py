"""Gradient Vaccine (GradVac).

Wang, Tsvetkov, Firat, Cao, 2021, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", arXiv:2010.05874.

PCGrad only acts when two gradients conflict (cosine below 0); GradVac instead keeps, for every
ordered pair of tasks, an exponential moving average ``φ̂_ij`` of their cosine similarity and
raises the cosine to that target whenever it falls below it::

    g_i' = g_i
    for j in a random permutation of {1..K} \\ {i}:
        φ_ij = cos(g_i', g_j)
        if φ_ij < φ̂_ij:
            g_i' = g_i' + |g_i'| (φ̂_ij √(1 - φ_ij²) - φ_ij √(1 - φ̂_ij²)) / (|g_j| √(1 - φ̂_ij²)) g_j
        φ̂_ij = (1 - β) φ̂_ij + β φ_ij
    d = (1/K) sum_i g_i'

After the adjustment ``cos(g_i', g_j) = φ̂_ij`` exactly (the paper's Algorithm 1). The
targets start at 0 (so the first step is PCGrad's) and live in the ``targets`` buffer, so a
checkpoint resumes them. Default: ``beta = 0.01`` (the paper and LibMTL).

Differences from the paper, each deliberate:

- Granularity: the paper (and LibMTL's option) can align per layer or per parameter block; here
  the aggregator sees one flattened Jacobian, so alignment is over the whole shared parameter
  vector (LibMTL's ``GradVac_group_type=0``).
- Scale: the paper sums the adjusted gradients; ``mtl`` takes their mean (``base.py``'s
  convention): multiply the learning rate by ``K`` for the paper's step.
- A pair where either gradient is zero has no cosine: it is skipped and its target kept.

Cost: K task gradients, the ``(K, K)`` Gramian, O(K³) scalar work; K² buffer entries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register


@register("gradvac")
class GradVac(GramianWeighting):
    """GradVac: raise each pair's cosine to its moving-average target, tasks in random order; mean of the results."""

    stochastic = True
    stateful = True

    def __init__(self, num_tasks: int, beta: float = 0.01, seed: int = 0, **options: Any) -> None:
        super().__init__(num_tasks, seed, **options)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"method.beta must lie in [0, 1], got {beta}")
        self.beta = beta
        self.register_buffer("targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        targets = self.targets.cpu()  # the Gramian is on the CPU; the buffer follows the module
        coefficients = vaccinated_coefficients(gramian, targets, self.beta, self.generator)
        self.targets.copy_(targets)
        return coefficients.mean(dim=0)


def vaccinated_coefficients(gramian: Tensor, targets: Tensor, beta: float, generator: torch.Generator) -> Tensor:
    """Rows ``c_i`` with ``g_i' = c_i @ G``; updates the cosine ``targets (K, K)`` in place."""
    num_tasks = len(gramian)
    coefficients = torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device)
    for task in range(num_tasks):
        for other in torch.randperm(num_tasks, generator=generator).tolist():
            norm = (coefficients[task] @ gramian @ coefficients[task]).clamp(min=0).sqrt()
            other_norm = gramian[other, other].clamp(min=0).sqrt()
            if other == task or norm == 0 or other_norm == 0:
                continue
            cosine = (coefficients[task] @ gramian[:, other] / (norm * other_norm)).clamp(-1, 1)
            target = targets[task, other].to(gramian.dtype)
            if cosine < target:
                coefficients[task, other] += norm * adjustment(cosine, target) / other_norm
            targets[task, other] = (1 - beta) * targets[task, other] + beta * cosine
    return coefficients


def adjustment(cosine: Tensor, target: Tensor) -> Tensor:
    """``(φ̂ √(1 - φ²) - φ √(1 - φ̂²)) / √(1 - φ̂²)``: the multiple of ``|g_i| g_j / |g_j|`` making the cosine ``φ̂``.

    ``1 - φ̂²`` is floored at the machine epsilon, so a target of exactly 1 gives a finite step.
    """
    target_sine = (1 - target**2).clamp(min=torch.finfo(target.dtype).eps).sqrt()
    return (target * (1 - cosine**2).sqrt() - cosine * target_sine) / target_sine
