"""What the mixture-of-experts architectures (``mtl.models.mmoe``, ``mtl.models.ple``) share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mixture(weights: Tensor, experts: Tensor) -> Tensor:
    """``Σ_i weights[:, i] experts[:, i]``: ``weights (B, n)``, the experts' outputs stacked ``(B, n, D)``."""
    return torch.einsum("be,bed->bd", weights, experts)


def stacked(outputs: Sequence[Tensor]) -> Tensor:
    """The experts' outputs ``(B, D)`` each, as one ``(B, n, D)`` tensor."""
    return torch.stack(list(outputs), dim=1)


def last_linear(module: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of ``module``, or an error naming the module."""
    layers = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no linear layer to measure gradient norms on")
    return layers[-1]
