"""Double-sampling methods: task weights from one pair of independent stochastic Jacobians, the
direction from a third, so the weights and the direction are not biased by sharing their noise.

Both take ``independent_samples = 3``: the engine splits each batch into three disjoint parts and
hands over ``jacobian (3, K, P)`` (the parts in order ``xi_1, xi_2, zeta``) and ``losses (3, K)``.
The heads follow the mean of their task's gradient over the three parts. LibMTL draws three full
batches per step instead; set ``data.batch_size`` to three times the usual size to match its data
use. Cost: three forward passes on a third of the batch each, and ``3K`` backward passes.

- MoDo: "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
  Conflict-Avoidance", Lisha Chen, Heshan Fernando, Yiming Ying, Tianyi Chen, NeurIPS 2023,
  arXiv:2305.20057. One projected-gradient step on the weights per training step::

      lambda <- Proj_simplex(lambda - gamma (G_1 G_2ᵀ lambda + rho lambda)),   d = lambda @ G_3

  Defaults from the authors' code (as LibMTL): ``gamma = 0.001``, ``rho = 0.1``; ``lambda`` starts
  at ``1/K`` and persists across steps.
- SDMGrad: "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
  Algorithms", Peiyao Xiao, Hao Ban, Kaiyi Ji, NeurIPS 2023, arXiv:2305.18409. The weights solve
  ``min_w (1/2) <G_1ᵀ w, G_2ᵀ w> + lambda <G_1ᵀ w, g0_2>`` over the simplex (``g0`` the mean
  gradient) by ``iterations`` steps of projected SGD with momentum, warm-started from the last
  step; the direction stays near the mean gradient::

      A   = G_1 G_2ᵀ / s^2,  s = mean_k sqrt(max(A_kk, 0))     (scale-free step size)
      w  <- Proj_simplex(w - lr (A w + lambda A 1/K))           (iterations times, momentum)
      d   = (w @ G_3 + lambda mean_k g_3k) / (1 + lambda)

  Defaults from the authors' code (as LibMTL): ``lambda = 0.3``, ``iterations = 20``, ``lr = 5``,
  momentum 0.5 (restarted every step, as there).

Both directions are mean scale (weights on the simplex; SDMGrad's mix with the mean is
normalised by ``1 + lambda``). Weights are computed in float64.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import GradientAggregator, register, row_inner_products
from mtl.methods.solvers import project_onto_simplex

SCALE_FLOOR = 1e-8
"""Added to SDMGrad's squared scale, as in the authors' code, so a zero Jacobian stays finite."""


class DoubleSampling(GradientAggregator):
    """Weights on the simplex, kept between steps, from ``G_1 G_2ᵀ``; direction from ``G_3``."""

    stateful = True
    independent_samples = 3

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.register_buffer("task_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        if jacobian.dim() != 3 or len(jacobian) != self.independent_samples:
            raise ValueError(f"{type(self).__name__} needs {self.independent_samples} Jacobians (N, K, P), got shape {tuple(jacobian.shape)}")
        matrix = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
        cross_gramian = row_inner_products(matrix[0], matrix[1]).double()
        self.task_weights = self.updated_weights(cross_gramian)
        self.last_weights = self.task_weights
        return self.direction(matrix[2]).to(jacobian.dtype)

    @abstractmethod
    def updated_weights(self, cross_gramian: Tensor) -> Tensor:
        """The new weights ``(K,)`` from the current ones and ``G_1 G_2ᵀ`` (float64)."""

    def direction(self, jacobian: Tensor) -> Tensor:
        return self.task_weights.to(jacobian.dtype) @ jacobian


@register("modo")
class MoDo(DoubleSampling):
    """MoDo: one projected-gradient step of the weights on ``G_1 G_2ᵀ`` per training step."""

    def __init__(self, num_tasks: int, gamma: float = 0.001, rho: float = 0.1, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if gamma <= 0 or rho < 0:
            raise ValueError(f"method.gamma must be positive and method.rho non-negative, got gamma={gamma}, rho={rho}")
        self.gamma = gamma
        self.rho = rho

    def updated_weights(self, cross_gramian: Tensor) -> Tensor:
        weights = self.task_weights
        return project_onto_simplex(weights - self.gamma * (cross_gramian @ weights + self.rho * weights))


@register("sdmgrad")
class SDMGrad(DoubleSampling):
    """SDMGrad: weights by projected SGD with momentum on the direction-oriented objective; direction mixed with the mean."""

    def __init__(self, num_tasks: int, lamda: float = 0.3, iterations: int = 20, lr: float = 5.0, momentum: float = 0.5, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if lamda < 0 or iterations < 1:
            raise ValueError(f"method.lamda must be non-negative and method.iterations at least 1, got lamda={lamda}, iterations={iterations}")
        self.lamda = lamda
        self.iterations = iterations
        self.lr = lr
        self.momentum = momentum

    def updated_weights(self, cross_gramian: Tensor) -> Tensor:
        scale = cross_gramian.diagonal().clamp_min(0).sqrt().mean()
        normalized = cross_gramian / (scale**2 + SCALE_FLOOR)
        toward_mean = self.lamda * normalized.mean(dim=1)
        weights, velocity = self.task_weights, torch.zeros_like(self.task_weights)
        for _ in range(self.iterations):
            velocity = self.momentum * velocity + normalized @ weights + toward_mean
            weights = project_onto_simplex(weights - self.lr * velocity)
        return weights

    def direction(self, jacobian: Tensor) -> Tensor:
        return (super().direction(jacobian) + self.lamda * jacobian.mean(dim=0)) / (1 + self.lamda)
