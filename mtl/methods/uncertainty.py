"""Uncertainty Weighting (UW).

Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
and Semantics", 2018, arXiv:1705.07115.

Each task has a learnable log-variance ``s_k = log sigma_k^2``, trained jointly with the network
by the same optimizer (``s`` is a parameter of this module). Update rule::

    objective = (1/K) sum_k exp(-s_k) L_k + s_k
    d objective / d s_k   = (1 - exp(-s_k) L_k) / K      (stationary at exp(-s_k) = 1 / L_k)
    d objective / d theta = (1/K) sum_k exp(-s_k) grad L_k

The paper derives ``L / (2 sigma^2) + log sigma`` for a Gaussian (regression) task and
``L / sigma^2 + log sigma`` for a softmax (classification) task, i.e. ``(exp(-s) L + s) / 2`` and
``exp(-s) L + s / 2``. Like LibMTL and the Nash-MTL/FAMO code we use the common form above for
every task: it drops the 1/2 factors, which rescales a regression task's terms by 2 and changes a
classification task's regularizer from ``s/2`` to ``s``; the stationary weight ``1 / L_k`` is
that of the regression form.

Default: ``s_k = 0`` at the start (weights 1, as LibMTL). Scale: ``mtl`` minimizes the mean over
tasks, ``(1/K) sum_k exp(-s_k) L_k + s_k``, so the weights are ``exp(-s_k) / K`` and the first step is
EW's (mean scale); the factor ``1/K`` leaves the stationary point ``exp(-s_k) = 1 / L_k`` unchanged.
In this form UW is IMTL-L (``imtl.py``) with negated parameters, ``s_k = -s'_k``: the two train the
same model under SGD or Adam. Cost: one backward pass, as in single-task training, plus ``K``
scalar parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.methods.base import LossWeighting, register


@register("uw")
class UncertaintyWeighting(LossWeighting):
    """Weights ``exp(-s_k) / K`` with learnable log-variances ``s``; the objective adds ``mean_k s_k``."""

    stateful = True

    def __init__(self, num_tasks: int, initial_log_variance: float = 0.0) -> None:
        super().__init__(num_tasks)
        self.log_variances = nn.Parameter(torch.full((num_tasks,), float(initial_log_variance)))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.exp(-self.log_variances).to(losses.dtype) / self.num_tasks

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        return super().objective(losses, gradient_norms) + self.log_variances.mean().to(losses.dtype)
