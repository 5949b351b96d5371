"""Task heads: each maps the shared representation ``(B, in_features)`` to one task's outputs; and
the check every model makes of a task name it is asked for."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """``Linear → ReLU (→ Dropout)`` per entry of ``hidden``, then a ``Linear`` to ``out_features``.

    With ``hidden=()`` this is a linear head; ``hidden=(50,), dropout=0.5`` is the Multi-LeNet head
    of Sener & Koltun 2018.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


def check_task(heads: nn.ModuleDict, name: str) -> None:
    """An error naming the model's tasks (the keys of ``heads``) unless ``name`` is one of them."""
    if name not in heads:
        raise KeyError(f"no task named '{name}'; the model's tasks are {list(heads)}")
