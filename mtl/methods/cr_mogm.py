"""CR-MOGM: the weights of any Gramian weighting averaged exponentially over the steps.

Zhou, Zhang, Jiang, Zhong, Gu, Zhu, NeurIPS 2022, "On the Convergence of Stochastic Multi-Objective
Gradient Manipulation and Beyond".

A gradient manipulation (MGDA, PCGrad, CAGrad, ...) computes its weights ``λ̂_t`` from one
mini-batch's gradients alone; the paper's two-objective example shows such weights keeping the
iterates away from the Pareto set, and its fix is to average the weights over the steps::

    λ_t = β λ_{t-1} + (1 - β) λ̂_t,      λ_0 = λ̂_1,      d_t = λ_t @ G_t

with ``λ̂_t`` the weights the wrapped (``inner``) weighting would use this step, its reuse
(``method.inner.update_every``) and its norm clip (Nash-MTL, FairGrad) included. ``β = 0``
is the inner weighting itself, ``β = 1`` keeps the first step's weights forever. The paper's analysis
lets the coefficient change with the step; here it is one number, default ``0.9`` (TorchJD's
``CRMOGMWeighting``). The inner weighting is any Gramian weighting, with its own options
(``method@method.inner=pcgrad``; the normalization is CR-MOGM's own ``method.normalization``);
the inner one is called every step, so a stateful or random
inner weighting advances as it would alone. K identical rows give that row whenever the inner
weighting's weights sum to one (``mean_scale`` is the inner's).

State: ``λ_{t-1}`` and the step count, as buffers. Cost: the inner weighting's, plus O(K).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import METHODS, GramianWeighting, register


@register("cr_mogm")
class CRMOGM(GramianWeighting):
    """An exponential moving average, with coefficient ``beta``, of the weights of the ``inner`` Gramian weighting."""

    stateful = True

    def __init__(self, num_tasks: int, inner: Callable[..., GramianWeighting], beta: float = 0.9, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"method.beta={beta} must be in [0, 1]: the weight of the previous weights in the average")
        self.inner = inner(num_tasks=num_tasks)
        if not isinstance(self.inner, GramianWeighting):
            gramian_weightings = sorted(name for name, cls in METHODS.items() if issubclass(cls, GramianWeighting))
            raise TypeError(
                f"CR-MOGM averages the weights of a Gramian weighting; method.inner is a {type(self.inner).__name__}. "
                f"Gramian weightings: {gramian_weightings}"
            )
        if self.inner.normalization != "none":
            raise ValueError(
                f"method.inner.normalization={self.inner.normalization!r}: CR-MOGM hands the inner weighting the Gramian it "
                f"has normalized; set method.normalization={self.inner.normalization!r} instead"
            )
        self.beta = beta
        self.stochastic, self.mean_scale = self.inner.stochastic, self.inner.mean_scale
        self.register_buffer("previous", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        current = self.inner.step_weights(gramian, losses)
        averaged = current if self.steps == 0 else self.beta * self.previous.cpu() + (1.0 - self.beta) * current
        self.previous.copy_(averaged)
        self.steps += 1
        return averaged
