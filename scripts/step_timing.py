"""What the step-time benchmarks share: a callback timing every training step, and a trainer that
does nothing but train (no logger, checkpoints, progress bar, summary or validation)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


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
