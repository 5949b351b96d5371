"""UPGrad and DualProj: projections onto the dual cone of the task gradients.

Jacobian Descent for Multi-Objective Optimization. Pierre Quinton and Valérian Rey, 2024,
arXiv:2406.16232.

The dual cone of the rows ``g_1..g_K`` of the Jacobian ``J`` is ``{x : <x, g_k> >= 0 for all k}``:
a step along ``-x`` for ``x`` in it increases no task loss to first order. The projection of a
vector ``Jᵀu`` onto it is ``Jᵀw`` with

    w = argmin_{v >= u} vᵀ (J Jᵀ) v          (Proposition 1 of the paper; a QP on the Gramian)

- UPGrad: ``d = (1/K) sum_k proj(g_k)`` (each row projected, ``u = e_k``, then averaged).
- DualProj: ``d = proj((1/K) sum_k g_k)`` (the mean projected, ``u = 1/K``).

Both return the mean when no two rows conflict (every row is then in the dual cone), ``g`` for ``K``
identical rows ``g``, and a zero row contributes nothing. The QP is solved exactly, in the variables
``|g_k| v_k`` so that its matrix is the matrix of cosines between the rows, with eigenvalues
floored at ``1e-10`` of the largest (``mtl.methods.solvers.CosineQuadraticForm``): with that matrix
factored as ``RᵀR``, a QP under lower bounds is a non-negative least-squares problem, which scipy's
``nnls`` solves by the active-set method of Lawson and Hanson. ``<d, g_k> >= 0`` holds up to the
relative ridge, also for norms 1e6 apart, duplicated rows and ``K > P``. There are no
hyperparameters.

Cost per step: ``K`` backward passes for the Jacobian, the ``K x K`` Gramian, then ``K`` non-negative
least-squares problems of ``K`` variables for UPGrad and one for DualProj.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.methods.base import GramianWeighting, register
from mtl.methods.solvers import CosineQuadraticForm


def dual_cone_projections(form: CosineQuadraticForm, preferences: Tensor) -> Tensor:
    """Weights ``W (R, K)`` with ``Jᵀ W[r]`` the projection of ``Jᵀ preferences[r]`` onto the dual cone
    of the rows of ``J``, whose Gramian's quadratic form is ``form``."""
    return torch.maximum(form.minimize_above(preferences), preferences)


@register("upgrad")
class UPGrad(GramianWeighting):
    """The mean of the projections of every task gradient onto the dual cone of all of them."""

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return dual_cone_projections(CosineQuadraticForm(gramian), torch.eye(len(gramian), dtype=gramian.dtype)).mean(dim=0)


@register("dualproj")
class DualProj(GramianWeighting):
    """The projection of the mean task gradient onto the dual cone of the task gradients."""

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        mean = torch.full((1, len(gramian)), 1.0 / len(gramian), dtype=gramian.dtype)
        return dual_cone_projections(CosineQuadraticForm(gramian), mean)[0]
