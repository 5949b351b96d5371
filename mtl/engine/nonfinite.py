"""What a training step does when a task loss, a task gradient or the update is not finite.

The step (``mtl.engine.step.MultiTaskStep``) checks the task losses of each forward pass it runs
(the clean pass, and SAM's perturbed one) before any method sees them, and every gradient
aggregator refuses a Jacobian or Gramian with a non-finite row (``mtl.methods.base.NonFiniteRows``),
so no solver (MGDA's, Nash-MTL's) fails on one. After the gradients are written the whole update is
checked once more (a head's gradient, a loss weighting's backward, F-MTL's perturbed passes). Any of
these raises ``NonFiniteStep``, whose message names the tasks, after the step has put back the
model's buffers and the method's state (``StateBeforeStep``); the training module then applies the
run's ``NonFinitePolicy`` (``nonfinite=raise|skip``):

- ``raise`` (the default) stops the run before the optimizer step, so the weights, and every
  checkpoint written from them, stay the last finite ones;
- ``skip`` drops the step's gradients, so the weights, the optimizer's state, the buffers and the
  method's state stay as they were, counts the skip (``train/nonfinite_skips``), and raises once
  ``max_skips`` steps in a row were skipped. It runs on one process only: each process checks its
  own losses, and the processes do not yet agree on a skip.

Each check reads one flag from the device (on a GPU, a wait for the step so far); a Gramian
weighting's reads the Gramian that its solve copies to the CPU anyway. On the CPU the checks cost
nothing measurable (``scripts/bench_nonfinite.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIONS = ("raise", "skip")


class NonFiniteStep(FloatingPointError):
    """A training step with a non-finite task loss, task gradient or update; the message says which."""


def check_losses(losses: Tensor, task_names: Sequence[str]) -> None:
    """Raise ``NonFiniteStep`` naming each task whose loss in ``losses`` (``(K,)``, or ``(N, K)``
    for ``N`` samples) is not finite, with its value."""
    if bool(torch.isfinite(losses.detach()).all()):
        return
    samples = losses.detach().reshape(-1, len(task_names)).tolist()
    bad = [f"task '{name}' loss is {value:g}" for sample in samples for name, value in zip(task_names, sample) if not math.isfinite(value)]
    raise NonFiniteStep(", ".join(bad))


def check_update(gradients: Sequence[Tensor]) -> None:
    """Raise ``NonFiniteStep`` if any of the step's ``gradients`` holds a non-finite entry. Read
    from their sums (one pass, no mask; a NaN or infinity makes a sum non-finite), accumulated in
    at least float32, in one flag; a sum that overflows (entries near 1e38 in float32) counts as
    non-finite too."""
    sums = [gradient.sum(dtype=torch.promote_types(gradient.dtype, torch.float32)).double() for gradient in gradients]
    if sums and not bool(torch.isfinite(torch.stack(sums)).all()):
        raise NonFiniteStep("the update is not finite, though every task loss (and every aggregated task gradient) was")


class StateBeforeStep:
    """What a step changes besides ``.grad``: the model's buffers (BatchNorm statistics) and the
    method's state (a loss weighting's history or generator moves before the update is checked;
    an aggregator's with F-MTL's clean pass); saved before the step, put back after a non-finite one."""

    def __init__(self, model: nn.Module, method: nn.Module) -> None:
        self.model, self.method = model, method
        self.buffers = [buffer.clone() for buffer in model.buffers()]
        self.method_state = copy.deepcopy(method.state_dict())

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), self.buffers):
                buffer.copy_(saved)
        self.method.load_state_dict(self.method_state)


class NonFinitePolicy:
    """``action``: ``raise`` stops the run on a non-finite step; ``skip`` skips its update and
    raises after ``max_skips`` consecutive skips."""

    def __init__(self, action: str = "raise", max_skips: int = 10) -> None:
        if action not in ACTIONS:
            raise ValueError(f"nonfinite={action} is not a policy; choose one of {list(ACTIONS)}")
        if max_skips < 1:
            raise ValueError(f"nonfinite_max_skips must be at least 1, got {max_skips}")
        self.action, self.max_skips = action, max_skips
        self.consecutive = self.skipped = 0

    def on_nonfinite(self, error: NonFiniteStep, where: str) -> None:
        """Apply the policy to a non-finite step at ``where`` (the step, epoch and learning rate):
        raise, or count it as skipped (raising after ``max_skips`` in a row)."""
        if self.action == "raise":
            raise NonFiniteStep(f"{where}: {error} (nonfinite=skip would skip such steps)") from None
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive >= self.max_skips:
            raise NonFiniteStep(f"{where}: {error}; {self.consecutive} steps in a row were not finite (nonfinite_max_skips={self.max_skips})") from None

    def on_finite(self) -> None:
        """A step that was finite ends a run of skips."""
        self.consecutive = 0
