"""Scalarizations along a preference direction: COSMOS's cosine penalty and MOEA/D's PBI.

Both trade the losses off along a preference vector ``r`` (``method.preference``; one positive
number per task, divided by their sum; ``null`` is ``1/K`` for every task) and are not linear in
the losses, so their weights are the gradient of the objective with respect to the losses,
``w = ∂objective/∂L`` at the detached losses (``torch.func.grad``): what the one backward pass of
the objective applies to the task gradients.

- **COSMOS** (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
  Learning", ICDM 2021, arXiv:2103.13392, Eq. 5)::

      objective = rᵀL - λ cos(r, L)

  The penalty pulls the loss vector towards the direction of ``r``. The paper also draws ``r``
  from a Dirichlet distribution each batch and conditions the network on it, to learn the whole
  Pareto front in one model; here ``r`` is fixed, as in TorchJD's ``COSMOS`` scalarization.
  Default ``λ = 2``, the official code's (ruchtem/cosmos, ``settings.py``) for Multi-MNIST; it uses
  0.01 on Adult, Compas and Credit, 3 on CelebA.
- **PBI**, penalty-based boundary intersection (Zhang & Li, "MOEA/D: A Multiobjective Evolutionary
  Algorithm Based on Decomposition", IEEE TEVC 2007), for ``f = L - z`` with reference point ``z``
  (``method.reference``, 0 by default: losses are non-negative) and ``u = r / |r|``::

      d1 = fᵀu,   d2 = |f - d1 u|,   objective = |r| (d1 + θ d2)

  ``d1`` is the progress along the preference direction and ``d2`` the distance from it. The
  factor ``|r|`` (a constant) puts PBI on ``mtl``'s mean scale, so the weights are ``r`` on the
  preference direction (``1/K`` for equal losses and the default ``r``); pymoo and TorchJD omit it.
  ``d2`` is ``sqrt(|f - d1 u|² + 1e-12)``, as TorchJD's: on the direction ``f - d1 u`` is rounding
  noise, whose unit vector would make the gradient arbitrary; smoothed, it is close to 0 there, and
  the objective moves by at most ``1e-6 θ |r|``. Default ``θ = 5``, MOEA/D's.

No state. Cost: one backward pass, as in single-task training.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional

from mtl.methods.base import LossWeighting, register

DISTANCE_SMOOTHING = 1e-12
"""Added under PBI's square root of ``|f - d1 u|²`` (TorchJD's constant)."""


def task_vector(values: Sequence[float] | None, num_tasks: int, option: str, default: float) -> Tensor:
    """``values`` (one per task) as a float64 tensor, ``default`` for every task when ``None``."""
    if values is None:
        return torch.full((num_tasks,), default, dtype=torch.float64)
    if len(values) != num_tasks:
        raise ValueError(f"method.{option} has {len(values)} entries but there are {num_tasks} tasks")
    return torch.tensor(list(values), dtype=torch.float64)


class PreferenceScalarization(LossWeighting):
    """A scalarization of the losses along ``preference`` (normalized to sum to one); its weights are its gradient."""

    def __init__(self, num_tasks: int, preference: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        preference_vector = task_vector(preference, num_tasks, "preference", 1.0)
        if not bool((preference_vector > 0).all()):
            raise ValueError(f"method.preference must be positive numbers, one per task; got {list(preference)}")
        self.register_buffer("preference", preference_vector / preference_vector.sum())

    @abstractmethod
    def scalarize(self, losses: Tensor) -> Tensor:
        """The objective for float64 ``losses (K,)``."""

    def forward(self, losses: Tensor) -> Tensor:
        return torch.func.grad(self.scalarize)(losses.detach().double()).to(losses.dtype)

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        return self.scalarize(losses.double()).to(losses.dtype)


@register("cosmos")
class COSMOS(PreferenceScalarization):
    """``rᵀL - penalty · cos(r, L)``: the preference-weighted losses, pulled towards the preference direction."""

    def __init__(self, num_tasks: int, preference: Sequence[float] | None = None, penalty: float = 2.0) -> None:
        super().__init__(num_tasks, preference)
        if penalty < 0:
            raise ValueError(f"method.penalty must be non-negative (0 is linear scalarization), got {penalty}")
        self.penalty = penalty

    def scalarize(self, losses: Tensor) -> Tensor:
        preference = self.preference.to(losses.device)
        return preference @ losses - self.penalty * functional.cosine_similarity(preference, losses, dim=0)


@register("pbi")
class PBI(PreferenceScalarization):
    """``|r| (d1 + θ d2)``: progress along the preference direction plus ``theta`` times the distance from it."""

    def __init__(
        self, num_tasks: int, preference: Sequence[float] | None = None, theta: float = 5.0, reference: Sequence[float] | None = None
    ) -> None:
        super().__init__(num_tasks, preference)
        if theta < 0:
            raise ValueError(f"method.theta must be non-negative, got {theta}")
        self.theta = theta
        self.register_buffer("reference", task_vector(reference, num_tasks, "reference", 0.0))

    def scalarize(self, losses: Tensor) -> Tensor:
        preference, shifted = self.preference.to(losses.device), losses - self.reference.to(losses.device)
        direction = preference / preference.norm()
        progress = shifted @ direction
        perpendicular = shifted - progress * direction
        distance = torch.sqrt(perpendicular @ perpendicular + DISTANCE_SMOOTHING)
        return preference.norm() * (progress + self.theta * distance)
