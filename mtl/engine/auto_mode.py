"""``jacobian.mode=auto``: the mode, ``batched`` or ``loop``, that makes the whole gradient step
faster, chosen by timing a few steps of each (``ModeTrial``) and logged at INFO by the engine."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl.engine.modes import Backpropagated, BatchedRows, Buffer, LoopRows
from mtl.methods.base import GradientAggregator

TRIAL_STEPS = 3


class ModeTrial:
    """``jacobian.mode=auto``'s decision: each exact mode in turn runs a warm-up step (buffers
    allocated, caches filled; not counted) and ``steps`` timed ones. The mode with the best timed
    step is the choice. ``batched`` goes first, so that an op without a batching rule shows on the
    first step. One mode after the other, not alternating: ``loop``'s ``(K, P)`` buffer, which
    ``batched`` does not fill for a Gramian weighting, is then not held during ``batched``'s steps,
    and the trial's peak memory is the larger of the two modes', not their sum."""

    def __init__(self, modes: Sequence[str] = ("batched", "loop"), steps: int = TRIAL_STEPS) -> None:
        self.timings: dict[str, list[float]] = {mode: [] for mode in modes}
        self.steps = steps

    @property
    def mode(self) -> str:
        """The mode whose turn it is: the first that has not had all its steps."""
        return next((mode for mode, timings in self.timings.items() if len(timings) <= self.steps), list(self.timings)[-1])

    def record(self, mode: str, seconds: float) -> str | None:
        """Count a step of ``mode``; returns the choice once every mode has had all its steps."""
        self.timings[mode].append(seconds)
        if any(len(timings) <= self.steps for timings in self.timings.values()):
            return None
        return min(self.timings, key=self.best)

    def restart(self, mode: str) -> None:
        """Count ``mode``'s steps from nothing again, its next one a warm-up: the engine has
        changed how it runs the mode."""
        self.timings[mode] = []

    def best(self, mode: str) -> float:
        """The best timed step of ``mode`` (its warm-up left out)."""
        return min(self.timings[mode][1:])

    def summary(self) -> str:
        return ", ".join(f"{mode} {self.best(mode) * 1e3:.2f} ms" for mode in self.timings) + " per gradient step"


class AutoMode:
    """``jacobian.mode=auto`` (the default): ``batched`` or ``loop``, whichever makes the whole
    gradient step faster. The first ``1 + TRIAL_STEPS`` steps run ``batched``, the next as many
    ``loop`` (``ModeTrial``); the choice is made once. A step in which ``batched`` ran out of memory
    and halved its chunk starts ``batched``'s steps again; after a choice of ``batched``, the whole
    trial. The step is timed, not the Jacobian alone, since a mode's memory traffic also slows what
    follows it (the method's Gramian, the write into ``.grad``)."""

    exact = True

    def __init__(self, chunk: int | None = None) -> None:
        self.modes = {"batched": BatchedRows(chunk, out_of_memory_falls_back=True), "loop": LoopRows()}
        self.trial = ModeTrial(tuple(self.modes))
        self.chosen: LoopRows | None = None

    @property
    def name(self) -> str:
        """``auto`` during the trial, then the name of the choice."""
        return "auto" if self.chosen is None else self.chosen.name

    @property
    def running(self) -> LoopRows:
        """The mode that runs the step: the choice, or the mode on trial."""
        return self.chosen or self.modes[self.trial.mode]

    @property
    def stacks_rows(self) -> bool:
        return self.running.stacks_rows

    @property
    def chunk(self) -> int | None:
        return self.modes["batched"].chunk

    def fill_jacobians(self, buffer: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None = None) -> None:
        self.running.fill_jacobians(buffer, backpropagated, shared, averaging)

    def direction(
        self, method: GradientAggregator, losses: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None, buffer: Buffer
    ) -> list[Tensor]:
        return self.running.direction(method, losses, backpropagated, shared, averaging, buffer)

    def fall_back(self) -> LoopRows:
        """``loop``, for the rest of the run."""
        return self.modes["loop"]

    @contextlib.contextmanager
    def timed(self, device_of: Tensor) -> Iterator[None]:
        """Times the gradient step it wraps as a step of the mode on trial (waiting for the device
        to finish) and chooses once the trial is complete; after a choice it only watches
        ``batched``'s chunk. The engine drops this mode when ``batched`` fell back to ``loop``."""
        chunk = self.chunk
        if self.chosen is not None:
            yield
            if self.chosen is self.modes["batched"] and self.chunk != chunk:  # it ran out of memory: time it again
                self.chosen, self.trial = None, ModeTrial(tuple(self.modes))
            return
        mode = self.trial.mode
        synchronize(device_of)
        start = time.perf_counter()
        yield
        synchronize(device_of)
        if self.chunk != chunk:  # batched ran out of memory, and its later steps run in chunks
            self.trial.restart(mode)
            return
        choice = self.trial.record(mode, time.perf_counter() - start)
        if choice is not None:
            self.chosen = self.modes[choice]


def synchronize(device_of: Tensor) -> None:
    """Wait for the device of ``device_of`` to finish its queued work (nothing to wait for on the CPU)."""
    if device_of.is_cuda:
        torch.cuda.synchronize(device_of.device)
