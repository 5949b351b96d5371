"""MGDA: the min-norm point of the convex hull of the task gradients.

Multi-Task Learning as Multi-Objective Optimization. Ozan Sener and Vladlen Koltun, NeurIPS 2018,
arXiv:1810.04650.

Update rule: with task gradients ``g_1..g_K`` (rows of the Jacobian) and normalizers ``c_k``,

    w* = argmin_{w >= 0, sum(w) = 1} | sum_k w_k g_k / c_k |^2,      d = sum_k w*_k g_k / c_k

so ``d`` is the min-norm element of the hull of the (normalized) gradients: ``<d, g_k/c_k> >= |d|^2``
for every task, hence ``-d`` is a common descent direction (or ``d = 0`` at a Pareto-stationary
point). For two tasks the closed form is ``w_1 = clip(<g_2 - g_1, g_2> / |g_1 - g_2|^2, 0, 1)``.

Normalizers (the official code's ``normalization_type``): ``none`` (``c_k = 1``, the paper's
Algorithm 2 and mtl's default; it keeps the mean scale: ``K`` identical rows give that row), ``l2``
(``c_k = |g_k|``), ``loss`` (``c_k = L_k``), ``loss+`` (``c_k = L_k |g_k|``, the official repository's
sample configs). A normalizer that is not positive (a zero row, a zero loss) is replaced by 1. With a
normalizer the direction is the min-norm point of the normalized gradients (as LibMTL); the official
code instead applies ``w*`` to the raw losses.

The paper solves the QP with Frank-Wolfe; here it is solved exactly with quadprog's dual active-set
method, in the variables ``|g_k| w_k`` so that its matrix is the matrix of cosines between the
rows (gradients whose norms differ by 1e6 weigh alike), scaled to unit largest eigenvalue and with
eigenvalues floored at ``RIDGE = 1e-10`` so the solver always sees a positive definite matrix
(duplicated rows, zero rows, ``K > P``): the objective is exact up to that relative ridge. Applied to the Jacobian of the shared
parameters (the engine's), this is the paper's plain MGDA; its MGDA-UB variant is the same rule on
the Jacobian of the shared representation.

Cost per step: ``K`` backward passes for the Jacobian, the ``K x K`` Gramian (``O(K^2 P)``), and a
``K``-variable QP.
"""

from __future__ import annotations

import numpy as np
import quadprog
import torch
from scipy.optimize import nnls
from torch import Tensor

from mtl.methods.base import GramianWeighting, register

RIDGE = 1e-10
"""Floor on the eigenvalues of the QP matrix (cosines between the rows) scaled to unit largest eigenvalue."""

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def positive_definite(matrix: Tensor) -> np.ndarray:
    """``matrix`` symmetrized and divided by its largest eigenvalue, eigenvalues floored at ``RIDGE`` (identity if zero)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    largest = eigenvalues.max()
    if not largest > 0:
        return np.eye(len(matrix))
    floored = (eigenvalues / largest).clamp(min=RIDGE)
    result = (eigenvectors * floored) @ eigenvectors.T
    return np.ascontiguousarray(((result + result.T) / 2).numpy())


class CosineQuadraticForm:
    """The quadratic form ``wᵀ gramian w`` in the variables ``x_k = |g_k| w_k``, whose matrix is the
    matrix of cosines (rows of any norm weigh alike), made positive definite by
    ``positive_definite``; prepared once for any number of minimizations (UPGrad solves ``K``).
    Its Cholesky factor ``R`` (``matrix = RᵀR``) is computed once: quadprog is given ``R⁻¹``, so no
    solve factors the matrix again, and the minimizations under lower bounds are least-squares
    problems in ``R``."""

    def __init__(self, gramian: Tensor) -> None:
        norms = gramian.diagonal().clamp(min=0).sqrt()
        self.norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        matrix = positive_definite(gramian / torch.outer(self.norms, self.norms))
        self.factor = np.linalg.cholesky(matrix).T
        self.dtype = gramian.dtype

    def minimize(self, constraints: Tensor, bounds: Tensor, equalities: int = 0) -> Tensor:
        """``argmin_w wᵀ gramian w`` subject to ``constraintsᵀ w >= bounds``, the first ``equalities``
        as equalities; ``constraints`` is ``(K, M)``, ``bounds`` ``(M,)``. Solved with quadprog."""
        scaled = np.ascontiguousarray((constraints / self.norms[:, None]).numpy())
        inverse_factor = np.linalg.inv(self.factor)
        solution = quadprog.solve_qp(inverse_factor, np.zeros(len(self.factor)), scaled, np.ascontiguousarray(bounds.numpy()), equalities, factorized=True)[0]
        return torch.from_numpy(solution).to(self.dtype) / self.norms

    def minimize_above(self, lower_bounds: Tensor) -> Tensor:
        """``argmin_w wᵀ gramian w`` subject to ``w >= lower_bounds[r]``, for each row ``r`` of
        ``lower_bounds (R, K)``: ``(R, K)``. With ``b = |g| lower_bounds[r]`` and ``x = b + s``, the
        problem is ``min_{s >= 0} |R s + R b|²``, a non-negative least-squares problem solved
        exactly by scipy's ``nnls`` (the active-set method of Lawson and Hanson, 1974, ch. 23)."""
        shifts = (lower_bounds * self.norms).numpy()
        solutions = [shift + nnls(self.factor, -self.factor @ shift)[0] for shift in shifts]
        return torch.from_numpy(np.stack(solutions)).to(self.dtype) / self.norms


def minimize_quadratic_form(gramian: Tensor, constraints: Tensor, bounds: Tensor, equalities: int = 0) -> Tensor:
    """``argmin_w wᵀ gramian w`` subject to ``constraintsᵀ w >= bounds`` (``CosineQuadraticForm``)."""
    return CosineQuadraticForm(gramian).minimize(constraints, bounds, equalities)


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

    def __init__(self, num_tasks: int, normalization: str = "none") -> None:
        super().__init__(num_tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"method.normalization is '{normalization}'; valid choices: {list(NORMALIZATIONS)}")
        self.normalization = normalization

    def normalizers(self, gramian: Tensor, losses: Tensor) -> Tensor:
        norms = gramian.diagonal().clamp(min=0).sqrt()
        normalizers = {"none": torch.ones_like(norms), "l2": norms, "loss": losses, "loss+": losses * norms}[self.normalization]
        return torch.where(normalizers > 0, normalizers, torch.ones_like(normalizers))

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        normalizers = self.normalizers(gramian, losses)
        return min_norm_weights(gramian / torch.outer(normalizers, normalizers)) / normalizers
