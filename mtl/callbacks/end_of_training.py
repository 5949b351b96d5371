"""What the end-of-training diagnostics share (``ExpertUtilization``, ``AttentionMasks``): a model
method they need, checked when fitting starts, and a pass over the first validation batches in
eval mode after the last step, whose summary each saves into a directory."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mtl.tasks import model_input


class EndOfTrainingSummary(pl.Callback):
    """Checks at the start that the model has ``requires(x)`` (``examples`` names models that do);
    at the end of training, on rank zero, saves ``self.summarize(...)`` of up to ``batches``
    validation batches into ``dirpath`` (default: the trainer's ``default_root_dir``) through
    ``self.save``. It changes nothing in training: it runs after the last step."""

    requires: str
    examples: str

    def __init__(self, batches: int = 20, dirpath: str | None = None) -> None:
        if batches < 1:
            raise ValueError(f"batches must be at least 1, got {batches}")
        self.batches = batches
        self.dirpath = dirpath

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not callable(getattr(getattr(pl_module, "model", None), self.requires, None)):
            model = type(getattr(pl_module, "model", pl_module)).__name__
            raise TypeError(f"{type(self).__name__} needs a model with {self.requires}(x), such as {self.examples}; {model} has none")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        loaders = trainer.datamodule.val_dataloader()
        # a batch-per-task data module evaluates each task from a loader of its own
        batches = itertools.chain.from_iterable(loaders) if isinstance(loaders, (list, tuple)) else loaders
        summary = self.measure(pl_module.model, batches, pl_module.device)
        directory = Path(self.dirpath or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.save(summary, directory)

    def measure(self, model: torch.nn.Module, batches: Iterable, device: torch.device) -> Any:
        """``self.summarize`` of the model's first ``self.batches`` validation inputs, in eval mode
        and without gradients; the model is left in the mode it was in."""
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.summarize(model, self.first_inputs(batches, device))
        finally:
            model.train(training)

    def first_inputs(self, batches: Iterable, device: torch.device) -> Iterator[torch.Tensor]:
        """The inputs of the first ``self.batches`` of ``batches``; of a batch per task, every task's."""
        for batch in itertools.islice(batches, self.batches):
            inputs = model_input(batch)
            for tensor in inputs.values() if isinstance(inputs, dict) else [inputs]:
                yield tensor.to(device)

    def summarize(self, model: torch.nn.Module, inputs: Iterator[torch.Tensor]) -> Any:
        """What the callback measures on ``inputs``."""
        raise NotImplementedError

    def save(self, summary: Any, directory: Path) -> None:
        """Write ``summary`` into ``directory``."""
        raise NotImplementedError
