"""Reference losses measured after a warm-up: the mean training loss of each task over one period.

STCH and IGB normalize each task's loss by what it was early in training: the methods warm up for
``warmup_periods`` periods of ``period_steps`` training steps each, measure the mean of every
task's loss over the next period, and use it from then on. The official codes' periods are epochs;
a loss weighting sees steps only, so set ``period_steps`` to the batches per epoch to reproduce
their schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReferenceLosses(nn.Module):
    """The mean losses of period ``warmup_periods`` (counting from 0), in float64 buffers that travel in the method's state."""

    def __init__(self, num_tasks: int, warmup_periods: int, period_steps: int, method: str) -> None:
        super().__init__()
        if warmup_periods < 0 or period_steps < 1:
            raise ValueError(f"{method} needs warmup_periods >= 0 and period_steps >= 1, got {warmup_periods} and {period_steps}")
        self.period_steps = period_steps
        self.measure_start = warmup_periods * period_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("measured_total", torch.zeros(num_tasks, dtype=torch.float64))

    @property
    def measured(self) -> bool:
        """Whether the measuring period is over."""
        return bool(self.steps >= self.measure_start + self.period_steps)

    def record(self, losses: Tensor) -> None:
        """Count one warm-up step, adding its losses to the total in the measuring period."""
        if self.steps >= self.measure_start:
            self.measured_total += losses.detach().double()
        self.steps += 1

    def mean(self) -> Tensor:
        """The measured mean losses ``(K,)``, float64."""
        return self.measured_total / self.period_steps
