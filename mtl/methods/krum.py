"""Krum and Multi-Krum: the most central task gradients, robust to ``f`` arbitrary ones.

Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent".

Each row ``g_i`` of the Jacobian is scored by its squared distances to the ``K - f - 2`` rows
closest to it (the paper's ``i → j``)::

    s(i) = sum_{j : i → j} |g_i - g_j|²,      |g_i - g_j|² = G_ii + G_jj - 2 G_ij  (G = J Jᵀ)

Krum's direction is the row of the lowest score; Multi-Krum's (``selected = m > 1``) the mean of the
``m`` rows of the lowest scores. So a row far from the others (a task whose gradient is an outlier,
or a corrupted one) is never followed, and with ``f`` such rows among ``K > 2f + 2`` the paper bounds
the direction's distance to the honest rows' mean (its Proposition 1). Ties go to the lower task
index; ``K`` identical rows give that row.

Defaults: ``byzantine = 0``, ``selected = 1`` (Krum proper). The scores need ``K - f - 2 >= 1``
neighbours, so Krum needs at least ``f + 3`` tasks and refuses fewer at construction. TorchJD's
``Krum`` sums the distances themselves; this follows the paper and sums their squares, which can
choose another row. Cost: ``K`` task gradients, the ``K x K`` Gramian, then a sort of ``K x K``
distances; no solver.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register


@register("krum")
class Krum(GramianWeighting):
    """The task gradient (or the mean of the ``selected`` gradients) closest to its ``K - byzantine - 2`` nearest others."""

    def __init__(self, num_tasks: int, byzantine: int = 0, selected: int = 1, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if byzantine < 0:
            raise ValueError(f"method.byzantine must be a non-negative number of task gradients, got {byzantine}")
        if num_tasks < byzantine + 3:
            raise ValueError(
                f"Krum scores each task gradient by its num_tasks - byzantine - 2 nearest others, so with "
                f"method.byzantine={byzantine} it needs at least {byzantine + 3} tasks; this run has {num_tasks}"
            )
        if not 1 <= selected <= num_tasks:
            raise ValueError(f"method.selected={selected} must be in [1, {num_tasks}], the number of task gradients")
        self.neighbours, self.selected = num_tasks - byzantine - 2, selected

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return krum_weights(krum_scores(gramian, self.neighbours), self.selected)


def krum_scores(gramian: Tensor, neighbours: int) -> Tensor:
    """``s(i)``: each row's summed squared distances to its ``neighbours`` nearest other rows."""
    norms = gramian.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gramian).clamp(min=0)
    distances.fill_diagonal_(torch.inf)
    return distances.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def krum_weights(scores: Tensor, selected: int) -> Tensor:
    """``1/m`` on the ``m = selected`` lowest scores (the lower index first among equal ones), 0 elsewhere."""
    chosen = scores.argsort(stable=True)[:selected]
    return torch.zeros_like(scores).index_fill_(0, chosen, 1.0 / selected)
