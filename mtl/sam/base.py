"""The two kinds of sharpness-aware step, and the ascent step they share.

- ``WeightPerturbation`` (SAM, ASAM, GSAM) wraps the whole gradient computation of a step: the
  update written into ``.grad`` at the weights ``w`` (a loss weighting's weighted-loss gradient,
  or an aggregator's direction) is the ascent direction; the weights move to ``w + e``, the update
  is recomputed there, and the weights are restored, leaving the sharpness-aware gradient in
  ``.grad`` for the base optimizer.
- ``TaskPerturbation`` (F-MTL) perturbs once per task, along that task's own gradient, and
  combines the per-task results with the run's aggregation.

Both are pure: parameters, tensors and closures in, no Lightning, no Hydra. What a closure does
(forward, backward, logging, keeping BatchNorm statistics) is the caller's business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Closure = Callable[[], Tensor]
"""Computes the task losses ``(K,)`` at the current weights and, for a ``WeightPerturbation``,
writes the step's update into the empty ``.grad`` of the parameters."""

Aggregate = Callable[[Tensor, Tensor], Tensor]
"""Task gradients ``(K, P)`` and losses ``(K,)`` in, one direction ``(P,)`` out: the run's method."""

Share = Callable[[Sequence[Tensor]], list[Tensor]]
"""Gradients in, the same gradients averaged over the processes of a distributed run out (the
gradients themselves with one process): ``mtl.engine.distributed.GradientSync.average``."""

VANISHING = 1e-12
"""Added to a gradient norm before dividing by it, so a zero gradient gives a zero perturbation."""


class WeightPerturbation(ABC):
    """A step computed at perturbed weights ``w + e``, with ``e`` found from the update at ``w``."""

    @abstractmethod
    def step(self, clean: Closure, perturbed: Closure, parameters: Sequence[Tensor], learning_rate: float) -> Tensor:
        """Call ``clean()`` at ``w``, perturb ``parameters``, clear their ``.grad``, call
        ``perturbed()`` at ``w + e``, restore ``w``; leave the final gradient in ``.grad`` and
        return the losses of ``clean()``. ``learning_rate`` is the optimizer's current one."""


class TaskPerturbation(ABC):
    """A step that perturbs the shared parameters and one task's head at a time."""

    @abstractmethod
    def step(
        self,
        losses: Tensor,
        perturbed_losses: Closure,
        shared: Sequence[Tensor],
        heads: Sequence[Sequence[Tensor]],
        aggregate: Aggregate,
        share: Share = list,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """The shared update ``(P,)`` (flattened in the order of ``shared``) and each head's
        gradients, from the task ``losses (K,)`` at ``w`` (with their graph) and
        ``perturbed_losses()``, the losses recomputed at the current weights; ``heads[k]`` are
        task ``k``'s own parameters. Every task gradient computed here passes through ``share``
        before it is used. The weights are left as they were; ``.grad`` is not touched."""


Sharpness = WeightPerturbation | TaskPerturbation


def ascent(gradients: Sequence[Tensor], rho: float, scales: Sequence[Tensor | None]) -> list[Tensor]:
    """The perturbation ``e = rho T² g / |T g|`` of SAM (``T = 1``) and ASAM (``T`` diagonal).

    ``scales[i]`` is the diagonal of ``T`` for ``gradients[i]`` (``None`` for ``T = 1``); the norm is
    taken over all the tensors together, so ``|T⁻¹ e| = rho``.
    """
    if not gradients:
        return []
    scaled = [gradient if scale is None else scale * gradient for gradient, scale in zip(gradients, scales)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(tensor) for tensor in scaled]))
    factor = rho / (norm + VANISHING)
    return [factor * (tensor if scale is None else scale * tensor) for tensor, scale in zip(scaled, scales)]


def gradients_of(parameters: Sequence[Tensor]) -> list[Tensor]:
    """The ``.grad`` of each parameter, zeros where it has none."""
    return [torch.zeros_like(parameter) if parameter.grad is None else parameter.grad for parameter in parameters]


def copy_into(parameters: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    """Overwrite the parameters in place (outside autograd) with ``values``."""
    with torch.no_grad():
        for parameter, value in zip(parameters, values):
            parameter.copy_(value)
