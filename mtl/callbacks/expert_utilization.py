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
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import torch
from torch import Tensor

from mtl.callbacks.end_of_training import EndOfTrainingSummary

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


class ExpertUtilization(EndOfTrainingSummary):
    """The mean gate weights per task and expert over ``batches`` validation batches, saved into
    ``dirpath`` (default: the trainer's ``default_root_dir``) at the end of training."""

    requires = "gate_weights"
    examples = "model=mmoe, cgc or ple"

    def summarize(self, model: torch.nn.Module, inputs: Iterator[Tensor]) -> dict[str, Tensor]:
        """``{task: mean gate weights (E,)}`` over ``inputs``."""
        totals: dict[str, Tensor] = {}
        samples = 0
        for batch in inputs:
            for name, weights in model.gate_weights(batch).items():
                totals[name] = totals.get(name, 0) + weights.sum(dim=0).double().cpu()
            samples += len(batch)
        return {name: total / samples for name, total in totals.items()}

    def save(self, utilization: dict[str, Tensor], directory: Path) -> None:
        (directory / "expert_utilization.json").write_text(json.dumps({name: weights.tolist() for name, weights in utilization.items()}) + "\n")
        plot_utilization(utilization, directory / "expert_utilization.png")


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
