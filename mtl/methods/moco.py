"""MoCo: tracked task gradients, combined by weights that follow projected gradient descent on the simplex.

"Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach",
Heshan Devaka Fernando, Han Shen, Miao Liu, Subhajit Chaudhury, Keerthiram Murugesan, Tianyi Chen,
2023 (ICLR 2023), arXiv:2210.12624.

MGDA's weights computed from one minibatch's gradients are biased; MoCo tracks each task's
gradient with a moving average ``y_k`` and takes one projected gradient step on MGDA's objective
``(1/2) ||lambda @ Y||^2 + (rho/2) ||lambda||^2`` per training step (Algorithm 1)::

    beta_t   = beta / t**beta_sigma,   gamma_t = gamma / t**gamma_sigma
    y_k     <- y_k - beta_t (y_k - g_k)                       y_k starts at 0
    lambda  <- Proj_simplex(lambda - gamma_t (Y Yᵀ + rho I) lambda)   lambda starts at 1/K
    d        = lambda @ Y

Defaults (LibMTL, whose MoCo follows the authors' code): ``beta = 0.5``, ``beta_sigma = 0.5``,
``gamma = 0.1``, ``gamma_sigma = 0.5``, ``rho = 0``. The projection onto the simplex is exact
(the sort-based algorithm of Held, Wolfe and Crowder / Duchi et al. 2008), so no tolerance.

Deviations from LibMTL, which follow the paper instead: LibMTL replaces the projection with a
softmax and feeds ``L_k g_k / ||g_k||`` instead of ``g_k``; here ``g_k`` is the task's gradient as
given and the weights are projected.

Scale: ``lambda`` lies on the simplex, so the direction is mean-scale once the tracking has caught
up, but ``Y`` starts at zero (the authors' code): for ``K`` identical rows ``g`` the first direction
is ``beta_1 g``; ``mean_scale = False`` says so. ``last_weights`` holds ``lambda``, the weights of
the tracked gradients ``Y`` (not of this step's Jacobian).

Cases: zero rows track to zero and draw the weight (MGDA's minimum norm); norms far apart make the
step ``gamma_t Y Yᵀ lambda`` large and the projection lands on a vertex; K = 1 gives ``lambda = 1``.
float16/bfloat16 Jacobians are tracked in float32; ``lambda`` is float64.

Cost: the Jacobian (K backward passes), ``O(K P)`` memory for ``Y`` and ``O(K^2 P)`` time for its
Gramian per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import register
from mtl.methods.solvers import project_onto_simplex
from mtl.methods.task_state import TaskStateAggregator, decayed


@register("moco")
class MoCo(TaskStateAggregator):
    """MoCo: ``d = lambda @ Y`` with tracked gradients ``Y`` and projected-gradient weights ``lambda``."""

    mean_scale = False
    task_states = ("tracked_gradients",)

    def __init__(
        self,
        num_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(num_tasks, **options)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"method.beta must be in (0, 1], got {beta}")
        if gamma <= 0.0:
            raise ValueError(f"method.gamma must be positive, got {gamma}")
        for name, value in {"beta_sigma": beta_sigma, "gamma_sigma": gamma_sigma, "rho": rho}.items():
            if value < 0.0:
                raise ValueError(f"method.{name} must be non-negative, got {value}")
        self.beta, self.beta_sigma = beta, beta_sigma
        self.gamma, self.gamma_sigma = gamma, gamma_sigma
        self.rho = rho
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        matrix = self.in_state_dtype(jacobian)
        self.steps += 1
        beta = decayed(self.beta, self.beta_sigma, self.steps).to(matrix.dtype)
        self.tracked_gradients.lerp_(matrix, beta)
        tracked = self.tracked_gradients.double()
        regularized_gramian = tracked @ tracked.T + self.rho * torch.eye(len(tracked), dtype=torch.float64, device=tracked.device)
        step = decayed(self.gamma, self.gamma_sigma, self.steps)
        self.task_weights = project_onto_simplex(self.task_weights - step * regularized_gramian @ self.task_weights)
        self.last_weights = self.task_weights
        return (self.task_weights.to(matrix.dtype) @ self.tracked_gradients).to(jacobian.dtype)
