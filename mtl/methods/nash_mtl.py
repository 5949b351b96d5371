"""Nash-MTL: Multi-Task Learning as a Bargaining Game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, 2022, arXiv:2202.01017.

The update is the Nash bargaining solution among the tasks: ``d = sum_k α_k g_k`` with ``α > 0``
solving ``α_k (G Gᵀ α)_k = 1`` for every ``k`` (each task's utility ``g_kᵀ d`` is ``1/α_k``).

Solver: the paper approaches ``α`` by a concave-convex procedure, a sequence of convex problems
(cvxpy/ECOS in the official code, ``optim_niter = 20`` at most, stopping once the equation holds to
1e-3). The equation is exactly the stationarity condition of the strictly convex problem
``min_{α > 0} ½ αᵀ G Gᵀ α - sum_k log α_k`` (for independent gradients it has one solution), so
this class solves that problem directly: Newton's method in ``u = log α`` with the exact Hessian
(scipy ``trust-exact``, then MINPACK's ``hybrj`` on the gradient, so the equation holds to float64
rounding), warm-started from the last weights as the official code warm-starts its procedure. It
reaches the procedure's limit from any start (the procedure cannot start where some task conflicts
with the sum of the others) at a fraction of its cost (``BENCHMARKS.md``, ``rep`` against EW,
has the timings).
``optim_niter`` has no counterpart.

Conditioning: the equation is invariant under rescaling the gradients (``g_k → g_k/|g_k|``
maps ``α_k → α_k |g_k|``), so it is solved for the unit gradients, whose Gramian is the cosine
matrix; the official code divides the Gramian by its Frobenius norm instead, which leaves
gradients of very different norms badly conditioned.

Scale (``mean_scale = False``): the paper's direction has ``g_kᵀ d = 1/α_k``, not the mean of the
gradients: for K identical rows ``g`` it is ``√K g/|g|``. The official code then clips the norm of
the shared gradient to ``max_norm`` (default 1.0); so does this class (``max_norm ≤ 0`` disables
it). Zero gradients cannot satisfy the equation; they get weight 0. When the equation has no
positive solution (linearly dependent gradients with a non-negative null combination, e.g. K > P)
the log-weights are bounded to ``[-50, 50]``, and the clip keeps the direction finite.

The official code's ``update_weights_every`` is ``method.update_every`` (every Gramian weighting
has it): new weights every that many steps, the last ones reused in between and clipped with each
step's Gramian, as the official code clips each step's shared gradient. Each solve is warm-started
from the last one (the ``last_solution`` buffer). Defaults from the official code:
``update_every = 1``, ``max_norm = 1.0``. Cost: K task gradients, the ``(K, K)`` Gramian, and a few
Newton steps on it per update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize, root
from torch import Tensor

from mtl.methods.base import GramianWeighting, register
from mtl.methods.solvers import clip_weights

LOG_BOUND = 50.0


@register("nash_mtl")
class NashMTL(GramianWeighting):
    """Nash-MTL: the Nash bargaining weights ``α ⊙ (G Gᵀ α) = 1``, the direction clipped to ``max_norm``."""

    mean_scale = False
    stateful = True

    def __init__(self, num_tasks: int, max_norm: float = 1.0, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.max_norm = max_norm
        self.register_buffer("last_solution", torch.zeros(num_tasks, dtype=torch.float64))

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        solution = nash_weights(gramian, self.last_solution.cpu())
        self.last_solution.copy_(solution)
        return solution

    def scaled(self, weights: Tensor, gramian: Tensor) -> Tensor:
        return clip_weights(weights, gramian, self.max_norm)


def nash_weights(gramian: Tensor, start: Tensor) -> Tensor:
    """``α ≥ 0`` with ``α_k (G Gᵀ α)_k = 1`` for every non-zero gradient (0 for zero ones), warm-started at ``start``."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    kept = norms > 0
    weights = torch.zeros_like(norms)
    if not kept.any():
        return weights
    scale = norms[kept]
    cosines = (gramian[kept][:, kept] / scale[:, None] / scale[None, :]).cpu().numpy()
    guess = (start[kept] * scale).cpu().numpy()
    guess = np.where(np.isfinite(guess) & (guess > 0), guess, 1.0)
    weights[kept] = torch.from_numpy(convex_solution(cosines, guess)).to(weights) / scale
    return weights


def convex_solution(gramian: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``α`` with ``α ⊙ (M α) = 1`` for the Gramian ``M``: the minimizer of ``½ αᵀ M α - sum log α``,
    by Newton's method in ``u = log α`` from ``start``, ``u`` bounded to ``±LOG_BOUND``."""

    def value(log_weights: np.ndarray) -> float:
        weights = np.exp(log_weights)
        return 0.5 * weights @ gramian @ weights - log_weights.sum()

    def gradient(log_weights: np.ndarray) -> np.ndarray:
        weights = np.exp(log_weights)
        return weights * (gramian @ weights) - 1

    def hessian(log_weights: np.ndarray) -> np.ndarray:
        weights = np.exp(log_weights)
        return np.diag(weights * (gramian @ weights)) + weights[:, None] * gramian * weights[None, :]

    start = np.log(np.clip(start, np.exp(-LOG_BOUND), np.exp(LOG_BOUND)))
    log_weights = minimize(value, start, jac=gradient, hess=hessian, method="trust-exact", options={"gtol": 1e-10, "maxiter": 200}).x
    # near the minimum the value stops changing in float64 before the gradient is below 1e-10;
    # Newton's iteration on the gradient itself (MINPACK's hybrj) then takes it to rounding
    polished = root(gradient, log_weights, jac=hessian, method="hybr").x
    if np.isfinite(polished).all() and np.abs(gradient(polished)).max() < np.abs(gradient(log_weights)).max():
        log_weights = polished
    return np.exp(np.clip(log_weights, -LOG_BOUND, LOG_BOUND))
