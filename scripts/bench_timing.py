"""Step timing for the benchmark scripts (a helper module, not a script).

``interleaved_rounds`` times callables: every variant runs once per round, in turn, so that all of
them share the machine's drift alike; separate processes or one variant after the other do not
(the 2-core machines are shared and noisy). The record of a comparison is the ratio of medians
measured this way. ``StepTimer`` and ``timing_trainer`` time the training steps of a Lightning run
(a trainer that does nothing but train: no logger, checkpoints, progress bar, summary or validation).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from rich.progress import track

CPU = torch.device("cpu")


def interleaved_rounds(
    runs: dict[str, Callable[[], object]], warmup: int, rounds: int, device: torch.device = CPU, description: str | None = None
) -> dict[str, list[float]]:
    """Seconds of every variant's run in each of ``rounds`` rounds after ``warmup`` untimed ones.
    On CUDA each run is timed from an idle device until the device has finished it. With a
    ``description``, a progress bar over the rounds."""
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timings: dict[str, list[float]] = {name: [] for name in runs}
    indices = range(warmup + rounds)
    for round_index in indices if description is None else track(indices, description=description):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            if round_index >= warmup:
                timings[name].append(time.perf_counter() - start)
    return timings


class StepTimer(pl.Callback):
    """Seconds of every training step, a CUDA device synchronized at both ends."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds: list[float] = []

    def _synchronize(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._synchronize()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._synchronize()
        self.seconds.append(time.perf_counter() - self.started)


def timing_trainer(timer: StepTimer, max_steps: int, **options) -> pl.Trainer:
    """A trainer for ``max_steps`` steps timed by ``timer``; ``options`` go to ``pl.Trainer``
    (accelerator, devices, strategy)."""
    return pl.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **options,
    )
