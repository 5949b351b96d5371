"""Gradient conflict between tasks: the pairwise cosine similarity of the task gradients.

Two tasks conflict when their gradients of the shared parameters point against each other,
``cos(g_i, g_j) < 0`` (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning",
arXiv:2001.06782, Definition 1; the quantity PCGrad and GradVac act on). ``GradientConflict``
measures it during training: every ``every_n_steps`` optimizer steps, before the step, it takes the
Jacobian ``G (K, P)`` of the task losses of the current batch with respect to the model's
``shared_parameters()`` and logs ``cos(g_i, g_j)`` for every pair ``i < j`` to every logger as
``gradient_cosine/<task_i>/<task_j>``. At the end of training it saves ``gradient_conflict.png``
(the mean cosine matrix, tasks × tasks, and each pair's cosine over the steps) and the history as
``gradient_conflict.json`` into ``dirpath``.

The measurement does not change training: the forward pass runs in eval mode (no dropout draws
from the random generator, no BatchNorm statistics update) and the gradients are taken with
``torch.autograd.grad``, which leaves every ``.grad`` untouched. The cosines are therefore those of
the deterministic (eval-mode) network on the batch. Cost: one forward and K backward passes per
measurement. Under DDP each process measures its own part of the batch; the loggers record
process 0's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import pytorch_lightning as pl
import torch
from torch import Tensor

from mtl.engine.jacobian import task_jacobian
from mtl.tasks import predict, stack_losses

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


def cosine_similarities(jacobian: Tensor) -> Tensor:
    """``(K, K)`` cosine similarities of the rows of ``jacobian (K, P)``; a zero row has cosine 0
    with every row, itself included (its direction is undefined)."""
    gram = jacobian @ jacobian.T
    norms = gram.diagonal().sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)


class GradientConflict(pl.Callback):
    """Logs the pairwise cosines of the task gradients every ``every_n_steps`` steps; saves the
    heatmap and history into ``dirpath`` (default: the trainer's ``default_root_dir``)."""

    def __init__(self, every_n_steps: int = 50, dirpath: str | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.dirpath = dirpath
        self.steps: list[int] = []
        self.cosines: list[list[list[float]]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if not hasattr(model, "shared_parameters") or not hasattr(pl_module, "tasks"):
            raise TypeError(
                f"GradientConflict needs a module with `tasks` and a `model` with shared_parameters() "
                f"(mtl.engine.MultiTaskModule); got {type(pl_module).__name__}"
            )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        cosines = self.measure(pl_module, batch)
        names = [task.name for task in pl_module.tasks]
        metrics = {
            f"gradient_cosine/{names[i]}/{names[j]}": float(cosines[i, j])
            for i in range(len(names))
            for j in range(i + 1, len(names))
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.steps.append(trainer.global_step)
        self.cosines.append(cosines.tolist())

    @staticmethod
    def measure(pl_module: pl.LightningModule, batch: dict[str, Tensor]) -> Tensor:
        """The ``(K, K)`` cosines of the task gradients of the shared parameters on ``batch``, in
        eval mode; every submodule's training flag is restored afterwards."""
        model = pl_module.model
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.enable_grad():
                losses = stack_losses(pl_module.tasks, predict(model, pl_module.tasks, batch), batch)
                jacobian = task_jacobian(losses, [p for p in model.shared_parameters() if p.requires_grad])
        finally:
            for module, training in modes.items():
                module.training = training
        return cosine_similarities(jacobian.detach().double()).cpu()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.steps or not trainer.is_global_zero:
            return
        directory = Path(self.dirpath or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        names = [task.name for task in pl_module.tasks]
        history = {"tasks": names, "steps": self.steps, "cosines": self.cosines}
        (directory / "gradient_conflict.json").write_text(json.dumps(history) + "\n")
        plot_heatmaps(names, self.steps, torch.tensor(self.cosines), directory / "gradient_conflict.png")

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "cosines": self.cosines}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.cosines = list(state_dict["steps"]), list(state_dict["cosines"])


def plot_heatmaps(names: list[str], steps: list[int], cosines: Tensor, path: Path) -> None:
    """Left: the mean over steps of the ``(K, K)`` cosines; right: each pair's cosine over the steps."""
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    figure, (matrix_axes, steps_axes) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 1.6]}, layout="constrained")
    mean = cosines.mean(0)
    image = matrix_axes.imshow(mean, cmap="RdBu", vmin=-1, vmax=1)
    matrix_axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    matrix_axes.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if abs(mean[i, j]) > 0.5 else "black"
            matrix_axes.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    matrix_axes.set_title(f"mean gradient cosine over {len(steps)} steps")
    if pairs:
        over_steps = torch.stack([cosines[:, i, j] for i, j in pairs])
        steps_axes.imshow(over_steps, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ticks = sorted({0, len(steps) // 2, len(steps) - 1})
        steps_axes.set_xticks(ticks, [str(steps[index]) for index in ticks])
        steps_axes.set_yticks(range(len(pairs)), [f"{names[i]} / {names[j]}" for i, j in pairs])
    steps_axes.set_xlabel("step")
    steps_axes.set_title("gradient cosine per task pair")
    figure.colorbar(image, ax=[matrix_axes, steps_axes], shrink=0.8)
    figure.savefig(path, dpi=150)
    plt.close(figure)
