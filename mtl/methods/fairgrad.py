"""FairGrad: Fair Resource Allocation in Multi-Task Learning.

Ban and Ji, 2024, arXiv:2402.15638.

Each task's utility is its rate of decrease ``g_kᵀ d``; FairGrad picks the update that maximizes
the α-fair total utility ``sum_k (g_kᵀ d)^{1-α} / (1-α)`` (``sum_k log g_kᵀ d`` at ``α = 1``) in a
ball. Its optimality condition makes ``d = sum_k w_k g_k`` with ``w > 0`` solving::

    G Gᵀ w = w^{-1/α}        (elementwise power)

``α = 0`` would be the sum of utilities, ``α = 1`` proportional fairness, which is Nash-MTL's
equation ``w ⊙ (G Gᵀ w) = 1``, and ``α → ∞`` max-min fairness. As in the official code, ``w`` is
the non-negative least-squares root of ``G Gᵀ w - w^{-1/α}`` found by scipy's ``least_squares``
from ``w = 1/K`` (here with ``ftol = xtol = gtol = 1e-12``). For conditioning the Gramian is first
divided by ``s`` = its largest diagonal entry, an exact rescaling: the root for ``G Gᵀ / s`` times
``s^{-α/(α+1)}`` is the root for ``G Gᵀ``.

Defaults: ``alpha = 2.0``, the value of the official run scripts (CelebA, QM9; the paper tunes α
per benchmark); ``max_norm = 1.0``: like Nash-MTL, whose code it builds on, the official code
clips the norm of the shared gradient to 1 (``max_norm ≤ 0`` disables it).

Scale (``mean_scale = False``): the direction is the α-fair one, not the mean: for K identical
rows ``g``, ``w_k = (K |g|²)^{-α/(α+1)}``. Zero gradients have no positive root; they get weight 0.
When the Gramian is singular (K > P) the least-squares root is a best effort and the clip keeps
the direction bounded. Cost: K task gradients, the ``(K, K)`` Gramian, one small least-squares
solve per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares
from torch import Tensor

from mtl.methods.base import GramianWeighting, register
from mtl.methods.solvers import clip_weights


@register("fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad: the α-fair weights ``G Gᵀ w = w^{-1/α}``, the direction clipped to ``max_norm``."""

    mean_scale = False

    def __init__(self, num_tasks: int, alpha: float = 2.0, max_norm: float = 1.0, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if alpha <= 0:
            raise ValueError(f"method.alpha must be positive (1 is proportional fairness), got {alpha}")
        self.alpha = alpha
        self.max_norm = max_norm

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return fair_weights(gramian, self.alpha)

    def scaled(self, weights: Tensor, gramian: Tensor) -> Tensor:
        return clip_weights(weights, gramian, self.max_norm)


def fair_weights(gramian: Tensor, alpha: float) -> Tensor:
    """``w > 0`` with ``G Gᵀ w = w^{-1/α}`` over the non-zero gradients (0 for zero ones)."""
    kept = gramian.diagonal() > 0
    weights = torch.zeros(len(gramian), dtype=gramian.dtype, device=gramian.device)
    if not kept.any():
        return weights
    matrix = gramian[kept][:, kept].cpu().numpy()
    scale = matrix.diagonal().max()
    matrix = matrix / scale

    def residual(x: np.ndarray) -> np.ndarray:
        return matrix @ x - x ** (-1 / alpha)

    def jacobian(x: np.ndarray) -> np.ndarray:
        return matrix + np.diag(x ** (-1 / alpha - 1) / alpha)

    start = np.full(len(matrix), 1 / len(gramian))
    root = least_squares(residual, start, jac=jacobian, bounds=(0, np.inf), ftol=1e-12, xtol=1e-12, gtol=1e-12).x
    weights[kept] = torch.from_numpy(root * scale ** (-alpha / (alpha + 1))).to(weights)
    return weights
