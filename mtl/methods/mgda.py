"""MGDA: the min-norm point of the convex hull of the task gradients.

Multi-Task Learning as Multi-Objective Optimization. Ozan Sener and Vladlen Koltun, NeurIPS 2018,
arXiv:1810.04650.

Update rule: with task gradients ``g_1..g_K`` (rows of the Jacobian) and normalizers ``c_k``,

    w* = argmin_{w >= 0, sum(w) = 1} | sum_k w_k g_k / c_k |^2,      d = sum_k w*_k g_k / c_k

so ``d`` is the min-norm element of the hull of the (normalized) gradients: ``<d, g_k/c_k> >= |d|^2``
for every task, hence ``-d`` is a common descent direction (or ``d = 0`` at a Pareto-stationary
point). For two tasks the closed form is ``w_1 = clip(<g_2 - g_1, g_2> / |g_1 - g_2|^2, 0, 1)``.

Normalizers (the official code's ``normalization_type``, ``method.normalization``, which every
aggregator takes: ``mtl.methods.base.row_normalizers``): ``none`` (``c_k = 1``, the paper's
Algorithm 2 and mtl's default; it keeps the mean scale: ``K`` identical rows give that row), ``l2``
(``c_k = |g_k|``), ``loss`` (``c_k = L_k``), ``loss+`` (``c_k = L_k |g_k|``, the official repository's
sample configs). With a normalizer the direction is the min-norm point of the normalized gradients
(as LibMTL); the official code instead applies ``w*`` to the raw losses.

The paper solves the QP with Frank-Wolfe; here it is solved exactly with quadprog's dual active-set
method, on the matrix of cosines between the rows made positive definite by a relative ridge of
``1e-10`` (``mtl.methods.solvers.CosineQuadraticForm``): the objective is exact up to that ridge.
Applied to the Jacobian of the shared parameters (the engine's), this is the paper's plain MGDA;
its MGDA-UB variant is the same rule on the Jacobian of the shared representation.

Cost per step: ``K`` backward passes for the Jacobian, the ``K x K`` Gramian (``O(K^2 P)``), and a
``K``-variable QP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register
from mtl.methods.solvers import minimize_quadratic_form


def min_norm_weights(gramian: Tensor) -> Tensor:
    """Simplex weights of the min-norm point of the hull of the rows whose Gramian is ``gramian``."""
    size = len(gramian)
    constraints = torch.cat([torch.ones(size, 1, dtype=gramian.dtype), torch.eye(size, dtype=gramian.dtype)], dim=1)
    bounds = torch.cat([torch.ones(1, dtype=gramian.dtype), torch.zeros(size, dtype=gramian.dtype)])
    return minimize_quadratic_form(gramian, constraints, bounds, equalities=1).clamp(min=0)


@register("mgda")
class MGDA(GramianWeighting):
    """The min-norm point of the hull of the task gradients, each divided by its ``normalization``.

    ``mean_scale`` holds for the default ``normalization="none"`` only.
    """

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return min_norm_weights(gramian)
