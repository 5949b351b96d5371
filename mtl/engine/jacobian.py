"""Per-task gradients of the shared parameters: the Jacobian ``(K, P)`` that gradient aggregators take.

This is the reference computation, one ``torch.autograd.grad`` per task through the whole graph;
the training step uses the Jacobian engine (``mtl.engine.jacobian_modes``), which gives the same
rows more cheaply (with ``batched_vector_jacobian_products`` in its ``batched`` mode). The other
helpers move gradients between per-parameter tensors and flat rows.
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


def batched_vector_jacobian_products(outputs: Tensor, cotangents: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """``(d outputs/d input)ᵀ · cotangents[k]`` for every ``k`` in one pass: per input
    ``(len(cotangents), *input.shape)``, or None where no output depends on it.

    Two vmaps can batch the pass. The legacy prototype behind ``is_grads_batched=True``
    (``prototype_batched_products``) has no batching rule for the backward of convolution or
    BatchNorm. It runs those ops once per cotangent and stacks the results, so on a convolutional
    encoder it launches at least as many kernels as ``loop``. ``torch.func.vmap`` (``vmapped_products``) folds the ``K``
    cotangents into one convolution, into its batch for the input gradient and into its output
    channels for the weight gradient. CUDA takes it for that reason, the CPU the prototype, where
    ``torch.func``'s rules add copies of the ``K``-fold gradients and an elementwise BatchNorm
    backward (``scripts/bench_vmap.py`` measures the two; the figures are in BENCHMARKS.md).

    Most ops without a batching rule run in the vmap's own loop over the cotangents; what it
    cannot run at all (NumPy, ``.item()``, data-dependent control flow) raises a RuntimeError."""
    batched = vmapped_products if cotangents.is_cuda else prototype_batched_products
    return batched(outputs, cotangents, inputs)


def vmapped_products(outputs: Tensor, cotangents: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """``batched_vector_jacobian_products`` by ``torch.func.vmap`` over ``torch.autograd.grad``."""
    unused: list[bool] = []

    def products(cotangent: Tensor) -> tuple[Tensor, ...]:
        gradients = torch.autograd.grad(outputs, inputs, grad_outputs=cotangent, retain_graph=True, allow_unused=True)
        unused[:] = [gradient is None for gradient in gradients]
        return tuple(gradient for gradient in gradients if gradient is not None)

    used = iter(torch.func.vmap(products)(cotangents))
    return tuple(None if is_unused else next(used) for is_unused in unused)


def prototype_batched_products(outputs: Tensor, cotangents: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """``batched_vector_jacobian_products`` by ``torch.autograd.grad(..., is_grads_batched=True)``."""
    return torch.autograd.grad(outputs, inputs, grad_outputs=cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True)

def numel(parameters: Sequence[nn.Parameter]) -> int:
    """The number of entries of all ``parameters`` together."""
    return sum(parameter.numel() for parameter in parameters)

def scatter(gradients: Sequence[Tensor | None], parameters: Sequence[nn.Parameter], rows: Tensor) -> None:
    """Copy per-parameter ``gradients`` (each ``(*batch, *parameter.shape)``) into the flat
    ``rows (*batch, P)``; a gradient of None (unused parameter) writes zeros."""
    offset = 0
    for gradient, parameter in zip(gradients, parameters):
        size = parameter.numel()
        block = rows[..., offset : offset + size]
        if gradient is None:
            block.zero_()
        else:
            block.copy_(gradient.reshape(block.shape))
        offset += size

def own_memory(gradients: Sequence[Tensor | None], parameters: Sequence[nn.Parameter]) -> list[Tensor]:
    """``gradients`` (from ``torch.autograd.grad``) as tensors the ``parameters`` may keep as
    ``.grad`` and change in place (gradient clipping does): zeros for None (no loss reaches the
    parameter), and a copy of a gradient that is not contiguous (autograd may return an expanded
    one) or that shares memory with an earlier one (autograd may hand one tensor to several inputs)."""
    owned, storages = [], set()
    for gradient, parameter in zip(gradients, parameters):
        if gradient is None:
            gradient = torch.zeros_like(parameter)
        elif not gradient.is_contiguous() or gradient.untyped_storage().data_ptr() in storages:
            gradient = gradient.clone(memory_format=torch.contiguous_format)
        storages.add(gradient.untyped_storage().data_ptr())
        owned.append(gradient)
    return owned

def copy_rows(gradients: Sequence[Tensor | None], rows: Tensor) -> None:
    """``rows[k] = gradients[k]``; a gradient of None (the loss does not reach it) writes zeros."""
    for row, gradient in zip(rows, gradients):
        if gradient is None:
            row.zero_()
        else:
            row.copy_(gradient)
