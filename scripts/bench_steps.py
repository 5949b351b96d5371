"""``mtl``'s training steps as ``bench_step.py`` times them (a helper module, not a script).

A step is the training step of ``mtl.engine.module.MultiTaskModule`` without Lightning: zero grad,
``mtl.engine.step.MultiTaskStep`` (forward, task losses, gradients), SGD step (learning rate 1e-3,
over the model's and the method's parameters), ``after_update``. The variants:

- ``ew``, the baseline: plain PyTorch, one backward pass of the mean task loss.
- a gradient aggregator in an engine mode (``loop``, ``batched``, ``rep``, ``auto``): the
  training step with ``JacobianEngine(mode)``.
- a gradient aggregator in ``reference`` mode: ``K`` backward passes through the whole graph
  (``mtl.engine.jacobian.task_jacobian``), then the heads' gradients from one more backward.
- a loss weighting (variant ``weighted``): the training step, one backward of
  ``method.objective(losses)``, and for methods that need them (FAMO) the losses recomputed after
  the optimizer step.
- F-MTL over EW (method ``fmtl``, ``mtl.sam.fmtl.FlatMTL`` with the paper's defaults): the
  training step of ``sam=fmtl method=ew jacobian.mode=loop``, its K perturbed passes one by one
  (variant ``loop``) or in one vmapped call (``batched``, ``sam.batched=true``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from mtl.engine.jacobian import set_gradient, task_jacobian
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.step import MultiTaskStep, trained
from mtl.methods import GradientAggregator, LossWeighting, Method
from mtl.methods.linear import LinearScalarization
from mtl.sam.fmtl import FlatMTL
from mtl.tasks import INPUT_KEY, Task, split_batch, stack_losses

LEARNING_RATE = 1e-3
MODES = ("reference", "loop", "batched", "rep", "auto")
"""The ways an aggregator's step can get its Jacobian: the reference and the engine's modes."""
WEIGHTED = "weighted"
"""The variant of a loss weighting (one backward pass: engine modes do not apply)."""
FLAT = "fmtl"
"""F-MTL over EW, measured as a method of its own."""
FLAT_VARIANTS = ("loop", "batched")
"""F-MTL's ways of running its perturbed passes (``sam.batched`` false or true)."""

Step = Callable[[], None]
Details = Callable[[], dict]


def sgd(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of every step, ``mtl``'s and the peers'."""
    return torch.optim.SGD(list(parameters), lr=LEARNING_RATE)


def equal_weighting_step(model: nn.Module, tasks: list[Task], batch: Mapping[str, Tensor]) -> Step:
    """The baseline: one backward pass of the mean task loss."""
    optimizer = sgd(model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        stack_losses(tasks, model(batch[INPUT_KEY]), batch).mean().backward()
        optimizer.step()

    return step


def loss_weighting_step(model: nn.Module, tasks: list[Task], method: LossWeighting, batch: Mapping[str, Tensor]) -> Step:
    """One backward pass of the method's objective: ``MultiTaskStep`` as training runs it."""
    return training_step(MultiTaskStep(model, tasks, method), batch)


def aggregator_step(
    model: nn.Module, tasks: list[Task], method: GradientAggregator, mode: str, batch: Mapping[str, Tensor], chunk: int | None = None
) -> tuple[Step, Details]:
    """The aggregator's step with the Jacobian from ``mode``; ``details()`` says what ``auto`` chose.
    In ``auto`` mode the first call runs the steps of its trial until it chooses."""
    if mode == "reference":
        return reference_step(model, tasks, method, batch), dict
    engine = JacobianEngine(mode, chunk)
    step = training_step(MultiTaskStep(model, tasks, method, engine), batch)
    if mode != "auto":
        return step, dict

    def step_after_the_trial() -> None:
        step()
        while engine.mode == "auto":  # the first call runs auto's trial steps (ModeTrial) to its choice
            step()

    return step_after_the_trial, lambda: {"auto_chose": engine.mode}


def reference_step(model: nn.Module, tasks: list[Task], method: GradientAggregator, batch: Mapping[str, Tensor]) -> Step:
    """``K`` backward passes through the whole graph per sample (``task_jacobian``); the heads'
    gradients from one more backward pass of the mean over samples of the summed losses."""
    optimizer = sgd([*model.parameters(), *method.parameters()])
    shared = trained(model.shared_parameters())
    heads = trained(parameter for task in tasks for parameter in model.task_parameters(task.name))
    parts = split_batch(batch, method.independent_samples)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = torch.stack([stack_losses(tasks, model(part[INPUT_KEY]), part) for part in parts])
        jacobians = torch.stack([task_jacobian(sample_losses, shared) for sample_losses in losses])
        if len(parts) == 1:
            direction = method(jacobians[0], losses[0].detach())
        else:
            direction = method(jacobians, losses.detach())
        set_gradient(shared, direction)
        (losses.sum() / len(parts)).backward(inputs=heads)
        optimizer.step()

    return step


def flat_mtl_step(model: nn.Module, tasks: list[Task], variant: str, batch: Mapping[str, Tensor]) -> Step:
    """F-MTL over EW with its perturbed passes in ``variant`` (``FLAT_VARIANTS``): ``MultiTaskStep``
    with ``sam=fmtl method=ew`` as training runs it on one process."""
    if variant not in FLAT_VARIANTS:
        raise ValueError(f"F-MTL runs its perturbed passes in one of {list(FLAT_VARIANTS)}, not '{variant}'")
    sharpness = FlatMTL(batched=variant == "batched")
    # loop: the clean task gradients by K backward passes through the encoder, in every step (auto's trial would time a mix)
    step = MultiTaskStep(model, tasks, LinearScalarization(len(tasks)), JacobianEngine("loop"), sharpness=sharpness)
    return training_step(step, batch)


def training_step(step: MultiTaskStep, batch: Mapping[str, Tensor]) -> Step:
    """``step`` between the optimizer's zero grad and step, as ``MultiTaskModule.training_step`` runs it."""
    optimizer = sgd(step.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(batch, LEARNING_RATE)
        optimizer.step()
        step.after_update(batch)

    return run


def mtl_step(model: nn.Module, tasks: list[Task], method: Method | None, variant: str, batch: Mapping[str, Tensor], chunk: int | None = None) -> tuple[Step, Details]:
    """``mtl``'s step for EW (``method`` None), a loss weighting (variant ``weighted``) or an
    aggregator in a mode of ``MODES`` (``chunk``: ``jacobian.chunk``); a combination that cannot
    run raises ValueError."""
    if method is None:
        return equal_weighting_step(model, tasks, batch), dict
    if isinstance(method, LossWeighting):
        if variant != WEIGHTED:
            raise ValueError(f"{type(method).__name__} is a loss weighting: it has no Jacobian mode ('{variant}')")
        return loss_weighting_step(model, tasks, method, batch), dict
    if variant not in MODES:
        raise ValueError(f"unknown mode '{variant}' for {type(method).__name__}; valid modes: {list(MODES)}")
    return aggregator_step(model, tasks, method, variant, batch, chunk)
