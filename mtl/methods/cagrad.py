"""CAGrad: the direction that maximizes the worst task improvement near the mean gradient.

Conflict-Averse Gradient Descent for Multi-task Learning. Bo Liu, Xingchao Liu, Xiaojie Jin,
Peter Stone and Qiang Liu, NeurIPS 2021, arXiv:2110.14048.

With task gradients ``g_1..g_K`` and their mean ``g_0``, CAGrad solves

    max_d  min_k <g_k, d>   subject to   |d - g_0| <= c |g_0|

through its dual over the simplex, ``w* = argmin_{w in simplex} <g_w, g_0> + c |g_0| |g_w|`` with
``g_w = sum_k w_k g_k``, whose solution gives ``d* = g_0 + (c |g_0| / |g_w*|) g_w*``. The official
code then divides by a ``rescale`` factor: ``0`` -> 1, ``1`` -> ``1 + c^2`` (its default, and
mtl's), ``2`` -> ``1 + c``. Defaults: ``c = 0.4`` (the paper's value on NYUv2 and Cityscapes),
``rescale = 1``.

Scale: for ``K`` identical rows ``g`` the direction is ``(1 + c) g`` divided by the rescale factor,
``1.4 / 1.16 g`` by default, so ``mean_scale`` is False (it holds for ``rescale = 2`` or ``c = 0``);
``c = 0`` gives the mean for every ``rescale``.

The dual is solved by scipy's SLSQP (analytic gradient, ``ftol = 1e-15`` on the objective, at most
1000 iterations) on the Gramian divided by its mean diagonal, started from uniform weights as in
the official code. The duality gap is below ``1e-5 c |g_0| min_k |g_k|`` while the task-gradient
norms lie within a factor 100 of each other, and grows when they are 1e4 or more apart.
Degenerate cases: if ``g_0 = 0`` (or ``c = 0``) the direction is ``g_0``; if the optimal ``g_w*``
vanishes (relative squared norm below ``1e-12``) the ball constraint is inactive and the direction
is ``g_0``.

Cost per step: ``K`` backward passes for the Jacobian, the ``K x K`` Gramian, and a small
``K``-variable SLSQP solve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtl.methods.base import GramianWeighting, register

VANISHING = 1e-12
"""Squared norms below this (relative to the mean squared task-gradient norm) count as zero."""

RESCALES = (0, 1, 2)
"""The official code's ``rescale`` choices: divide the direction by 1, ``1 + c^2`` or ``1 + c``."""


def worst_case_weights(gramian: Tensor, radius: float) -> Tensor:
    """``argmin_{w in simplex} wᵀ A 1/K + radius sqrt(wᵀ A w)`` for ``A = gramian`` (the CAGrad dual)."""
    size = len(gramian)
    matrix = gramian.numpy()
    towards_mean = matrix.mean(axis=1)

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        combined = matrix @ weights
        norm = np.sqrt(max(weights @ combined, VANISHING))
        return weights @ towards_mean + radius * norm, towards_mean + radius * combined / norm

    result = minimize(
        objective,
        np.full(size, 1.0 / size),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * size,
        constraints=[{"type": "eq", "fun": lambda weights: weights.sum() - 1.0, "jac": lambda weights: np.ones_like(weights)}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return torch.from_numpy(result.x).clamp(min=0).to(gramian.dtype)


@register("cagrad")
class CAGrad(GramianWeighting):
    """The mean gradient moved, within a ball of radius ``c |g_0|``, to maximize the least task improvement."""

    mean_scale = False

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if c < 0:
            raise ValueError(f"method.c must be non-negative, got {c}")
        if rescale not in RESCALES:
            raise ValueError(f"method.rescale is {rescale}; valid choices: {list(RESCALES)} (divide by 1, 1 + c^2, 1 + c)")
        self.c = c
        self.rescale = rescale

    def scale(self) -> float:
        return (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        size = len(gramian)
        mean_weights = torch.full((size,), 1.0 / size, dtype=gramian.dtype)
        unit = gramian.diagonal().mean()
        if not unit > 0:
            return mean_weights / self.scale()
        matrix = gramian / unit
        radius = self.c * matrix.mean().clamp(min=0).sqrt().item()
        if radius**2 <= VANISHING:
            return mean_weights / self.scale()
        worst = worst_case_weights(matrix, radius)
        worst_norm_squared = (worst @ matrix @ worst).item()
        step = radius / np.sqrt(worst_norm_squared) if worst_norm_squared > VANISHING else 0.0
        return (mean_weights + step * worst) / self.scale()
