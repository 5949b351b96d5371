"""Solvers shared by the methods: the small quadratic programs over task weights, the clipping of
a weighted direction's norm, and the projection onto the simplex.

``CosineQuadraticForm`` minimizes ``wᵀ G Gᵀ w`` under linear constraints (MGDA's simplex, the
dual cone's projections of UPGrad and DualProj) with quadprog's dual active-set method, in the
variables ``|g_k| w_k`` so that its matrix is the matrix of cosines between the rows (gradients
whose norms differ by 1e6 weigh alike), scaled to unit largest eigenvalue and with eigenvalues
floored at ``RIDGE`` so the solver always sees a positive definite matrix (duplicated rows, zero
rows, ``K > P``): the objective is exact up to that relative ridge. ``clip_weights`` bounds the norm
of ``w @ G`` (Nash-MTL's and FairGrad's ``max_norm``). ``project_onto_simplex`` keeps the task
weights of MoCo and SDMGrad on the probability simplex.
"""

from __future__ import annotations

import numpy as np
import quadprog
import torch
from scipy.optimize import nnls
from torch import Tensor

RIDGE = 1e-10
"""Floor on the eigenvalues of the QP matrix (cosines between the rows) scaled to unit largest eigenvalue."""

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
    """The quadratic form ``wᵀ gramian w`` in the variables ``x_k ∝ |g_k| w_k``, whose matrix is the
    matrix of cosines (rows of any norm weigh alike), made positive definite by
    ``positive_definite``; prepared once for any number of minimizations (UPGrad solves ``K``).
    Its Cholesky factor ``R`` (``matrix = RᵀR``) is computed once: quadprog is given ``R⁻¹``, so no
    solve factors the matrix again, and the minimizations under lower bounds are least-squares
    problems in ``R``."""

    def __init__(self, gramian: Tensor) -> None:
        norms = gramian.diagonal().clamp(min=0).sqrt()
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        matrix = positive_definite(gramian / torch.outer(norms, norms))
        # the variables are x_k = w_k |g_k| / max_j |g_j|, which changes the objective by a constant
        # factor only and keeps the constraints' scale the weights' whatever the gradients' scale
        # (quadprog finds constraints of size 1e-19 "inconsistent")
        self.norms = norms / norms.max()
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


def clip_weights(weights: Tensor, gramian: Tensor, max_norm: float) -> Tensor:
    """``weights`` scaled so that ``|weights @ G| = sqrt(wᵀ G Gᵀ w) ≤ max_norm`` (unchanged when ``max_norm ≤ 0``)."""
    if max_norm <= 0:
        return weights
    norm = (weights @ gramian @ weights).clamp(min=0).sqrt()
    return weights * (max_norm / norm).clamp(max=1.0) if norm > 0 else weights


def project_onto_simplex(vector: Tensor) -> Tensor:
    """The Euclidean projection of ``vector (K,)`` onto ``{w : w >= 0, sum(w) = 1}``, exactly.

    The sort-based algorithm of Held, Wolfe and Crowder (1974), as in Duchi et al. 2008.
    """
    descending = vector.sort(descending=True).values
    excess = descending.cumsum(dim=0) - 1.0
    counts = torch.arange(1, len(vector) + 1, dtype=vector.dtype, device=vector.device)
    support = (descending - excess / counts > 0).sum()
    threshold = excess[support - 1] / support
    return (vector - threshold).clamp_min(0.0)
