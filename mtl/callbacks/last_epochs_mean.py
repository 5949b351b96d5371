"""The validation metrics averaged over the last epochs of training, as the dense benchmarks report.

MTAN, CAGrad, Nash-MTL and FAMO evaluate NYUv2 and CityScapes on the held-out split after every
epoch and report the mean of the last 10 epochs' metrics (Navon et al. 2022, arXiv:2202.01017,
Section 6.2), which smooths the noise of one epoch without selecting on the evaluated split.
``LastEpochsMean`` keeps each of the last ``epochs`` validation epochs' metrics (``val/<task>/<metric>``)
and their mean; ``mtl.train`` writes it to ``results.json`` as ``last_epochs`` (with its Δm% when
the config has baselines). The kept epochs travel in checkpoints, so a resumed run averages the
epochs of a run that was never interrupted. It changes nothing in training.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytorch_lightning as pl


class LastEpochsMean(pl.Callback):
    """The mean of every validation metric over the last ``epochs`` validation epochs."""

    def __init__(self, epochs: int = 10) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        self.epochs = epochs
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        self.history = [*self.history, metrics][-self.epochs :]

    def mean(self) -> dict[str, float]:
        """``{"val/<task>/<metric>": mean}`` over the kept epochs that logged the metric."""
        keys = {key for epoch in self.history for key in epoch}
        return {key: statistics.fmean(epoch[key] for epoch in self.history if key in epoch) for key in sorted(keys)}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])[-self.epochs :]
