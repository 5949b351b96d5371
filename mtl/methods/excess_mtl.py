"""ExcessMTL: task weights that grow with each task's estimated excess risk.

"Robust Multi-Task Learning with Excess Risks", Yifei He, Shiji Zhou, Guojun Zhang, Hyokun Yun,
Yi Xu, Belinda Zeng, Trishul Chilimbi, Han Zhao, 2024 (ICML 2024), arXiv:2402.02009.

Weighting tasks by their losses (as group DRO does) favours the tasks with the most label noise;
ExcessMTL weights by the *excess* risk ``L_k - L_k*`` instead, the distance to the task's own
optimum. A second-order expansion gives ``L_k - L_k* ~ (1/2) g_kᵀ H_k⁻¹ g_k``, and the Hessian is
approximated AdaGrad-style by the diagonal ``sqrt`` of the accumulated squared gradients. At step
``t``, with ``g_k`` row ``k`` of the Jacobian::

    S_k  <- S_k + g_k ** 2                                 (elementwise, S_k starts at 0)
    e_k   = sum_j g_kj**2 / sqrt(S_kj + 1e-7)              excess-risk estimate (the 1/2 cancels below)
    r_k   = e_k / e_k^(0)                                  e_k^(0): the task's first nonzero estimate
    w_k  <- w_k exp(eta r_k) / sum_l w_l exp(eta r_l)     exponentiated gradient, w starts at 1/K
    d     = sum_k w_k g_k

Default (the official code and LibMTL): the robust step size ``eta = 0.01``.

Scale: the weights lie on the simplex (``mtl``'s mean scale); the official code rescales them to
sum to ``K``. At the first step every ratio is 1, so the update leaves the weights uniform, which
is the official code's "record the reference, do not update". A task whose first gradient is zero
gets its reference when its estimate is first positive (the official code divides by zero).

Cases: a zero row has a zero estimate, ratio 0, and its weight decays relative to the others;
K = 1 gives ``w = 1``. float16/bfloat16 Jacobians accumulate in float32; the weights are float64.

Cost: the Jacobian (K backward passes), ``O(K P)`` memory for the accumulated squares and
``O(K P)`` time per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.methods.base import register
from mtl.methods.task_state import TaskStateAggregator

ADAGRAD_EPSILON = 1e-7
"""Added to the accumulated squared gradients under the square root, as in the official code."""


def excess_risk_estimates(jacobian: Tensor, squared_gradients: Tensor) -> Tensor:
    """``e_k = g_kᵀ diag(sqrt(S_k + eps))⁻¹ g_k`` for every row ``g_k`` (float64, ``(K,)``)."""
    return (jacobian.square() / (squared_gradients + ADAGRAD_EPSILON).sqrt()).sum(dim=1).double()


@register("excess_mtl")
class ExcessMTL(TaskStateAggregator):
    """ExcessMTL: ``d = w @ G``, ``w`` updated by exponentiated gradient on normalized excess risks."""

    task_states = ("squared_gradients",)

    def __init__(self, num_tasks: int, robust_step_size: float = 0.01, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        if robust_step_size <= 0.0:
            raise ValueError(f"method.robust_step_size must be positive, got {robust_step_size}")
        self.robust_step_size = robust_step_size
        self.register_buffer("reference_risks", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("task_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        matrix = self.in_state_dtype(jacobian)
        self.squared_gradients += matrix.square()
        risks = excess_risk_estimates(matrix, self.squared_gradients)
        self.reference_risks = torch.where(self.reference_risks > 0, self.reference_risks, risks)
        ratios = torch.where(self.reference_risks > 0, risks / self.reference_risks, torch.zeros_like(risks))
        self.task_weights = torch.softmax(self.task_weights.log() + self.robust_step_size * ratios, dim=0)
        self.last_weights = self.task_weights
        return (self.task_weights.to(matrix.dtype) @ matrix).to(jacobian.dtype)
