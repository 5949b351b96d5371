"""Single-task learning (STL): the baseline of Δm%.

Δm% (Maninis, Radosavovic, Kokkinos 2019, arXiv:1904.08918) compares a multi-task model with one
model per task trained alone; LibMTL, Nash-MTL and FAMO report it against such single-task runs.
Here the single-task model is the multi-task model with fixed weights

    w_k = 1 if k is the trained task, else 0

so the other heads get no gradient and take no part in the shared encoder's update: the run
trains exactly the encoder and the head of one task, as a single-task network of the same
architecture would. ``mtl-train method=stl method.task=<name>`` names the task; ``mtl.build``
turns the name into its index, the ``task`` this class takes. Cost: one backward pass.
"""

from __future__ import annotations

from mtl.methods.base import register
from mtl.methods.linear import LinearScalarization


@register("stl")
class SingleTask(LinearScalarization):
    """Weight 1 on the task at index ``task``, 0 on the others."""

    def __init__(self, num_tasks: int, task: int) -> None:
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"method.task must be a task index (mtl.build resolves task names), got {task!r}")
        if not 0 <= task < num_tasks:
            raise ValueError(f"method.task must be a task index in [0, {num_tasks}), got {task}")
        super().__init__(num_tasks, weights=[float(index == task) for index in range(num_tasks)])
        self.task = task
