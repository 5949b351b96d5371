"""The LightningModule that owns the multi-task training step.

One step, written out so a reader can follow it end to end::

    predictions = model(batch["input"])                    # {task: output}
    losses      = [task.loss(...) for task]                 # L (K,)
    # a loss weighting:
    backward(method.objective(losses))                      # sum(w * L), w = method(L)
    # a gradient aggregator:
    G = jacobian(losses, shared parameters)                 # (K, P), by the Jacobian engine
    shared.grad = method(G, losses)                         # d (P,)
    head_k.grad = gradient of L_k                           # each head follows its own task
    optimizer.step()

With ``sam`` set, the gradient computation above runs at the weights ``w`` and again at perturbed
weights (``mtl.sam``); only the pass at ``w`` moves BatchNorm statistics, method state, metrics
and logs.

Optimization is manual (``automatic_optimization = False``) so that gradient aggregation and
sharpness-aware steps can take over the backward pass inside this one ``training_step``.

Under DDP, gradient aggregators compute their gradients with ``torch.autograd.grad``, which fires
none of DDP's hooks, and share them as ``distributed.sync`` says (``mtl.engine.distributed``):
by default every process then takes the single-process step on the global batch. Epoch metrics
and mean losses are torchmetrics states, synchronized across processes when they are computed.

Randomness is a function of ``(seed, epoch)``: the global torch generator is reseeded at the start
of every training epoch (dropout) and the data modules shuffle by ``(seed, epoch)``, so a run
resumed from an end-of-epoch checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric

from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian import set_gradient, task_jacobian
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.methods.base import GradientAggregator, LossWeighting, Method
from mtl.sam.base import Aggregate, RandomState, Sharpness, TaskLosses, TaskPerturbation, WeightPerturbation
from mtl.tasks import INPUT_KEY, Task, stack_losses, task_losses

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

STAGES = ("train", "val", "test")
CLIP_ALGORITHMS = ("norm", "value")
SAM_SYNCS = ("global", "local")

# The epoch values this module logs come from torchmetrics, already synchronized across processes;
# Lightning cannot tell and recommends sync_dist=True for them (see MultiTaskModule._log_metrics).
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/", category=PossibleUserWarning)
MEAN = "mean"
"""Pseudo-task name under which the mean over tasks of every loss and metric is logged."""


class MultiTaskModule(pl.LightningModule):
    """Trains ``model`` on ``tasks`` with ``method``; logs ``{stage}/{task}/{metric}`` and ``{stage}/mean/{metric}``.

    ``optimizer`` and ``scheduler`` are factories (Hydra partials) taking the parameters and the
    optimizer; the scheduler is stepped once per epoch. ``gradient_clip_val`` clips the final
    update (after aggregation and any sharpness-aware step) before the optimizer step, by its norm
    over all parameters or by value (``gradient_clip_algorithm``); Lightning's own clipping is
    unavailable under manual optimization. ``config`` is the run's resolved
    configuration: it is sent to the loggers and stored in every checkpoint, so ``mtl-eval`` can
    rebuild the run from a checkpoint alone.
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
    ) -> None:
        super().__init__()
        if not isinstance(method, (LossWeighting, GradientAggregator)):
            raise TypeError(
                f"{type(method).__name__} is neither a mtl.methods.LossWeighting nor a mtl.methods.GradientAggregator"
            )
        if isinstance(method, GradientAggregator) and not hasattr(model, "shared_parameters"):
            raise TypeError(
                f"{type(method).__name__} aggregates gradients of the shared parameters, but "
                f"{type(model).__name__} has no shared_parameters(); use a loss weighting or a MultiTaskModel"
            )
        self.jacobian = jacobian or JacobianEngine()
        check_task_groups(self.jacobian, [task.name for task in tasks], method, sam)
        self.sync = sync or GradientSync()
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be positive or null, got {gradient_clip_val}")
        if gradient_clip_algorithm not in CLIP_ALGORITHMS:
            raise ValueError(f"unknown gradient_clip_algorithm '{gradient_clip_algorithm}'; valid choices: {list(CLIP_ALGORITHMS)}")
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        if isinstance(method, GradientAggregator):
            self.jacobian.check(model, method)
        check_sharpness(sam, model, method, sam_sync)
        self.sam_sync = sam_sync
        self.automatic_optimization = False
        self.sam = sam
        self._recording = True
        self.model = model
        self.tasks = list(tasks)
        self.method = method
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
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
        checkpoint["task_groups"] = self.jacobian.groups.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "task_groups" in checkpoint:
            self.jacobian.groups.load_state_dict(checkpoint["task_groups"])

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy, self.method, self.sam, self.jacobian, self.sync)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if self.sam is None:
            losses = self._write_gradients(batch)
        else:
            losses = self._write_sharpness_aware_gradients(batch, optimizer.param_groups[0]["lr"])
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm)
        optimizer.step()
        if "losses_after_step" in self.method.requires:
            with torch.no_grad():
                losses_after_step = stack_losses(self.tasks, self.model(model_input(batch)), batch)
                self.method.update(self._global(losses_after_step, batch))
        return losses

    def _write_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Write the method's update into the ``.grad`` of every trained parameter (which must be
        empty); returns the task losses ``(K,)``."""
        if isinstance(self.method, LossWeighting):
            losses = self._train_losses(batch)
            norms = self._last_shared_layer_gradient_norms(losses, batch)
            self.manual_backward(self.method.objective(self._global(losses, batch), norms))
            return losses
        return self._aggregate_gradients(batch)

    def _train_losses(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The task losses ``(K,)`` of a training batch, recorded (metrics, logs) except in a perturbed pass."""
        if self._recording:
            return self._evaluate("train", batch)
        return stack_losses(self.tasks, self.model(model_input(batch)), batch)

    def _write_sharpness_aware_gradients(self, batch: Mapping[str, Tensor], learning_rate: float) -> Tensor:
        """``self.sam`` around the step: the clean pass at ``w`` is recorded, the perturbed passes
        are not, and running state (BatchNorm statistics, the method's state) moves with the clean
        pass only. Returns the clean losses."""
        if isinstance(self.sam, TaskPerturbation):
            return self._write_flat_gradients(batch)
        return self.sam.step(
            clean=lambda: self._write_gradients(batch) if self.sam_sync == "global" else self._write_own_gradients(batch),
            perturbed=lambda: self._unrecorded(lambda: self._rewrite_gradients(batch)),
            parameters=trained(self.model.parameters()),
            learning_rate=learning_rate,
        )

    def _write_own_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``_write_gradients`` from this process's own batch alone (``sam.sync=local``): sharing is
        paused, and a loss weighting's gradient is taken with ``torch.autograd.grad``, which DDP's
        reduction does not see."""
        with self.sync.paused():
            if isinstance(self.method, GradientAggregator):
                return self._write_gradients(batch)
            losses = self._train_losses(batch)
            objective = self.method.objective(losses, self._last_shared_layer_gradient_norms(losses, batch))
            parameters = trained(self.parameters())
            for parameter, gradient in zip(parameters, torch.autograd.grad(objective, parameters, allow_unused=True)):
                parameter.grad = gradient
            return losses

    def _rewrite_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``_write_gradients`` again, every ``.grad`` emptied first (the method's parameters' too)."""
        for parameter in self.parameters():
            parameter.grad = None
        return self._write_gradients(batch)

    def _write_flat_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """F-MTL: the clean pass here, the per-task perturbed passes in ``self.sam`` (which evaluates
        the model functionally, at copies of its weights and buffers, unrecorded); the shared
        parameters take its direction and each head its own perturbed gradient (times the task's
        weight under a loss weighting, as in the plain step).

        With several processes, ``exact`` sync averages the clean and the perturbed task gradients
        over the processes (so every perturbation is the single-process one); ``local`` averages
        the final gradients."""
        randomness = RandomState.capture(model_input(batch).device)  # the perturbed passes replay the clean pass's draws
        predictions = self.model(model_input(batch))
        separate = task_losses(self.tasks, predictions, batch)
        losses = torch.stack(separate)
        self._record("train", predictions, batch, losses)
        size = len(model_input(batch))
        global_losses = self._global(losses, batch)
        # each task's own loss (its gradient runs its own head alone), with the global value
        global_separate = [loss + (value - loss).detach() for loss, value in zip(separate, global_losses.detach())]
        shared = trained(self.model.shared_parameters())
        heads = [trained(self.model.task_parameters(task.name)) for task in self.tasks]
        aggregate, head_weights = self._task_combination(global_losses, batch)

        def share(gradients: Sequence[Tensor]) -> list[Tensor]:
            return self.sync.average(gradients, size) if self.sync.exact else list(gradients)

        losses_at = TaskLosses(self.model, model_input(batch), lambda outputs: task_losses(self.tasks, outputs, batch), randomness)
        direction, head_gradients = self.sam.step(global_separate, losses_at, shared, heads, aggregate, share)
        set_gradient(shared, direction)
        for weight, head, gradients in zip(head_weights, heads, head_gradients):
            for parameter, gradient in zip(head, gradients):
                parameter.grad = weight.to(gradient.dtype) * gradient
        if not self.sync.exact:
            self._average_gradients(size)
        return losses

    def _average_gradients(self, batch_size: int) -> None:
        """Replace every ``.grad`` by its average over the processes, in one all-reduce."""
        parameters = [parameter for parameter in self.parameters() if parameter.grad is not None]
        for parameter, gradient in zip(parameters, self.sync.average([parameter.grad for parameter in parameters], batch_size)):
            parameter.grad = gradient

    def _global(self, values: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """``values`` (losses, gradients) averaged over the processes under ``exact`` sync, with the
        gradient of this process's own; ``values`` otherwise (see ``GradientSync.global_values``)."""
        return self.sync.global_values(values, len(model_input(batch)))

    def _task_combination(self, losses: Tensor, batch: Mapping[str, Tensor]) -> tuple[Aggregate, Tensor]:
        """How F-MTL combines task gradients ``(K, P)``, and the weights ``(K,)`` of the heads'
        gradients: the loss weighting's ``∂objective/∂L_k`` for both; or the aggregator, whose
        state follows its first call of the step (the clean gradients) only, and weights of one."""
        if isinstance(self.method, LossWeighting):
            weights = self._objective_weights(losses, batch)
            return (lambda jacobian, _: weights.to(jacobian.dtype) @ jacobian), weights
        first_call = True

        def aggregate(jacobian: Tensor, task_losses: Tensor) -> Tensor:
            nonlocal first_call
            if first_call:
                first_call = False
                return self.method(jacobian, task_losses)
            return self._unrecorded(lambda: self.method(jacobian, task_losses))

        return aggregate, torch.ones_like(losses.detach())

    def _objective_weights(self, losses: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """``∂objective/∂L_k`` at the step's losses: the weights a loss weighting gives the task
        gradients (its objective may be nonlinear in the losses). The gradients of the method's own
        parameters go into their ``.grad``."""
        leaf = losses.detach().requires_grad_()
        objective = self.method.objective(leaf, self._last_shared_layer_gradient_norms(losses, batch))
        own = trained(self.method.parameters())
        weights, *own_gradients = torch.autograd.grad(objective, [leaf, *own], allow_unused=True)
        for parameter, gradient in zip(own, own_gradients):
            parameter.grad = gradient
        return weights

    def _unrecorded(self, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` without lasting side effects: nothing is logged, the model's buffers
        (BatchNorm running statistics) are swapped for copies that are dropped afterwards (never
        written in place: a graph built by ``compute()`` may still need them), and the method's
        state is restored afterwards."""
        buffers = [(module, name, buffer) for module in self.model.modules() for name, buffer in module.named_buffers(recurse=False)]
        for module, name, buffer in buffers:
            setattr(module, name, buffer.clone())
        method_state = copy.deepcopy(self.method.state_dict())
        self._recording = False
        try:
            return compute()
        finally:
            self._recording = True
            for module, name, buffer in buffers:
                setattr(module, name, buffer)
            self.method.load_state_dict(method_state)

    def _last_shared_layer_gradient_norms(self, losses: Tensor, batch: Mapping[str, Tensor]) -> Tensor | None:
        """``|dL_k/dW|`` for the last shared layer ``W``, for methods that require them (else None)."""
        if "last_shared_layer_gradient_norms" not in self.method.requires:
            return None
        layer = self.model.last_shared_parameters()
        return self._global(task_jacobian(losses, layer), batch).norm(dim=1)

    def _aggregate_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Shared parameters take the method's direction, computed by the Jacobian engine; each head
        the gradient of its own task's loss (averaged over the independent samples of a
        double-sampling method). Returns the losses."""
        samples = self.method.independent_samples
        representations, separate = [], []
        for part in split_batch(batch, samples):
            representation, predictions = self.jacobian.forward(self.model, model_input(part), [task.name for task in self.tasks])
            representations.append(representation)
            separate.append(task_losses(self.tasks, predictions, part))
            if self._recording:
                self._record("train", predictions, part, torch.stack(separate[-1]))
        losses = torch.stack([torch.stack(sample) for sample in separate])
        shared = trained(self.model.shared_parameters())
        heads = trained(parameter for task in self.tasks for parameter in self.model.task_parameters(task.name))
        self.jacobian.write_gradients(self.method, losses, representations, shared, heads, len(model_input(batch)), self.sync, separate)
        return losses.mean(dim=0)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_train_epoch_start(self) -> None:
        seed = np.random.SeedSequence([self.seed, self.current_epoch, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _evaluate(self, stage: str, batch: Mapping[str, Tensor]) -> Tensor:
        """Task losses ``(K,)`` of ``batch``; updates the stage's metrics and logs the losses."""
        return self._score(stage, self.model(model_input(batch)), batch)

    def _score(self, stage: str, predictions: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        """Task losses ``(K,)`` of ``predictions`` for ``batch``, recorded."""
        losses = stack_losses(self.tasks, predictions, batch)
        self._record(stage, predictions, batch, losses)
        return losses

    def _record(self, stage: str, predictions: Mapping[str, Tensor], batch: Mapping[str, Tensor], losses: Tensor) -> None:
        """Update the stage's metrics and mean losses with ``predictions`` and their ``losses (K,)``
        (the training loss of the step is logged at once, for the progress bar)."""
        batch_size = len(batch[INPUT_KEY])
        for task, loss in zip(self.tasks, losses.detach()):
            self._metrics(stage)[task.name].update(predictions[task.name].detach(), task.target_of(batch))
            self._losses(stage)[task.name].update(loss, batch_size)
        if stage == "train":
            self.log(f"train/{MEAN}/loss_step", losses.detach().mean(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

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


def trained(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require a gradient."""
    return [parameter for parameter in parameters if parameter.requires_grad]


def check_sharpness(sam: Sharpness | None, model: nn.Module, method: Method, sam_sync: str = "global") -> None:
    """Refuse, at start-up, a sharpness object of neither kind, what F-MTL cannot run with, and a
    ``sam.sync=local`` that would let the processes' updates differ."""
    if sam_sync not in SAM_SYNCS:
        raise ValueError(f"unknown sam.sync '{sam_sync}'; valid choices: {list(SAM_SYNCS)}")
    if sam_sync == "local" and (isinstance(sam, TaskPerturbation) or getattr(sam, "uses_clean_update", False)):
        raise ValueError(
            f"sam.sync=local perturbs along each process's own gradient, but {type(sam).__name__}'s update also uses the "
            f"clean gradient, which must then be shared anyway; use sam.sync=global, or sam=sam or asam"
        )
    if sam is None or isinstance(sam, WeightPerturbation):
        return
    if not isinstance(sam, TaskPerturbation):
        raise TypeError(f"sam={type(sam).__name__} is neither a mtl.sam.WeightPerturbation nor a mtl.sam.TaskPerturbation")
    if not hasattr(model, "task_parameters") or not hasattr(model, "shared_parameters"):
        raise TypeError(f"{type(sam).__name__} perturbs the shared parameters and each task's head, but {type(model).__name__} has no shared_parameters() and task_parameters()")
    samples = getattr(method, "independent_samples", 1)
    if samples > 1:
        raise ValueError(f"{type(sam).__name__} takes one Jacobian per step, but {type(method).__name__} asks for {samples} independent samples; use sam=sam, asam or gsam")


def check_task_groups(jacobian: JacobianEngine, task_names: Sequence[str], method: Method, sam: Sharpness | None) -> None:
    """Resolve ``jacobian.groups`` and refuse what it cannot apply to: loss weightings (which
    build no Jacobian), F-MTL (which perturbs per task), and a method built for another number of rows."""
    rows = jacobian.bind(task_names)
    if jacobian.groups.spec is None:
        return
    if not isinstance(method, GradientAggregator):
        raise ValueError(f"jacobian.groups groups the rows of the task Jacobian, which the loss weighting {type(method).__name__} never builds; use a gradient aggregator or jacobian.groups=null")
    if isinstance(sam, TaskPerturbation):
        raise ValueError(f"jacobian.groups cannot be used with sam={type(sam).__name__}, which perturbs the weights task by task; use sam=sam, asam, gsam or none")
    if method.num_tasks != rows:
        raise ValueError(f"{type(method).__name__} was built for {method.num_tasks} tasks, but jacobian.groups gives it {rows} rows; build it with num_tasks={rows}")


def check_strategy(strategy: Strategy, method: Method, sam: Sharpness | None, jacobian: JacobianEngine, sync: GradientSync) -> None:
    """Refuse, at start-up, a Lightning strategy that cannot run the method's step: gradient
    aggregators and sharpness-aware steps write ``.grad`` themselves, which only one device or DDP
    (its reduction bypassed by ``distributed.sync``) allows."""
    writes_gradients = isinstance(method, GradientAggregator) or sam is not None
    if writes_gradients and not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        what = type(method).__name__ if sam is None else f"{type(method).__name__} with sam={type(sam).__name__}"
        raise ValueError(
            f"{what} writes the gradients itself, which strategy {type(strategy).__name__} does not support; "
            f"use a single device or trainer=ddp / trainer=ddp_cpu (DDPStrategy), or a loss weighting without sam"
        )
    if jacobian.mode == "rep" and sync.exact and strategy.world_size > 1:
        raise ValueError(
            f"jacobian.mode=rep aggregates gradients of each process's own representation, so it cannot be exact on "
            f"{strategy.world_size} processes; use distributed.sync=local, or jacobian.mode=auto, loop or batched"
        )


def model_input(batch: Mapping[str, Tensor]) -> Tensor:
    """The model input of ``batch``, or an error naming the keys the batch has."""
    if INPUT_KEY not in batch:
        raise KeyError(f"the batch has no '{INPUT_KEY}' key for the model input; its keys are {sorted(batch)}")
    return batch[INPUT_KEY]


def split_batch(batch: Mapping[str, Tensor], parts: int) -> list[dict[str, Tensor]]:
    """``batch`` cut into ``parts`` disjoint batches of nearly equal size (the batch itself for one part)."""
    if parts == 1:
        return [dict(batch)]
    size = len(batch[INPUT_KEY])
    if size < parts:
        raise ValueError(f"a batch of {size} samples cannot be split into {parts} independent samples; raise data.batch_size")
    pieces = {key: value.tensor_split(parts) for key, value in batch.items()}
    return [{key: value[index] for key, value in pieces.items()} for index in range(parts)]
