"""The LightningModule that runs the multi-task training step under Lightning.

The step itself, a plain object that a reader (or a test, or a benchmark) can run without a
Trainer, is ``mtl.engine.step.MultiTaskStep``; this module owns what Lightning adds around it: the
optimizer and scheduler, gradient clipping, metrics and logs, checkpoints, and the strategy.
Optimization is manual (``automatic_optimization = False``) so that gradient aggregation and
sharpness-aware steps can take over the backward pass inside this one ``training_step``::

    optimizer.zero_grad()
    losses = step(batch, learning_rate)         # every .grad, the clean pass recorded
    clip the gradients (gradient_clip_val)
    optimizer.step()
    step.after_update(batch)                    # FAMO's losses at the new weights

A step with a non-finite task loss, task gradient or update never reaches ``optimizer.step()``:
``nonfinite`` (``mtl.engine.nonfinite.NonFinitePolicy``) stops the run or skips the step.

Epoch metrics and mean losses are torchmetrics states, synchronized across processes when they are
computed.

Randomness is a function of ``(seed, epoch)``: the global torch generator is reseeded at the start
of every training epoch (dropout) and the data modules shuffle by ``(seed, epoch)``, so a run
resumed from an end-of-epoch checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric

from mtl.engine.checks import check_clipping, check_strategy
from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.nonfinite import NonFinitePolicy, NonFiniteStep
from mtl.engine.step import MultiTaskStep
from mtl.methods.base import Method
from mtl.metrics.delta_m import Scores, check_baselines, delta_m
from mtl.sam.base import Sharpness
from mtl.tasks import Task, batch_size, batch_tasks, predict, stack_losses, task_batch

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

STAGES = ("train", "val", "test")

# The epoch values this module logs come from torchmetrics, already synchronized across processes;
# Lightning cannot tell and recommends sync_dist=True for them (see MultiTaskModule._log_metrics).
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/", category=PossibleUserWarning)
MEAN = "mean"
"""Pseudo-task name under which the mean over tasks of every loss and metric is logged."""


class MultiTaskModule(pl.LightningModule):
    """Trains ``model`` on ``tasks`` with ``method``; logs ``{stage}/{task}/{metric}`` and ``{stage}/mean/{metric}``.

    ``jacobian``, ``sam``, ``sync`` and ``sam_sync`` are the step's (``MultiTaskStep``: its
    ``engine``, ``sharpness``, ``sync`` and ``sam_sync``). ``optimizer`` and ``scheduler`` are
    factories (Hydra partials) taking the parameters and the optimizer; the scheduler is stepped
    once per epoch, a ``ReduceLROnPlateau`` on the epoch's value of ``scheduler_monitor``. With
    single-task ``baselines`` every validation and test epoch also logs its Δm%,
    ``{stage}/delta_m``, which a checkpoint or a plateau scheduler can follow. ``gradient_clip_val`` clips the final update (after aggregation and any
    sharpness-aware step) before the optimizer step, by its norm over all parameters or by value
    (``gradient_clip_algorithm``); Lightning's own clipping is unavailable under manual
    optimization. ``nonfinite`` says what a non-finite step does (raise or skip).
    ``config`` is the run's resolved configuration: it is sent to the loggers and
    stored in every checkpoint, so ``mtl-eval`` can rebuild the run from a checkpoint alone.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        method: Method,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        sam: Sharpness | None = None,
        seed: int = 0,
        config: Mapping[str, Any] | None = None,
        jacobian: JacobianEngine | None = None,
        sync: GradientSync | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        sam_sync: str = "global",
        scheduler_monitor: str | None = None,
        baselines: Scores | None = None,
        nonfinite: NonFinitePolicy | None = None,
    ) -> None:
        super().__init__()
        self.step = MultiTaskStep(
            model, tasks, method, jacobian, sam, sync, sam_sync, backward=self.manual_backward, record=functools.partial(self._record, "train", tasks)
        )
        check_clipping(gradient_clip_val, gradient_clip_algorithm)
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.automatic_optimization = False
        self.nonfinite = nonfinite or NonFinitePolicy()
        self.model = model
        self.tasks = list(tasks)
        self.method = method
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.higher_is_better = {task.name: task.higher_is_better() for task in self.tasks}
        if baselines is not None:
            check_baselines(baselines, self.higher_is_better)
        self.baselines = baselines
        self.seed = seed
        self.save_hyperparameters({"config": dict(config or {})})
        self.train_metrics, self.val_metrics, self.test_metrics = (
            nn.ModuleDict({task.name: task.metrics() for task in self.tasks}) for _ in STAGES
        )
        # nan_strategy="disable": no NaN check, which would sync with the device at every step; a
        # NaN loss then shows in the epoch mean instead of being dropped from it
        self.train_losses, self.val_losses, self.test_losses = (
            nn.ModuleDict({task.name: MeanMetric(nan_strategy="disable") for task in self.tasks}) for _ in STAGES
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["task_groups"] = self.step.engine.groups.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "task_groups" in checkpoint:
            self.step.engine.groups.load_state_dict(checkpoint["task_groups"])

    def setup(self, stage: str) -> None:
        step = self.step
        check_strategy(self.trainer.strategy, step.method, step.sharpness, step.engine, step.sync)
        if self.nonfinite.action == "skip" and self.trainer.world_size > 1:
            # each process checks its own losses: one would skip while the others wait for it
            raise ValueError(f"nonfinite=skip runs on one process (this run has {self.trainer.world_size}): the processes do not yet agree on a skip; use nonfinite=raise")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, ReduceLROnPlateau) and self.scheduler_monitor is None:
            raise ValueError("a ReduceLROnPlateau scheduler steps on a metric: set scheduler_monitor, e.g. scheduler_monitor=val/mean/loss")
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        learning_rate = optimizer.param_groups[0]["lr"]
        try:
            losses = self.step(batch, learning_rate)
        except NonFiniteStep as error:
            self.nonfinite.on_nonfinite(error, f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}, learning rate {learning_rate:g})")
            optimizer.zero_grad(set_to_none=True)  # the method's parameters are the optimizer's too
            self.log("train/nonfinite_skips", float(self.nonfinite.skipped), on_step=True, on_epoch=False)
            return None
        self.nonfinite.on_finite()
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm)
        optimizer.step()
        self.step.after_update(batch)
        return losses

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch)

    def on_train_epoch_start(self) -> None:
        seed = np.random.SeedSequence([self.seed, self.current_epoch, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(self._monitored(self.scheduler_monitor))
        elif scheduler is not None:
            scheduler.step()

    def _monitored(self, name: str | None) -> Tensor:
        """The value of the epoch's metric ``name`` (this epoch's validation ran before the end of
        its training epoch), or an error naming the metrics there are."""
        metrics = self.trainer.callback_metrics
        if name not in metrics:
            raise KeyError(f"scheduler_monitor={name} is not a metric of this run; its metrics are {sorted(metrics)}")
        return metrics[name]

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _evaluate(self, stage: str, batch: Mapping[str, Tensor]) -> None:
        """Update the stage's metrics and mean losses with ``batch`` (of the tasks it holds: one
        task's, in an evaluation batch of a batch-per-task data module)."""
        tasks = batch_tasks(self.tasks, batch)
        predictions = predict(self.model, tasks, batch)
        self._record(stage, tasks, predictions, batch, stack_losses(tasks, predictions, batch))

    def _record(self, stage: str, tasks: Sequence[Task], predictions: Mapping[str, Tensor], batch: Mapping[str, Tensor], losses: Tensor) -> None:
        """Update the stage's metrics and mean losses of ``tasks`` with their ``predictions`` and
        ``losses (K,)`` (the training loss of the step is logged at once, for the progress bar)."""
        for task, loss in zip(tasks, losses.detach()):
            own = task_batch(batch, task)
            self._metrics(stage)[task.name].update(predictions[task.name].detach(), task.target_of(own))
            # the loss once per sample: under nan_strategy="disable" MeanMetric drops the weight
            # argument (torchmetrics#3434), which would weigh a short last batch as a full one
            self._losses(stage)[task.name].update(loss.expand(batch_size(own)))
        if stage == "train":
            self.log(f"train/{MEAN}/loss_step", losses.detach().mean(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size(batch))

    def _metrics(self, stage: str) -> nn.ModuleDict:
        return getattr(self, f"{stage}_metrics")

    def _losses(self, stage: str) -> nn.ModuleDict:
        return getattr(self, f"{stage}_losses")

    def _log_metrics(self, stage: str) -> None:
        """Log every task's epoch metrics and mean loss, and their mean over the tasks that have
        them, then reset. torchmetrics synchronizes the values across processes, in the same hook
        on every process (Lightning's ``sync_dist`` would do it lazily, when the rank-0 progress bar
        reads a value, and deadlock against a collective of the other ranks)."""
        per_task: dict[str, Tensor] = {}
        by_name: dict[str, list[Tensor]] = {}
        for task in self.tasks:
            metrics, loss = self._metrics(stage)[task.name], self._losses(stage)[task.name]
            for name, value in {**metrics.compute(), "loss": loss.compute()}.items():
                per_task[f"{stage}/{task.name}/{name}"] = value
                by_name.setdefault(name, []).append(value)
            metrics.reset()
            loss.reset()
        self.log_dict(per_task)
        self.log_dict({f"{stage}/{MEAN}/{name}": torch.stack(vals).mean() for name, vals in by_name.items()}, prog_bar=True)
        if self.baselines is not None and stage != "train":
            scores = {task: {name: float(per_task[f"{stage}/{task}/{name}"]) for name in directions} for task, directions in self.higher_is_better.items()}
            self.log(f"{stage}/delta_m", delta_m(scores, self.baselines, self.higher_is_better), prog_bar=True)

