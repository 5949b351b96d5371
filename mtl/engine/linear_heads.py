"""Linear task heads: the representation gradients of ``jacobian.mode=rep`` as products, never formed.

When the head of task ``k`` is one linear layer reading its copy of the representation,
``out_k = z W_kᵀ + b_k``, the chain rule writes that task's gradient with respect to ``z`` as a
product (``z`` seen as ``N`` rows of ``D`` features, ``N = B`` for ``z (B, D)``)::

    Z_k = dL_k/dz = g_k W_k,        g_k = dL_k/d out_k  (N, C_k),   W_k  (C_k, D)

so what MGDA-UB (``jacobian.mode=rep``) needs of the ``Z_k`` follows from the small ``g_k`` and ``W_k``:

- the Gramian ``<Z_j, Z_k> = sum((g_jᵀ g_k) ∘ (W_j W_kᵀ))``: the ``(j, k)`` block sums of two
  ``(ΣC, ΣC)`` products, ``(N + D)(ΣC)²`` multiply-adds;
- the combined gradient ``Σ_k w_k Z_k = [w_1 g_1 ... w_K g_K] [W_1; ...; W_K]``: one product.

Formed, the ``Z_k`` cost ``N D ΣC`` (the heads' backward), their Gramian ``K² N D`` and their
combination ``K N D``; from the products, the combination costs ``N ΣC D``. So the products are
used when ``(N + D)(ΣC)² < N D (K² + K)``: always for a few outputs per head (40 two-class heads
on a batch of 256 and ``D = 512``: about 45 times fewer multiply-adds), never for one 1000-class
head. Nothing is approximated. The engine forms the ``Z_k`` for other heads, and for aggregators
that are not a Gramian weighting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LinearHeadOutputs:
    """The outputs ``out_k`` of ``K`` linear heads, as recorded in the forward pass, and their weights ``W_k``, in task order."""

    outputs: tuple[Tensor, ...]
    weights: tuple[Tensor, ...]

    def gradients(self, output_gradients: Sequence[Tensor | None], representation_shape: torch.Size) -> LinearHeadGradients:
        """The task gradients with respect to a representation of ``representation_shape``, from
        ``dL_k/d out_k`` (None: the loss does not reach the head, a zero gradient)."""
        rows = [
            (torch.zeros_like(output) if gradient is None else gradient).reshape(-1, output.shape[-1])
            for gradient, output in zip(output_gradients, self.outputs)
        ]
        weights = torch.cat(self.weights)
        dtype = weights.dtype if weights.dtype in (torch.float32, torch.float64) else torch.float32
        sizes = tuple(weight.shape[0] for weight in self.weights)
        return LinearHeadGradients(torch.cat(rows, dim=1).to(dtype), weights.to(dtype), sizes, representation_shape)


@dataclass(frozen=True)
class LinearHeadGradients:
    """``Z_k = g_k W_k`` for ``K`` tasks, held as the stacked factors ``[g_1 ... g_K] (N, ΣC)`` and
    ``[W_1; ...; W_K] (ΣC, D)``, in one floating dtype of at least 32 bits; ``sizes`` are the ``C_k``."""

    output_gradients: Tensor
    weights: Tensor
    sizes: tuple[int, ...]
    representation_shape: torch.Size

    @functools.cached_property
    def segments(self) -> Tensor:
        """``(K, ΣC)``: row ``k`` is 1 on task ``k``'s columns (built on the device, no host transfer)."""
        return torch.block_diag(*(self.weights.new_ones(1, size) for size in self.sizes))

    def gramian(self) -> Tensor:
        """``(K, K)``: ``<Z_j, Z_k>``, the ``(j, k)`` block sums of ``(Gᵀ G) ∘ (W Wᵀ)``."""
        products = (self.output_gradients.T @ self.output_gradients) * (self.weights @ self.weights.T)
        return self.segments @ products @ self.segments.T

    def combination(self, task_weights: Tensor) -> Tensor:
        """``Σ_k task_weights[k] Z_k``, of the representation's shape."""
        column_weights = task_weights.to(self.weights.device, self.weights.dtype) @ self.segments
        return ((self.output_gradients * column_weights) @ self.weights).view(self.representation_shape)

    def dense(self) -> Tensor:
        """``(K, *representation_shape)``: every ``Z_k`` formed."""
        pairs = zip(self.output_gradients.split(self.sizes, dim=1), self.weights.split(self.sizes))
        return torch.stack([(rows @ weight).view(self.representation_shape) for rows, weight in pairs])


def single_linear_layer(module: nn.Module) -> nn.Linear | None:
    """``module`` as one linear layer: an ``nn.Linear``, or ``nn.Sequential`` containers around exactly one; else None."""
    layers = [child for child in module.modules() if not isinstance(child, nn.Sequential)]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None


def decode_recording_linear_heads(
    model: nn.Module, decode_each: Callable[[Mapping[str, Tensor]], dict[str, Tensor]], copies: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], LinearHeadOutputs | None]:
    """``decode_each(copies)``, and the outputs of the tasks' linear heads on their copies when every
    task's head (``model.head(name)``) is a single linear layer that read its own copy of ``z`` once,
    and the products are the cheaper way (the module docstring); else None."""
    head = getattr(model, "head", None)
    layers = {name: single_linear_layer(head(name)) for name in copies} if callable(head) else {}
    if not layers or any(layer is None for layer in layers.values()) or not products_are_cheaper(next(iter(copies.values())), list(layers.values())):
        return decode_each(copies), None
    calls: dict[tuple[int, int], list[Tensor]] = {}  # (layer, its input) -> its outputs

    def record(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        calls.setdefault((id(layer), id(inputs[0])), []).append(output)

    handles = [layer.register_forward_hook(record) for layer in set(layers.values())]
    try:
        predictions = decode_each(copies)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [calls.get((id(layers[name]), id(copy)), []) for name, copy in copies.items()]
    if any(len(output) != 1 for output in outputs):
        return predictions, None
    return predictions, LinearHeadOutputs(tuple(output for (output,) in outputs), tuple(layers[name].weight.detach() for name in copies))


def products_are_cheaper(representation: Tensor, layers: Sequence[nn.Linear]) -> bool:
    """Whether the products (module docstring) cost fewer multiply-adds than forming the ``Z_k``."""
    features = representation.shape[-1]
    rows = representation.numel() // features
    outputs = sum(layer.out_features for layer in layers)
    return (rows + features) * outputs**2 < rows * features * (len(layers) ** 2 + len(layers))
