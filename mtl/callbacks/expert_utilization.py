"""Expert utilization: how much weight each task's gate gives each expert, at the end of training.

For the mixture-of-experts architectures (``mtl.models.MMoE``; ``mtl.models.PLE`` and CGC, whose
last layer's gates mix a task's own experts and the shared ones), ``model.gate_weights(x)`` gives
every task's gate weights ``(B, E)``. At the end of training ``ExpertUtilization`` averages them
over (up to ``batches``) validation batches, in eval mode and without gradients, and saves the
``tasks × experts`` matrix as ``expert_utilization.png`` and ``expert_utilization.json`` into
``dirpath``. A task whose weight sits on one expert has specialized it; equal rows mean the gates
do not tell the tasks apart (Ma et al. 2018, Section 4.4, read the same quantity). It changes
nothing in training: it runs after the last step.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytorch_lightning as pl
import torch
from torch import Tensor

from mtl.tasks import model_input

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


class ExpertUtilization(pl.Callback):
    """The mean gate weights per task and expert over ``batches`` validation batches, saved into
    ``dirpath`` (default: the trainer's ``default_root_dir``) at the end of training."""

    def __init__(self, batches: int = 20, dirpath: str | None = None) -> None:
        if batches < 1:
            raise ValueError(f"batches must be at least 1, got {batches}")
        self.batches = batches
        self.dirpath = dirpath

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not callable(getattr(getattr(pl_module, "model", None), "gate_weights", None)):
            model = type(getattr(pl_module, "model", pl_module)).__name__
            raise TypeError(f"ExpertUtilization needs a model with gate_weights(x), such as model=mmoe, cgc or ple; {model} has none")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        utilization = self.measure(pl_module.model, trainer.datamodule.val_dataloader(), pl_module.device)
        directory = Path(self.dirpath or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "expert_utilization.json").write_text(json.dumps({name: weights.tolist() for name, weights in utilization.items()}) + "\n")
        plot_utilization(utilization, directory / "expert_utilization.png")

    def measure(self, model: torch.nn.Module, batches, device: torch.device) -> dict[str, Tensor]:
        """``{task: mean gate weights (E,)}`` over the first ``self.batches`` batches, in eval mode."""
        training = model.training
        model.eval()
        totals: dict[str, Tensor] = {}
        samples = 0
        try:
            with torch.no_grad():
                for index, batch in enumerate(batches):
                    if index == self.batches:
                        break
                    inputs = model_input(batch).to(device)
                    for name, weights in model.gate_weights(inputs).items():
                        totals[name] = totals.get(name, 0) + weights.sum(dim=0).double().cpu()
                    samples += len(inputs)
        finally:
            model.train(training)
        return {name: total / samples for name, total in totals.items()}


def plot_utilization(utilization: dict[str, Tensor], path: Path) -> None:
    """A heatmap of the mean gate weight of every task (rows) on every expert (columns)."""
    names = list(utilization)
    matrix = torch.stack([utilization[name] for name in names])
    figure, axes = plt.subplots(figsize=(1.2 + 0.6 * matrix.shape[1], 1.2 + 0.5 * len(names)), layout="constrained")
    image = axes.imshow(matrix, cmap="viridis", vmin=0, vmax=float(matrix.max()))
    axes.set_xticks(range(matrix.shape[1]), [str(index) for index in range(matrix.shape[1])])
    axes.set_yticks(range(len(names)), names)
    for row in range(len(names)):
        for column in range(matrix.shape[1]):
            axes.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=7, color="white" if matrix[row, column] < 0.6 * matrix.max() else "black")
    axes.set_xlabel("expert")
    axes.set_title("mean gate weight per task", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.savefig(path, dpi=150)
    plt.close(figure)
