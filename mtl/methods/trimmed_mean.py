"""Coordinate-wise trimmed mean of the task gradients.

Yin, Chen, Ramchandran, Bartlett, ICML 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates" (its Option II).

Per coordinate ``p``, the ``t`` largest and the ``t`` smallest of ``G[1, p] .. G[K, p]`` are dropped
and the ``K - 2t`` others averaged::

    d_p = 1/(K - 2t) sum_{k = t+1}^{K-t} G_(k), p       (G_(1), p <= ... <= G_(K), p sorted)

The paper trims a fraction ``β`` of the ``m`` machines, ``t = βm``; with a handful of tasks the
count is the natural setting, so ``trim`` is ``t`` (TorchJD's ``trim_number``). ``trim = 0`` is the
mean of the rows; ``K`` identical rows give that row; the direction does not depend on the task
order. It is elementwise, not a combination of the rows, so ``last_weights`` stays ``None``.

Default ``trim = 1``: the smallest trim that drops an outlying task's value in every coordinate;
it needs ``K >= 2t + 1`` tasks and refuses fewer at construction. Cost: ``K`` task gradients and a
sort of the ``K`` values of each of the ``P`` coordinates, ``O(P K log K)``; no solver.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mtl.methods.base import GradientAggregator, register


@register("trimmed_mean")
class TrimmedMean(GradientAggregator):
    """Per coordinate, the mean of the task gradients' values without the ``trim`` largest and ``trim`` smallest."""

    def __init__(self, num_tasks: int, trim: int = 1, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if trim < 0:
            raise ValueError(f"method.trim must be a non-negative number of values per side, got {trim}")
        if num_tasks < 2 * trim + 1:
            raise ValueError(
                f"trimming method.trim={trim} values of each side needs at least {2 * trim + 1} task gradients; "
                f"this run has {num_tasks}"
            )
        self.trim = trim

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        kept = len(jacobian) - 2 * self.trim
        return jacobian.sort(dim=0).values.narrow(0, self.trim, kept).mean(dim=0)
