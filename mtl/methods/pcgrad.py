"""Gradient Surgery for Multi-Task Learning (PCGrad).

Yu, Kumar, Gupta, Levine, Hausman, Finn, 2020, arXiv:2001.06782.

Each task gradient is projected onto the normal plane of every other task gradient it conflicts
with, the others visited in a random order::

    g_i^PC = g_i
    for j in a random permutation of {1..K} \\ {i}:
        if g_i^PC · g_j < 0:
            g_i^PC = g_i^PC - (g_i^PC · g_j / |g_j|²) g_j
    d = (1/K) sum_i g_i^PC

The projections use the original ``g_j``, as in the paper's Algorithm 1. Every ``g_i^PC`` stays a
combination of the rows, so the method is a Gramian weighting: ``g_i^PC = c_i @ G`` with the
coefficient vector ``c_i`` updated by ``c_i -= (c_i·M[:, j] / M[j, j]) e_j`` for ``M = G Gᵀ``.

Scale: the paper sums the projected gradients; ``mtl`` takes their mean (``base.py``'s
convention, so that with no conflict PCGrad equals EW's mean step and the learning rates of the
two are comparable). Multiply the learning rate by ``K`` to reproduce the paper's step.

A zero gradient has ``M[j, j] = 0`` and never conflicts, so it projects nothing away. There are
no hyperparameters; the random orders come from the method's seeded generator (one permutation
per task per step). Cost: K task gradients, the ``(K, K)`` Gramian, then O(K³) work in K vectorized steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register


@register("pcgrad")
class PCGrad(GramianWeighting):
    """PCGrad: project away conflicting components, task by task in random order; mean of the results."""

    stochastic = True

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return projected_coefficients(gramian, self.generator).mean(dim=0)


def projected_coefficients(gramian: Tensor, generator: torch.Generator) -> Tensor:
    """Rows ``c_i`` with ``g_i^PC = c_i @ G``, for the Gramian ``G Gᵀ`` and random orders from
    ``generator``. Each task's projections depend on its own row alone, so the K tasks take their
    ``t``-th projection together: K vectorized NumPy steps instead of K² scalar ones (as tensor
    operations each scalar step would cost tens of microseconds of dispatch)."""
    num_tasks = len(gramian)
    matrix = gramian.detach().cpu().double().numpy()
    orders = np.stack([torch.randperm(num_tasks, generator=generator).numpy() for _ in range(num_tasks)])
    coefficients, tasks = np.eye(num_tasks), np.arange(num_tasks)
    for others in orders.T:
        inner_products = np.einsum("ij,ji->i", coefficients, matrix[:, others])
        conflicting = (others != tasks) & (inner_products < 0)
        rows, columns = tasks[conflicting], others[conflicting]
        coefficients[rows, columns] -= inner_products[conflicting] / matrix[columns, columns]
    return torch.from_numpy(coefficients).to(gramian.device, gramian.dtype)
