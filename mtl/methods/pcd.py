"""Priority-Constrained Descent (PCD): follow a primary task, guarantee the others some progress.

"Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical Multi-Objective
Optimization", TMLR 2026, arXiv:2606.29521 (reference code: DaraVaram/priority-constrained-descent;
TorchJD 0.18's ``PCD``).

Task ``p`` (``method.primary``, a task name; the first task by default) is the primary objective and
the others are secondary. Each gradient is normalized by an Adam-like moving average of its
squared norm (the paper's Def. 4.5), and the direction stays as close to the primary one as
allowed while every secondary task gets at least a fraction ``τ`` of the first-order progress a
step along its own normalized gradient would give::

    v_k ← β v_k + (1 - β) |g_k|²,    s_k = 1 / sqrt(v_k / (1 - β^t) + ε),    g̃_k = s_k g_k
    d̃ = argmin_d ½ |d - g̃_p|²   subject to   g̃_jᵀ d >= τ |g̃_j|²  for every j ≠ p
    d = |g_p| d̃ / |d̃|

``d̃ = g̃_p + Σ_j λ_j g̃_j`` is a combination of the rows, so PCD is a Gramian weighting: with
``M = S G Gᵀ S`` and ``w = e_p + v``, the problem is ``min_v vᵀ M v`` subject to
``(M v)_j >= τ M_jj - M_jp``, solved by quadprog (``CosineQuadraticForm``; the reference code
enumerates the active sets instead, exponential in ``K``). When the constraints cannot hold together
(secondary gradients whose normalized hull contains 0; ``K >= 3``), they are dropped and ``d = g_p``,
as the reference code. A zero primary gradient, or a ``d̃`` that is zero up to rounding, gives
``d = 0``. ``K`` identical rows give that row. Not symmetric in the tasks
(``permutation_equivariant = False``).

Defaults from the reference code: ``τ = 0.02``, ``β = 0.999``, ``ε = 1e-8``. State: the moving
averages and the step count, as buffers (updated on every solve). Cost: ``K`` task gradients, the
``K x K`` Gramian, one ``K``-variable QP with ``K - 1`` constraints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register
from mtl.methods.solvers import CosineQuadraticForm

ROUNDING = 1e-12
"""``d̃`` counts as zero when ``|d̃|²`` is below this fraction of ``(Σ_k |w_k| |g̃_k|)²``."""


def priority_weights(normalized: Tensor, primary: int, tau: float) -> Tensor:
    """``w`` with ``d̃ = Σ_k w_k g̃_k`` for the Gramian ``normalized`` of the normalized gradients:
    the closest point to ``g̃_primary`` meeting every secondary constraint, or ``e_primary`` when
    they cannot hold together."""
    start = torch.zeros(len(normalized), dtype=normalized.dtype).index_fill_(0, torch.tensor([primary]), 1.0)
    secondary = [task for task in range(len(normalized)) if task != primary]
    if not secondary:
        return start
    bounds = tau * normalized.diagonal()[secondary] - normalized[secondary, primary]
    try:
        return start + CosineQuadraticForm(normalized).minimize(normalized[:, secondary], bounds)
    except ValueError:  # quadprog: "constraints are inconsistent, no solution"
        return start


@register("pcd")
class PCD(GramianWeighting):
    """The closest direction to the primary task's normalized gradient that gives each other task a ``tau`` share of progress."""

    stateful = True
    permutation_equivariant = False

    def __init__(
        self, num_tasks: int, primary: int | None = None, tau: float = 0.02, beta: float = 0.999, eps: float = 1e-8, **options: Any
    ) -> None:
        super().__init__(num_tasks, **options)
        self.primary = 0 if primary is None else primary
        if not 0 <= self.primary < num_tasks:
            raise ValueError(f"method.primary must be a task index in [0, {num_tasks}), got {primary}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"method.tau={tau} must be in [0, 1]: the secondary tasks' share of their own progress")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"method.beta={beta} must be in [0, 1): the decay of the squared norms' moving average")
        if eps < 0:
            raise ValueError(f"method.eps must be non-negative, got {eps}")
        self.tau, self.beta, self.eps = tau, beta, eps
        self.register_buffer("squared_norm_average", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        scales = self._normalizing_scales(gramian.diagonal())
        normalized = gramian * torch.outer(scales, scales)
        primary_norm = gramian[self.primary, self.primary].sqrt()
        if not primary_norm > 0:
            return torch.zeros_like(scales)
        weights = priority_weights(normalized, self.primary, self.tau)
        squared_norm = weights @ normalized @ weights
        magnitude = (weights.abs() @ normalized.diagonal().sqrt()) ** 2
        if not squared_norm > ROUNDING * magnitude:
            return torch.zeros_like(scales)
        return weights * scales * primary_norm / squared_norm.sqrt()

    def _normalizing_scales(self, squared_norms: Tensor) -> Tensor:
        """``s_k``, after adding this step's squared norms to the bias-corrected moving average."""
        self.steps += 1
        average = self.beta * self.squared_norm_average.cpu() + (1.0 - self.beta) * squared_norms
        self.squared_norm_average.copy_(average)
        corrected = average / (1.0 - self.beta ** int(self.steps))
        return 1.0 / (corrected + self.eps).sqrt()
