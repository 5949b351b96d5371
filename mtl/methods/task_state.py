"""State of the size of the Jacobian, kept by stateful aggregators (MoCo, DB-MTL, ExcessMTL).

Such state is ``(K, P)``: P is known only at the first call, so the buffers are created then, and
resized to a checkpoint's shape before it is loaded.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtl.methods.base import GradientAggregator


class TaskStateAggregator(GradientAggregator):
    """A stateful aggregator whose per-task state ``(K, P)`` is sized by its first Jacobian.

    Subclasses name those buffers in ``task_states``. They are registered empty, created as zeros
    at the first call (on the Jacobian's device; float32 for float16/bfloat16 Jacobians, else the
    Jacobian's dtype) and resized to a checkpoint's shape before it is loaded, so a fresh instance
    loads a trained one's state and continues it exactly.
    """

    stateful = True
    task_states: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_tasks: int, seed: int = 0, **options: Any) -> None:
        super().__init__(num_tasks, seed, **options)
        for name in self.task_states:
            self.register_buffer(name, torch.empty(0))

    def in_state_dtype(self, jacobian: Tensor) -> Tensor:
        """``jacobian`` in the dtype of the per-task state, creating the state at the first call."""
        state = self._buffers[self.task_states[0]]
        if state.numel() == 0:
            dtype = jacobian.dtype if jacobian.dtype in (torch.float32, torch.float64) else torch.float32
            for name in self.task_states:
                self._buffers[name] = torch.zeros(jacobian.shape, dtype=dtype, device=jacobian.device)
        elif state.shape != jacobian.shape:
            raise ValueError(
                f"{type(self).__name__} keeps per-task state of shape {tuple(state.shape)} (tasks, parameters) "
                f"but got a Jacobian of shape {tuple(jacobian.shape)}"
            )
        return jacobian.to(self._buffers[self.task_states[0]].dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.task_states:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                self._buffers[name] = torch.empty_like(saved, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def decayed(rate: float, decay: float, step: Tensor) -> Tensor:
    """``rate / step**decay``, the step-size schedule shared by DB-MTL and MoCo."""
    return rate / step.double() ** decay
