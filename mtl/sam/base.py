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

Both compare gradients of one loss at two points, so every pass of a step draws the same random
numbers (``RandomState``): the perturbed passes replay the clean pass's dropout masks. With fresh
masks the difference of the gradients would be mostly mask noise (at ``rho = 0`` F-MTL's flat
gradient would not vanish).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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

CleanGradients = tuple[Tensor, list[list[Tensor]]]
"""The task gradients of a clean pass: the Jacobian ``(K, P)`` of the shared parameters (from the
Jacobian engine) and, per task, its gradients on its own head's parameters."""

Share = Callable[[Sequence[Tensor]], list[Tensor]]
"""Gradients in, the same gradients averaged over the processes of a distributed run out (the
gradients themselves with one process): ``mtl.engine.distributed.GradientSync.average``."""

VANISHING = 1e-12
"""Added to a gradient norm before dividing by it, so a zero gradient gives a zero perturbation."""


@dataclass(frozen=True)
class RandomState:
    """The state of the generators a forward pass on ``device`` draws from (dropout masks and the
    like): the CPU generator's and, on an accelerator, that device's."""

    device: torch.device
    cpu: Tensor
    accelerator: Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        """The generators' state now, before the pass whose draws are to be replayed."""
        accelerator = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(device, torch.get_rng_state(), accelerator)

    @contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside the block the generators draw from this state; after it they are where they were,
        so a replayed pass neither repeats nor shifts the draws of the rest of the run."""
        with torch.random.fork_rng(devices=[self.device] if self.accelerator is not None else [], device_type=self.device.type):
            torch.set_rng_state(self.cpu)
            if self.accelerator is not None:
                torch.cuda.set_rng_state(self.accelerator, self.device)
            yield


@dataclass(frozen=True)
class TaskLosses:
    """The task losses of one batch as a function of the weights: ``score(model(inputs))``.

    ``score`` maps the model's predictions to each task's loss, ``K`` separate scalars (a gradient
    of one then runs the backward pass of its own head alone), and has no side effects (no logging).
    ``randomness`` is the state captured before the clean pass of the step: every evaluation draws
    the clean pass's dropout masks, so the losses are a function of the weights alone.
    """

    model: nn.Module
    inputs: Tensor
    score: Callable[[Any], Sequence[Tensor]]
    randomness: RandomState

    one_forward: ClassVar[bool] = True
    """Whether one forward pass gives every task's loss (F-MTL's vmapped evaluation needs it)."""

    def at(self, tensors: Mapping[str, Tensor]) -> Sequence[Tensor]:
        """The losses with the model's parameters and buffers named in ``tensors`` replaced by them
        (``torch.func.functional_call``): the model's own tensors of those names are neither read
        nor written (in-place buffer updates land in ``tensors``)."""
        with self.randomness.replayed():
            return self.score(functional_call(self.model, dict(tensors), (self.inputs,)))

    def task_loss(self, tensors: Mapping[str, Tensor], task: int) -> Tensor:
        """Task ``task``'s loss of ``at(tensors)``."""
        return self.at(tensors)[task]


@dataclass(frozen=True)
class SeparateTaskLosses:
    """``TaskLosses`` of a batch per task: task ``k``'s loss is ``scores[k](model(inputs[k]))``, its
    forward pass replaying ``randomness[k]``, the draws of task ``k``'s clean pass."""

    model: nn.Module
    inputs: Sequence[Tensor]
    scores: Sequence[Callable[[Any], Tensor]]
    randomness: Sequence[RandomState]

    one_forward: ClassVar[bool] = False

    def at(self, tensors: Mapping[str, Tensor]) -> Sequence[Tensor]:
        """Every task's loss at ``tensors`` (as ``TaskLosses.at``), one forward pass per task."""
        return [self.task_loss(tensors, task) for task in range(len(self.inputs))]

    def task_loss(self, tensors: Mapping[str, Tensor], task: int) -> Tensor:
        """Task ``task``'s loss at ``tensors``, from the forward pass of its own batch alone."""
        with self.randomness[task].replayed():
            return self.scores[task](functional_call(self.model, dict(tensors), (self.inputs[task],)))


class WeightPerturbation(ABC):
    """A step computed at perturbed weights ``w + e``, with ``e`` found from the update at ``w``.

    ``uses_clean_update``: whether the final gradient combines the update at ``w`` with the one at
    ``w + e`` (GSAM), rather than being the perturbed update alone (SAM, ASAM).
    """

    uses_clean_update: ClassVar[bool] = False

    @abstractmethod
    def step(self, clean: Closure, perturbed: Closure, parameters: Sequence[Tensor], learning_rate: float) -> Tensor:
        """Call ``clean()`` at ``w``, perturb ``parameters``, clear their ``.grad``, call
        ``perturbed()`` at ``w + e`` with the random draws of ``clean()`` replayed, restore ``w``;
        leave the final gradient in ``.grad`` and return the losses of ``clean()``.
        ``learning_rate`` is the optimizer's current one."""


class TaskPerturbation(ABC):
    """A step that perturbs the shared parameters and one task's head at a time."""

    @abstractmethod
    def step(
        self,
        clean: CleanGradients,
        losses: Tensor,
        task_losses: TaskLosses | SeparateTaskLosses,
        shared: Sequence[Tensor],
        heads: Sequence[Sequence[Tensor]],
        aggregate: Aggregate,
        share: Share = list,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """The shared update ``(P,)`` (flattened in the order of ``shared``) and each head's
        gradients, from the task gradients at ``w`` (``clean``: the Jacobian ``(K, P)`` of the
        shared parameters and each task's gradients on its own head), the task ``losses (K,)`` at
        ``w`` and ``task_losses``, which recomputes them at other weights; ``shared`` and
        ``heads[k]`` (task ``k``'s own parameters) are parameters of ``task_losses.model``. Every
        task gradient, given or computed here, passes through ``share`` before it is used. The
        model's parameters and buffers (BatchNorm statistics) are left as they were; ``.grad`` is
        not touched."""


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
