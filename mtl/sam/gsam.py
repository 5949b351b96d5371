"""GSAM: Surrogate Gap Guided Sharpness-Aware Minimization.

Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu, 2022, arXiv:2203.08065.

SAM minimizes the perturbed loss ``L_p(w) = L(w + e)``; GSAM also minimizes the surrogate gap
``h(w) = L_p(w) - L(w)`` (a measure of sharpness), without slowing the descent of ``L_p``. With
``g = ∇L(w)`` and ``g_p = ∇L(w + e)`` (SAM's gradient), ``g`` splits into its part along
``g_p`` and the orthogonal part ``g_⊥ = g - (g·g_p / |g_p|²) g_p``; descending along ``-g_⊥``
lowers ``h`` and leaves ``L_p`` unchanged to first order. The update direction is (Algorithm 1)::

    d = g_p - alpha g_⊥

so ``alpha = 0`` is SAM. The radius follows the learning-rate schedule (Section 5.1):

    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)

with ``lr_t`` the optimizer's current learning rate, read at every step, and ``lr_max`` the
configured peak learning rate (``conf/sam/gsam.yaml`` interpolates ``${optimizer.lr}``); the
fraction is clipped to ``[0, 1]``, and ``lr_max = lr_min`` gives ``rho_max``.

Defaults: ``rho_max = 0.05`` (SAM's CIFAR radius), ``rho_min = 0``, ``alpha = 0.2`` (the
authors' PyTorch example; the paper tunes ``alpha`` and ``rho_max`` per model and dataset).
``adaptive`` and ``eta`` perturb as ASAM does (``mtl/sam/sam.py``). Cost: SAM's two forward and two
backward passes, plus two inner products over the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.sam.base import VANISHING
from mtl.sam.sam import SAM


class GSAM(SAM):
    """SAM's gradient minus ``alpha`` times the clean gradient's part orthogonal to it; ``rho`` follows the lr."""

    uses_clean_update = True

    def __init__(
        self,
        max_learning_rate: float,
        rho_max: float = 0.05,
        rho_min: float = 0.0,
        alpha: float = 0.2,
        min_learning_rate: float = 0.0,
        adaptive: bool = False,
        eta: float = 0.01,
    ) -> None:
        super().__init__(rho_max, adaptive, eta)
        if not 0 <= rho_min <= rho_max:
            raise ValueError(f"GSAM needs 0 <= sam.rho_min <= sam.rho_max, got rho_min={rho_min}, rho_max={rho_max}")
        if max_learning_rate < min_learning_rate:
            raise ValueError(f"sam.max_learning_rate ({max_learning_rate}) is below sam.min_learning_rate ({min_learning_rate})")
        self.rho_min = rho_min
        self.alpha = alpha
        self.max_learning_rate = max_learning_rate
        self.min_learning_rate = min_learning_rate

    def radius(self, learning_rate: float) -> float:
        span = self.max_learning_rate - self.min_learning_rate
        if span == 0:
            return self.rho
        fraction = min(max((learning_rate - self.min_learning_rate) / span, 0.0), 1.0)
        return self.rho_min + (self.rho - self.rho_min) * fraction

    def finish(self, parameters: Sequence[Tensor], clean_gradients: Sequence[Tensor]) -> None:
        perturbed = [parameter.grad for parameter in parameters]
        pairs = [(clean, sharp) for clean, sharp in zip(clean_gradients, perturbed) if sharp is not None]
        inner = sum((clean * sharp).sum() for clean, sharp in pairs)
        squared_norm = sum(sharp.square().sum() for _, sharp in pairs)
        along = inner / (squared_norm + VANISHING)
        with torch.no_grad():
            for clean, sharp in pairs:
                sharp.sub_(self.alpha * (clean - along * sharp))
