"""A batch per task (the Office benchmarks: every task has its own images): each task's forward pass
on its own batch, and the Jacobian rows of the separate graphs that gives.

Task ``k``'s loss ``L_k`` depends on the shared parameters only through the encoder's pass over its
own batch ``x_k``, so row ``k`` of the Jacobian is ``∇_θ L_k(x_k)``: one backward pass through task
``k``'s graph alone, the same work as ``k``'s part of an equal-weight step. No representation is
shared between the tasks (``jacobian.mode=rep`` has nothing to aggregate), and the ``K``
cotangents of the ``batched`` mode would each run through all ``K`` graphs (``K²`` passes), so
every exact mode fills the rows this way. As LibMTL's multi-input trainer does, each task's batch
goes through the model on its own, so BatchNorm normalizes it with its own statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl.engine.jacobian import scatter
from mtl.sam.base import RandomState


@dataclass(frozen=True)
class SeparateInputs:
    """The forward pass of a batch per task, where a single-input pass has its representation:
    ``randomness[k]`` is the state of the generators before task ``k``'s forward (F-MTL's
    perturbed passes of task ``k`` replay its dropout masks from it)."""

    randomness: tuple[RandomState, ...]


def forward_each(model: nn.Module, inputs: Mapping[str, Tensor], task_names: Sequence[str]) -> tuple[SeparateInputs, dict[str, Tensor]]:
    """Each task's predictions from the model's pass over its own input, in the order of ``task_names``."""
    missing = [name for name in task_names if name not in inputs]
    if missing:
        raise KeyError(f"tasks {missing} have no batch of their own; the batch holds batches of the tasks {sorted(inputs)}")
    device = next(model.parameters()).device  # the inputs' device, which a batch of graphs does not name
    randomness, predictions = [], {}
    for name in task_names:
        randomness.append(RandomState.capture(device))
        predictions[name] = model(inputs[name])[name]
    return SeparateInputs(tuple(randomness)), predictions


@dataclass(frozen=True)
class SeparateGraphs:
    """What one sample of a batch per task backpropagates into the shared parameters: each task's
    loss, in its own graph."""

    losses: tuple[Tensor, ...]

    def fill(self, rows: Tensor, shared: Sequence[nn.Parameter], averaging: Tensor | None = None) -> None:
        """``rows[k] = ∇_θ L_k``, one backward pass through each task's graph; with ``averaging
        (C, K)`` the rows of the ``C`` groups of tasks, ``averaging @ (∇_θ L_k)_k``."""
        task_rows = rows if averaging is None else torch.empty((len(self.losses), rows.shape[-1]), dtype=rows.dtype, device=rows.device)
        for row, loss in zip(task_rows, self.losses):
            scatter(torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True), shared, row)
        if averaging is not None:
            torch.matmul(averaging.to(rows.dtype), task_rows, out=rows)
