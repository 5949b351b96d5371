"""``mtl``'s training steps as ``bench_step.py`` times them (a helper module, not a script).

A step is the whole training step of ``mtl.engine.module.MultiTaskModule`` without Lightning:
zero grad, forward, task losses, gradients, SGD step (learning rate 1e-3, over the model's and the
method's parameters). What "gradients" means depends on the variant:

- ``ew``, the baseline: one backward pass of the mean task loss.
- a gradient aggregator in an engine mode (``loop``, ``batched``, ``rep``, ``auto``):
  ``JacobianEngine.write_gradients``, as in training; each head gets its own task's gradient.
- a gradient aggregator in ``reference`` mode: ``K`` backward passes through the whole graph
  (``mtl.engine.jacobian.task_jacobian``), then the heads' gradients from one more backward.
- a loss weighting (variant ``weighted``): one backward of ``method.objective(losses)``, and for
  methods that need them (FAMO) the losses recomputed after the optimizer step.
- F-MTL over EW (method ``fmtl``, ``mtl.sam.fmtl.FlatMTL`` with the paper's defaults), as
  ``MultiTaskModule`` runs ``sam=fmtl method=ew`` on one process: the K clean task gradients, then
  the K perturbed passes one by one (variant ``loop``) or in one vmapped call (``batched``,
  ``sam.batched=true``); the shared parameters take the mean of the clean and flat gradients, each
  head ``1/K`` of its perturbed gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from mtl.engine.jacobian import set_gradient, task_jacobian
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.module import split_batch, trained
from mtl.methods import GradientAggregator, LossWeighting, Method
from mtl.sam.base import RandomState, TaskLosses
from mtl.sam.fmtl import FlatMTL
from mtl.tasks import INPUT_KEY, Task, stack_losses, task_losses

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
    """One backward pass of the method's objective, as ``MultiTaskModule.training_step`` runs it."""
    optimizer = sgd([*model.parameters(), *method.parameters()])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = stack_losses(tasks, model(batch[INPUT_KEY]), batch)
        norms = None
        if "last_shared_layer_gradient_norms" in method.requires:
            norms = task_jacobian(losses, model.last_shared_parameters()).norm(dim=1)
        method.objective(losses, norms).backward()
        optimizer.step()
        if "losses_after_step" in method.requires:
            with torch.no_grad():
                method.update(stack_losses(tasks, model(batch[INPUT_KEY]), batch))

    return step


def aggregator_step(
    model: nn.Module, tasks: list[Task], method: GradientAggregator, mode: str, batch: Mapping[str, Tensor], chunk: int | None = None
) -> tuple[Step, Details]:
    """The aggregator's step with the Jacobian from ``mode``; ``details()`` says what ``auto`` chose.
    In ``auto`` mode the first call runs the steps of its trial until it chooses."""
    optimizer = sgd([*model.parameters(), *method.parameters()])
    shared = trained(model.shared_parameters())
    heads = trained(parameter for task in tasks for parameter in model.task_parameters(task.name))
    parts = split_batch(batch, method.independent_samples)
    if mode == "reference":
        gradients = reference_gradients(model, tasks, method, parts, shared, heads)
        return _optimized(optimizer, gradients), dict
    engine = JacobianEngine(mode, chunk)
    engine.check(model, method)

    def gradients() -> None:
        representations, separate = [], []
        for part in parts:
            representation, predictions = engine.forward(model, part[INPUT_KEY], [task.name for task in tasks])
            representations.append(representation)
            separate.append(task_losses(tasks, predictions, part))
        losses = torch.stack([torch.stack(sample) for sample in separate])
        engine.write_gradients(method, losses, representations, shared, heads, len(batch[INPUT_KEY]), separate=separate)

    step = _optimized(optimizer, gradients)
    if mode != "auto":
        return step, dict

    def step_after_the_trial() -> None:
        step()
        while engine.mode == "auto":  # the first call runs auto's trial steps (ModeTrial) to its choice
            step()

    return step_after_the_trial, lambda: {"auto_chose": engine.mode}


def reference_gradients(model: nn.Module, tasks: list[Task], method: GradientAggregator, parts: list[dict[str, Tensor]], shared: list[nn.Parameter], heads: list[nn.Parameter]) -> Step:
    """``K`` backward passes through the whole graph per sample; heads from the mean over samples of the summed losses."""

    def gradients() -> None:
        losses = torch.stack([stack_losses(tasks, model(part[INPUT_KEY]), part) for part in parts])
        jacobians = torch.stack([task_jacobian(sample_losses, shared) for sample_losses in losses])
        if len(parts) == 1:
            direction = method(jacobians[0], losses[0].detach())
        else:
            direction = method(jacobians, losses.detach())
        set_gradient(shared, direction)
        (losses.sum() / len(parts)).backward(inputs=heads)

    return gradients


def flat_mtl_step(model: nn.Module, tasks: list[Task], variant: str, batch: Mapping[str, Tensor]) -> Step:
    """F-MTL over EW with its perturbed passes in ``variant`` (``FLAT_VARIANTS``), as
    ``MultiTaskModule._write_flat_gradients`` runs it on one process."""
    if variant not in FLAT_VARIANTS:
        raise ValueError(f"F-MTL runs its perturbed passes in one of {list(FLAT_VARIANTS)}, not '{variant}'")
    sharpness = FlatMTL(batched=variant == "batched")
    shared = trained(model.shared_parameters())
    heads = [trained(model.task_parameters(task.name)) for task in tasks]

    def gradients() -> None:
        randomness = RandomState.capture(batch[INPUT_KEY].device)
        losses = task_losses(tasks, model(batch[INPUT_KEY]), batch)
        at_other_weights = TaskLosses(model, batch[INPUT_KEY], lambda predictions: task_losses(tasks, predictions, batch), randomness)
        direction, head_gradients = sharpness.step(losses, at_other_weights, shared, heads, lambda jacobian, _: jacobian.mean(dim=0))
        set_gradient(shared, direction)
        for head, gradients in zip(heads, head_gradients):
            for parameter, gradient in zip(head, gradients):
                parameter.grad = gradient / len(tasks)

    return _optimized(sgd(model.parameters()), gradients)


def _optimized(optimizer: torch.optim.Optimizer, gradients: Step) -> Step:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gradients()
        optimizer.step()

    return step


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
