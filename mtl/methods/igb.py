"""Improvable gap balancing, IGBv1.

Dai, Fei, Lu, "Improvable Gap Balancing for Multi-Task Learning", UAI 2023, arXiv:2307.15429.

Each task's improvable gap is its current loss relative to its loss early in training (with a
target loss of 0); IGBv1 weights the log losses by a softmax of these gaps, so the task with the
most left to improve weighs most. Before the reference ``n`` is measured the objective is the
scale-invariant one (``si``)::

    periods 0 .. W-1:   objective = (1/K) sum_k log L_k
    period  W:          the same, and n = the mean of L over the period
    afterwards:         w = K softmax(sg(L) / n),   objective = (1/K) sum_k w_k log L_k
                        weights on the losses: w_k / (K L_k) = softmax(L / n)_k / L_k

The official code (YanqiDai/IGB4MTL, ``ImprovableGapBalancing_v1`` and the trainers) sets ``n`` to
the mean training losses of epoch ``base_epoch = 1`` (counted from 0), so ``W = 1`` here; its
periods are epochs, here ``period_steps`` steps (``mtl.methods.reference_losses``; default 25, as
``dwa`` and ``stch``). Scale: the official objective sums over the tasks; ``mtl`` takes the mean, so
``K`` equal losses at ``n`` give the ``si`` step. There is no temperature. Losses below
``torch.finfo(dtype).tiny`` are clamped as in ``si``. IGBv2 (the weights chosen by a SAC agent) is
not built. Cost: one backward pass, as in single-task training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.methods.base import LossWeighting, register
from mtl.methods.reference_losses import ReferenceLosses
from mtl.methods.scale_invariant import clamped_log, mean_log_weights


@register("igb")
class ImprovableGapBalancing(LossWeighting):
    """Mean log loss while warming up, then the log losses weighted by ``K softmax(L / n)``, ``n`` measured in the last warm-up period."""

    stateful = True

    def __init__(self, num_tasks: int, warmup_periods: int = 1, period_steps: int = 25) -> None:
        super().__init__(num_tasks)
        self.reference = ReferenceLosses(num_tasks, warmup_periods, period_steps, "IGB")

    def forward(self, losses: Tensor) -> Tensor:
        return self._gap_weights(losses) * mean_log_weights(losses)

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        if not self.reference.measured:
            self.reference.record(losses)
            return clamped_log(losses).mean()
        return (self._gap_weights(losses) * clamped_log(losses)).mean()

    def _gap_weights(self, losses: Tensor) -> Tensor:
        """``K softmax(sg(L) / n)`` once ``n`` is measured, else ones."""
        if not self.reference.measured:
            return torch.ones_like(losses)
        gaps = losses.detach().double() / self.reference.mean()
        return (self.num_tasks * torch.softmax(gaps, dim=0)).to(losses.dtype)
