"""Soft optimal uncertainty weighting (UW-SO).

Kirchdorfer, Elich, Kutsche, Stuckenschmidt, Schott, Köhler, "Analytical Uncertainty-Based Loss
Weighting in Multi-Task Learning", GCPR 2024, arXiv:2408.07985.

Uncertainty weighting (``uw``) learns each task's weight; the paper solves for it instead. With the
Laplace form ``L_k / σ_k + log σ_k`` the optimal ``σ_k`` is ``L_k`` itself, so the optimal weight is
``1 / L_k`` of the current (detached) loss, and UW-SO softens it across the tasks::

    w_k = softmax_k( 1 / (T (L_k + ε)) ),      objective = sum_k w_k L_k      (w detached)

so the task with the smallest loss weighs most; ``T → ∞`` is EW's mean, ``T → 0`` puts all the
weight on the smallest loss. The weights sum to one, so ``K`` equal losses give EW's step (mean
scale, as the paper). ``ε = 1e-8`` as the first author's code (lukaskirchdorfer/MTL4PPM,
``UW_SO.py``) keeps a zero loss finite. Default ``T = 1``, that code's default; the paper tunes
``T`` per benchmark (the code's sweeps try 1 to 20). No state. Cost: one backward pass, as in
single-task training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.methods.base import LossWeighting, register

EPSILON = 1e-8


@register("uw_so")
class SoftOptimalUncertaintyWeighting(LossWeighting):
    """Weights ``softmax(1 / (T L))`` of the detached losses: the analytical uncertainty weights, softened by ``temperature``."""

    def __init__(self, num_tasks: int, temperature: float = 1.0) -> None:
        super().__init__(num_tasks)
        if temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, losses: Tensor) -> Tensor:
        inverse = 1.0 / (self.temperature * (losses.detach().double() + EPSILON))
        return torch.softmax(inverse, dim=0).to(losses.dtype)
