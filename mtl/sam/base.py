"""The two kinds of sharpness-aware step, and the ascent step they share.

- ``WeightPerturbation`` (SAM, ASAM, GSAM) wraps the whole gradient computation of a step: the
  update written into ``.grad`` at the weights ``w`` (a loss weighting's weighted-loss gradient,
  or an aggregator's direction) is the ascent direction; the weights move to ``w + e``, the update
  is recomputed there, and the weights are restored, leaving the sharpness-aware gradient in
  ``.grad`` for the base optimizer.
- ``TaskPerturbation`` (F-MTL) perturbs once per task, along that task's own gradient, and
  combines the per-task results with the run's aggregation. It evaluates the model itself, at
  weights it supplies (``TaskLosses``), so it can evaluate several perturbed models in one call.

Both are pure: parameters, tensors, closures and the model in, no Lightning, no Hydra. What a
closure does (forward, backward, logging, keeping BatchNorm statistics) is the caller's business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

Closure = Callable[[], Tensor]
"""A ``WeightPerturbation``'s pass: computes the task losses ``(K,)`` at the current weights and
writes the step's update into the empty ``.grad`` of the parameters."""

Aggregate = Callable[[Tensor, Tensor], Tensor]
"""Task gradients ``(K, P)`` and losses ``(K,)`` in, one direction ``(P,)`` out: the run's method."""

Share = Callable[[Sequence[Tensor]], list[Tensor]]
"""Gradients in, the same gradients averaged over the processes of a distributed run out (the
gradients themselves with one process): ``mtl.engine.distributed.GradientSync.average``."""

VANISHING = 1e-12
"""Added to a gradient norm before dividing by it, so a zero gradient gives a zero perturbation."""


@dataclass(frozen=True)
class TaskLosses:
    """The task losses of one batch as a function of the weights: ``score(model(inputs))``.

    ``score`` maps the model's predictions to each task's loss, ``K`` separate scalars (a gradient
    of one then runs the backward pass of its own head alone), and has no side effects (no logging).
    """

    model: nn.Module
    inputs: Tensor
    score: Callable[[Any], Sequence[Tensor]]

    def at(self, tensors: Mapping[str, Tensor]) -> Sequence[Tensor]:
        """The losses with the model's parameters and buffers named in ``tensors`` replaced by them
        (``torch.func.functional_call``): the model's own tensors of those names are neither read
        nor written (in-place buffer updates land in ``tensors``)."""
        return self.score(functional_call(self.model, dict(tensors), (self.inputs,)))


class WeightPerturbation(ABC):
    """A step computed at perturbed weights ``w + e``, with ``e`` found from the update at ``w``.

    ``uses_clean_update``: whether the final gradient combines the update at ``w`` with the one at
    ``w + e`` (GSAM), rather than being the perturbed update alone (SAM, ASAM).
    """

    uses_clean_update: ClassVar[bool] = False

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
        losses: Sequence[Tensor],
        task_losses: TaskLosses,
        shared: Sequence[Tensor],
        heads: Sequence[Sequence[Tensor]],
        aggregate: Aggregate,
        share: Share = list,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """The shared update ``(P,)`` (flattened in the order of ``shared``) and each head's
        gradients, from the task ``losses`` at ``w`` (``K`` scalars with their graph) and ``task_losses``,
        which recomputes them at other weights; ``shared`` and ``heads[k]`` (task ``k``'s own
        parameters) are parameters of ``task_losses.model``. Every task gradient computed here
        passes through ``share`` before it is used. The model's parameters and buffers (BatchNorm
        statistics) are left as they were; ``.grad`` is not touched."""


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
