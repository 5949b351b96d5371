"""DB-MTL: loss-scale balancing by the log transform, gradient-magnitude balancing by the maximum norm.

"Dual-Balancing for Multi-Task Learning", Baijiong Lin, Weisen Jiang, Feiyang Ye, Yu Zhang,
Pengguang Chen, Ying-Cong Chen, Shu Liu, James T. Kwok, 2023, arXiv:2308.12029.

Loss-scale balancing trains on ``log L_k`` instead of ``L_k``: a task's loss scale no longer
matters, since ``grad log L_k = grad L_k / L_k``. Gradient-magnitude balancing then rescales
every task's (smoothed) log-loss gradient to the largest norm among them. At step ``t``::

    g_k      = G_k / (L_k + eps)                          gradient of log(L_k + eps), eps = 1e-8
    beta_t   = beta / t**sigma
    m_k      = beta_t * m_k + (1 - beta_t) * g_k          m_k starts at 0 (the official code)
    alpha_t  = max_k ||m_k||
    d        = (1/K) * sum_k alpha_t * m_k / ||m_k||

Defaults (the official code, LibMTL's ``DB_beta``/``DB_beta_sigma``): ``beta = 0.9``,
``sigma = 0`` (a constant ``beta``); the paper tunes both per benchmark.

Scale: the paper sums over tasks, ``mtl`` takes the mean (a factor ``1/K``, the learning rate's
business), so the loss part ``db_mtl_loss`` minimizes ``mean_k log L_k`` and ``db_mtl`` averages the
balanced gradients. The full method is still not mean-scale in ``base.py``'s sense: its direction
is in log-loss units (``G_k / L_k``) and the zero-started average makes the first steps short
(``(1 - beta**t) g`` for a constant ``g`` with ``sigma = 0``); ``mean_scale = False`` says so.

Cases: a zero row keeps a zero average and contributes nothing; if every average is zero the
direction is zero. Losses must be positive (the log of a negative loss is undefined); a zero loss
gives the finite but large scale ``1/eps``. float16/bfloat16 Jacobians are averaged in float32.

The heads: the engine gives each head the gradient of its own ``L_k``; the official code
backpropagates ``log L_k`` into the heads as well (the head gradient then carries ``1/L_k``).

Cost: ``db_mtl_loss`` is one backward pass. ``db_mtl`` needs the Jacobian (K backward passes) and
``O(K P)`` time and memory for the averages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import LossWeighting, register
from mtl.methods.task_state import TaskStateAggregator, decayed

LOG_EPSILON = 1e-8
"""Added to each loss inside the log, as the official code does, so a zero loss stays finite."""


def log_loss_scale(losses: Tensor) -> Tensor:
    """``d log(L_k + eps) / d L_k = 1 / (L_k + eps)``: what turns task ``k``'s gradient into its log-loss gradient."""
    return 1.0 / (losses + LOG_EPSILON)


def balance_to_max_norm(rows: Tensor) -> Tensor:
    """Each row rescaled to the largest row norm (zero rows stay zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    unit_rows = rows / norms.clamp_min(torch.finfo(rows.dtype).tiny)
    return unit_rows * norms.max()


@register("db_mtl_loss")
class LogLossBalancing(LossWeighting):
    """DB-MTL's loss-scale balancing alone: minimize ``mean_k log(L_k + eps)``.

    Its gradient is ``sum_k w_k grad L_k`` with ``w_k = 1 / (K (L_k + eps))``, the weights returned.
    This is the scale-invariant loss ``si`` (``scale_invariant.py``) with ``eps`` inside the log; the two
    weights differ by the factor ``L_k / (L_k + eps)``.
    """

    def forward(self, losses: Tensor) -> Tensor:
        return log_loss_scale(losses) / self.num_tasks

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        return torch.log(losses + LOG_EPSILON).mean()


@register("db_mtl")
class DualBalancing(TaskStateAggregator):
    """DB-MTL: the mean of the log-loss gradient averages, each rescaled to the largest norm."""

    requires = frozenset({"jacobian", "losses"})
    mean_scale = False
    task_states = ("gradient_average",)

    def __init__(self, num_tasks: int, beta: float = 0.9, sigma: float = 0.0, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"method.beta must be in [0, 1), got {beta}")
        if sigma < 0.0:
            raise ValueError(f"method.sigma must be non-negative, got {sigma}")
        self.beta = beta
        self.sigma = sigma
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        matrix = self.in_state_dtype(jacobian)
        log_gradients = matrix * log_loss_scale(losses.detach().to(matrix))[:, None]
        self.steps += 1
        beta = decayed(self.beta, self.sigma, self.steps).to(matrix.dtype)
        self.gradient_average.lerp_(log_gradients, 1.0 - beta)
        return balance_to_max_norm(self.gradient_average).mean(dim=0).to(jacobian.dtype)
