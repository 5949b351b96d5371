"""Smooth Tchebycheff scalarization (STCH).

Lin, Zhang, Lin, Liu, Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
2024, arXiv:2402.19078.

The Tchebycheff scalarization ``max_k (f_k - z_k)`` (``z`` the ideal point) is replaced by its
smooth upper bound ``mu * log sum_k exp((f_k - z_k) / mu)``, which tends to the max as ``mu -> 0``
and is exceeded by at most ``mu log K``. Its gradient is a softmax-weighted sum of the task
gradients, ``sum_k softmax((f - z) / mu)_k grad f_k``.

For multi-task learning the official code (and LibMTL) applies it to log-normalized losses,
``f_k - z_k = log L_k - log n_k``, where ``n_k`` is task ``k``'s mean training loss over the last
warm-up period, after warming up with the scale-invariant objective (mean log loss, ``si``)::

    periods 0 .. W-1:   objective = (1/K) sum_k log L_k
    period  W:          the same, and n = the mean of L over the period
    afterwards:         objective = mu * logsumexp_k((log L_k - log n_k) / mu)
                        weights   w_k = softmax((log L - log n) / mu)_k / L_k

The official code's periods are epochs (``STCH_warmup_epoch = 4``, so the fifth epoch measures
``n``); here a period is ``period_steps`` calls of ``objective``, one per training step
(``mtl.methods.reference_losses``; default 25, as ``dwa``). Defaults ``mu = 1`` and ``warmup_periods = 4`` (LibMTL's).
Scale: LibMTL multiplies both objectives by ``K``; ``mtl`` uses the mean scale (``K`` equal losses
at their ``n`` give weights ``1 / (K L_k)``, the ``si`` weights). Losses below
``torch.finfo(dtype).tiny`` are clamped as in ``si`` (weight 0, finite objective); LibMTL adds 1e-20
inside the log instead. State (the step count and the sum of the measured losses) lives in
the buffers of ``ReferenceLosses``. Cost: one backward pass, as in single-task training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.methods.base import LossWeighting, register
from mtl.methods.reference_losses import ReferenceLosses
from mtl.methods.scale_invariant import clamped_log, mean_log_weights


@register("stch")
class SmoothTchebycheff(LossWeighting):
    """Mean log loss while warming up, then ``mu * logsumexp(log(L / n) / mu)`` with ``n`` measured in the last warm-up period."""

    stateful = True

    def __init__(self, num_tasks: int, mu: float = 1.0, warmup_periods: int = 4, period_steps: int = 25) -> None:
        super().__init__(num_tasks)
        if mu <= 0:
            raise ValueError(f"STCH mu must be positive, got {mu}")
        self.mu = mu
        self.reference = ReferenceLosses(num_tasks, warmup_periods, period_steps, "STCH")

    def forward(self, losses: Tensor) -> Tensor:
        if not self.reference.measured:
            return mean_log_weights(losses)
        softmax = torch.softmax(self._normalized_log_losses(losses) / self.mu, dim=0)
        return self.num_tasks * softmax * mean_log_weights(losses)

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        if self.reference.measured:
            return self.mu * torch.logsumexp(self._normalized_log_losses(losses) / self.mu, dim=0)
        self.reference.record(losses)
        return clamped_log(losses).mean()

    def _normalized_log_losses(self, losses: Tensor) -> Tensor:
        """``log L_k - log n_k``, with ``n`` the mean loss of the measuring period."""
        return clamped_log(losses) - clamped_log(self.reference.mean()).to(losses.dtype)
