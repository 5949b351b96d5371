"""Per-task gradients of the shared parameters: the Jacobian ``(K, P)`` that gradient aggregators take.

This is the reference computation, one ``torch.autograd.grad`` per task through the whole graph;
the training step uses the Jacobian engine (``mtl.engine.jacobian_modes``), which gives the same
rows more cheaply.
``torch.autograd.grad`` fires no gradient hooks (DDP's included) and leaves ``.grad`` untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def task_jacobian(losses: Tensor, parameters: Sequence[nn.Parameter]) -> Tensor:
    """Row ``k`` is the gradient of ``losses[k]`` with respect to ``parameters``, flattened and
    concatenated in order; a parameter a loss does not reach contributes zeros."""
    rows = []
    for loss in losses:
        gradients = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gradients, parameters)])
        )
    return torch.stack(rows)


def set_gradient(parameters: Sequence[nn.Parameter], direction: Tensor) -> None:
    """Write (a copy of) the flat ``direction`` into the ``.grad`` of ``parameters``: the inverse of
    the flattening above."""
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = direction[offset : offset + size].view_as(parameter).clone()
        offset += size
    if offset != direction.numel():
        raise ValueError(f"direction has {direction.numel()} entries but the parameters have {offset}")
