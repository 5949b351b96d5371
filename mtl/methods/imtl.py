"""IMTL: impartial multi-task learning, for gradients (IMTL-G) and for loss scales (IMTL-L).

Towards Impartial Multi-task Learning. Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen,
Wenming Yang, Qingmin Liao and Wayne Zhang, ICLR 2021 (openreview.net/forum?id=IMPnRXEWpvr).

IMTL-G. With task gradients ``g_k`` and unit gradients ``u_k = g_k / |g_k|``, find weights ``α`` with
``sum_k α_k = 1`` such that ``d = sum_k α_k g_k`` has the same projection on every ``u_k``:
``<d, u_1> = ... = <d, u_K>``. The paper writes the solution as
``α_{2:K} = g_1 Uᵀ (D Uᵀ)^{-1}``, ``α_1 = 1 - sum α_{2:K}`` with rows ``D_k = g_1 - g_k`` and
``U_k = u_1 - u_k``; equivalently, with the cosine matrix ``C = N^{-1} G Gᵀ N^{-1}``,
``N = diag(|g_k|)``,

    β = N^{-1} C^{-1} 1,     α = β / sum(β)

(``Gram α = t N 1`` with ``t = 1 / sum(β)``), the form used here because it is symmetric in the
tasks and scale-free. Robustness, where the paper's inverse does not exist:
- ``C`` is pseudo-inverted, eigenvalues below ``1e-5`` of the largest counted as zero (float32
  Gramian rounding): duplicated rows share their weight, and with ``K > P`` the projections are
  equal in the least-squares sense;
- a zero row gets weight 0 and the others are solved alone (all zero: uniform weights, ``d = 0``);
- if the unit gradients sum to zero (opposite gradients), only ``d = 0`` has equal projections:
  ``α ∝ 1/|g_k|`` (``C^{-1} 1`` replaced by ``1``), which gives it;
- ``sum(β)`` can vanish or turn negative for three or more tasks (a tiny gradient outside the cone
  of the others), where the paper's ``α`` blows up or makes ``d`` point against every task; the
  denominator is floored at ``0.01 sum|β|``, which keeps the projections equal and positive and
  ``sum|α| <= 100``. Elsewhere (always for two tasks) ``α`` is the paper's.
The paper applies IMTL-G to the gradients of the shared representation and reuses the weights for
the shared parameters; here it weights the Jacobian the engine provides (the shared parameters').
Cost per step: ``K`` backward passes, the Gramian, a ``K x K`` eigensolve.

IMTL-L. Each task loss gets a learnable scale ``s_k`` (initialized at 0) and the paper's objective
is ``sum_k e^{s_k} L_k - s_k``, whose gradient in ``s_k`` is ``e^{s_k} L_k - 1`` (so the scaled losses
are driven towards 1); the ``s_k`` are parameters trained by the run's optimizer with the model, as
in the paper. ``mtl`` minimizes the mean over tasks, ``(1/K) sum_k e^{s_k} L_k - s_k`` (weights
``e^{s_k} / K``, EW's step at initialization): the factor ``1/K`` leaves the stationary point
``e^{s_k} L_k = 1`` unchanged. This objective is ``uw``'s (Uncertainty Weighting in the common form
of ``uncertainty.py``) with ``s_k = -log sigma_k^2``: under SGD or Adam, which treat a coordinate and
its negation alike, ``imtl_l`` and ``uw`` train the same model from the same start. They differ
only against Kendall et al.'s per-task forms, which ``uw`` does not use. Cost per step: one
backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.methods.base import GramianWeighting, LossWeighting, register

SINGULAR = 1e-5
"""Eigenvalues of the cosine matrix below this fraction of the largest are treated as zero."""

MIN_WEIGHT_SUM = 1e-2
"""Floor of ``sum(β)`` relative to ``sum|β|``: bounds ``sum|α|`` by ``1 / MIN_WEIGHT_SUM``."""


def impartial_weights(gramian: Tensor) -> Tensor:
    """Weights summing to 1 whose combination has equal projections on the unit rows (zero rows get 0)."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    active = norms > 0
    weights = torch.zeros_like(norms)
    if not active.any():
        return torch.full_like(norms, 1.0 / len(norms))
    norms = norms[active]
    cosines = gramian[active][:, active] / torch.outer(norms, norms)
    solution = torch.linalg.pinv(cosines, rtol=SINGULAR, hermitian=True) @ torch.ones_like(norms)
    if solution.abs().sum() <= SINGULAR:  # the unit gradients sum to 0: only d = 0 has equal projections
        solution = torch.ones_like(norms)
    unscaled = solution / norms
    total = torch.maximum(unscaled.sum(), MIN_WEIGHT_SUM * unscaled.abs().sum())
    weights[active] = unscaled / total
    return weights


@register("imtl_g")
class IMTLG(GramianWeighting):
    """Gradient weights summing to 1 that give the update equal projections on every task's unit gradient."""

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return impartial_weights(gramian)


@register("imtl_l")
class IMTLL(LossWeighting):
    """Learnable loss scales ``e^{s_k}`` with the regularizer ``-s_k``: objective ``mean_k e^{s_k} L_k - s_k``."""

    stateful = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_scales = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses: Tensor) -> Tensor:
        return self.log_scales.exp().to(losses.dtype) / self.num_tasks

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        return self(losses) @ losses - self.log_scales.mean()
