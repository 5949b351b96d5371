"""What the mixture-of-experts architectures (``mtl.models.mmoe``, ``mtl.models.ple``) share: the gated mixture of the experts' outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def mixture(weights: Tensor, experts: Tensor) -> Tensor:
    """``Σ_i weights[:, i] experts[:, i]``: ``weights (B, n)``, the experts' outputs stacked ``(B, n, D)``."""
    return torch.einsum("be,bed->bd", weights, experts)


def stacked(outputs: Sequence[Tensor]) -> Tensor:
    """The experts' outputs ``(B, D)`` each, as one ``(B, n, D)`` tensor."""
    return torch.stack(list(outputs), dim=1)
