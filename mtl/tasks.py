"""What a task is: a name, the batch key of its target, its loss, its metrics, its head's output size.

A data module declares its tasks; the model builds one head per task from ``num_outputs``; the
training module computes each task's loss and metrics from them. Missing labels are written as
``IGNORE_INDEX`` in the target and excluded from both the loss and the metrics.

A batch is a mapping of the model input (``INPUT_KEY``: a tensor, or a batch of graphs for
``mtl.data.qm9``) and the task targets. Where every task has
its own images (the Office benchmarks, ``mtl.data.office``), a batch holds a batch per task instead,
``{task name: {INPUT_KEY: input, target: labels}}``: each task's predictions come from its own batch
(``predict``), and an evaluation batch holds one task's. ``task_batch``, ``model_input``,
``batch_size`` and ``split_batch`` read and cut both kinds.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, MulticlassAccuracy, MulticlassAUROC
from torchmetrics.wrappers import LambdaInputTransformer

INPUT_KEY = "input"
"""Batch key of the model input; every other key of a batch is a task target."""

IGNORE_INDEX = -100
"""Target value marking a sample whose label for this task is missing."""


class MissingTargetError(KeyError):
    """A batch lacks the target of one of the model's tasks."""

    def __str__(self) -> str:
        return str(self.args[0])


class Task(ABC):
    """One prediction problem of a multi-task model.

    Subclasses set ``num_outputs`` (the width of the task's head) and define ``loss`` and ``metrics``.
    """

    num_outputs: int

    def __init__(self, name: str, target: str | None = None) -> None:
        self.name = name
        self.target = target if target is not None else name

    @abstractmethod
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of this task's head output against its target."""

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """A fresh collection of this task's metrics."""

    def check_targets(self, targets: Tensor, split: str) -> None:
        """Raise, naming the first bad sample, if ``targets`` (every target of a split, stacked)
        holds a value this task cannot train on: here, a non-finite real value."""
        if targets.is_floating_point():
            first = first_sample(~torch.isfinite(targets))
            if first is not None:
                raise ValueError(f"task '{self.name}': the {split} target at index {first} is not finite ({targets[first].flatten().tolist()[:5]})")

    def higher_is_better(self) -> dict[str, bool]:
        """Direction of every metric, read from torchmetrics (used for Δm%)."""
        return {name: bool(metric.higher_is_better) for name, metric in self.metrics().items()}

    def target_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """This task's target in ``batch``, or an error naming the task and the keys present."""
        if self.target not in batch:
            raise MissingTargetError(
                f"task '{self.name}' needs the batch key '{self.target}', but the batch has keys {sorted(batch)}"
            )
        return batch[self.target]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, target={self.target!r})"


class ClassificationTask(Task):
    """Single-label classification over ``num_classes`` classes: cross-entropy and accuracy, and with
    ``auroc`` the area under the ROC curve (one-vs-rest, macro-averaged; for two classes the AUC of
    the positive class, as the census tasks of the MMoE line of work report it)."""

    def __init__(self, name: str, num_classes: int, target: str | None = None, auroc: bool = False) -> None:
        super().__init__(name, target)
        if num_classes < 2:
            raise ValueError(f"task '{name}': num_classes must be at least 2, got {num_classes}")
        self.num_outputs = num_classes
        self.auroc = auroc

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the samples that have a label (0 when none has)."""
        summed = F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX, reduction="sum")
        labelled = (target != IGNORE_INDEX).sum().clamp_min(1)
        return summed / labelled

    def check_targets(self, targets: Tensor, split: str) -> None:
        check_labels(self.name, targets, self.num_outputs, split)

    def metrics(self) -> MetricCollection:
        metrics = {"accuracy": MulticlassAccuracy(self.num_outputs, average="micro", ignore_index=IGNORE_INDEX)}
        if self.auroc:
            metrics["auroc"] = MulticlassAUROC(self.num_outputs, ignore_index=IGNORE_INDEX)
        return MetricCollection(metrics)


class BinaryTask(Task):
    """A yes/no label ``(B, 1)`` (``0``/``1``, ``IGNORE_INDEX`` when missing) predicted by one logit ``(B, 1)``:
    binary cross-entropy on the sigmoid as the loss; accuracy and F1 at probability 0.5 as the
    metrics (the CelebA benchmark of FAMO and Nash-MTL reports F1)."""

    num_outputs = 1

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean binary cross-entropy over the samples that have a label (0 when none has)."""
        labelled = target != IGNORE_INDEX
        summed = F.binary_cross_entropy_with_logits(prediction, target.clamp_min(0).to(prediction.dtype), weight=labelled.to(prediction.dtype), reduction="sum")
        return summed / labelled.sum().clamp_min(1)

    def check_targets(self, targets: Tensor, split: str) -> None:
        check_labels(self.name, targets, 2, split)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"accuracy": BinaryAccuracy(ignore_index=IGNORE_INDEX), "f1": BinaryF1Score(ignore_index=IGNORE_INDEX)})


REGRESSION_METRICS = {"mse": MeanSquaredError, "mae": MeanAbsoluteError}


class RegressionTask(Task):
    """Real-valued targets ``(B, num_outputs)``: mean squared error as the loss, ``metrics`` among
    MSE and MAE (lower is better). Every sample needs its label (no missing-label mask).

    Targets standardized by the data module are learned as they are, and ``scale`` (their standard
    deviation, times any change of unit) turns predictions and targets back into the units the
    metrics report."""

    def __init__(self, name: str, num_outputs: int = 1, target: str | None = None, scale: float = 1.0, metrics: Sequence[str] = ("mse", "mae")) -> None:
        super().__init__(name, target)
        if num_outputs < 1:
            raise ValueError(f"task '{name}': num_outputs must be at least 1, got {num_outputs}")
        unknown = [metric for metric in metrics if metric not in REGRESSION_METRICS]
        if unknown or not metrics:
            raise ValueError(f"task '{name}': unknown regression metrics {unknown or list(metrics)}; valid choices: {list(REGRESSION_METRICS)}")
        self.num_outputs = num_outputs
        self.scale = float(scale)
        self.metric_names = list(metrics)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean squared error over samples and outputs."""
        return F.mse_loss(prediction, target)

    def metrics(self) -> MetricCollection:
        metrics = {name: REGRESSION_METRICS[name]() for name in self.metric_names}
        if self.scale != 1.0:
            in_units = functools.partial(torch.mul, other=self.scale)
            metrics = {name: LambdaInputTransformer(metric, transform_pred=in_units, transform_target=in_units) for name, metric in metrics.items()}
        return MetricCollection(metrics)

    def higher_is_better(self) -> dict[str, bool]:
        return dict.fromkeys(self.metric_names, False)


def first_sample(bad: Tensor) -> int | None:
    """The index of the first sample (along the first dimension) with a true entry in ``bad``."""
    rows = bad.reshape(len(bad), -1).any(dim=1).nonzero()
    return int(rows[0]) if len(rows) else None


def check_labels(task: str, labels: Tensor, classes: int, split: str) -> None:
    """Raise, naming the first bad sample, unless every label is a class ``0 .. classes-1`` or ``IGNORE_INDEX``."""
    valid = ((labels >= 0) & (labels < classes)) | (labels == IGNORE_INDEX)
    if labels.is_floating_point():
        valid &= labels == labels.round()
    first = first_sample(~valid)
    if first is not None:
        value = labels[first][~valid[first]].flatten()[0].item() if labels.dim() > 1 else labels[first].item()
        raise ValueError(f"task '{task}': {split} label {value} at index {first} outside 0..{classes - 1}; use {IGNORE_INDEX} for a missing label")


def is_multi_input(batch: Mapping[str, object]) -> bool:
    """Whether ``batch`` holds a batch per task (``{task name: {INPUT_KEY: ..., target: ...}}``)
    rather than one input for every task."""
    return INPUT_KEY not in batch and len(batch) > 0 and all(isinstance(value, Mapping) for value in batch.values())


def task_batch(batch: Mapping[str, object], task: Task) -> Mapping[str, Tensor]:
    """The batch ``task`` is trained and evaluated on: its own in a batch per task, ``batch`` itself
    otherwise; an error naming the task and the tasks present when it has none."""
    if not is_multi_input(batch):
        return batch
    if task.name not in batch:
        raise MissingTargetError(f"task '{task.name}' has no batch of its own; the batch holds batches of the tasks {sorted(batch)}")
    return batch[task.name]


def batch_tasks(tasks: list[Task], batch: Mapping[str, object]) -> list[Task]:
    """The ``tasks`` that ``batch`` holds samples of: every one for one input; in a batch per task,
    those with a batch of their own (an evaluation batch holds one task's)."""
    return [task for task in tasks if task.name in batch] if is_multi_input(batch) else list(tasks)


def predict(model: Callable[[Tensor], Mapping[str, Tensor]], tasks: list[Task], batch: Mapping[str, object]) -> dict[str, Tensor]:
    """``model``'s predictions for the tasks of ``batch`` (``batch_tasks``): on its input, or each
    task's on its own batch, one forward pass per task."""
    if not is_multi_input(batch):
        return dict(model(model_input(batch)))
    return {task.name: model(model_input(task_batch(batch, task)))[task.name] for task in batch_tasks(tasks, batch)}


def task_losses(tasks: list[Task], predictions: Mapping[str, Tensor], batch: Mapping[str, object]) -> list[Tensor]:
    """Each task's loss, a scalar whose graph reaches its own head only, in the order of ``tasks``."""
    return [task.loss(predictions[task.name], task.target_of(task_batch(batch, task))) for task in tasks]


def stack_losses(tasks: list[Task], predictions: Mapping[str, Tensor], batch: Mapping[str, object]) -> Tensor:
    """The task losses as one ``(K,)`` tensor, in the order of ``tasks``. A gradient of one entry
    runs the backward pass of every head (with zeros for the others): differentiate the entries
    of ``task_losses`` instead to reach one head."""
    return torch.stack(task_losses(tasks, predictions, batch))


def model_input(batch: Mapping[str, object]) -> Tensor | dict[str, Tensor]:
    """The model input of ``batch`` (in a batch per task, ``{task name: its input}``), or an error
    naming the keys the batch has."""
    if is_multi_input(batch):
        return {name: model_input(part) for name, part in batch.items()}
    if INPUT_KEY not in batch:
        raise KeyError(f"the batch has no '{INPUT_KEY}' key for the model input; its keys are {sorted(batch)}")
    return batch[INPUT_KEY]


def batch_size(batch: Mapping[str, object]) -> int:
    """The number of samples in ``batch``, of every task together in a batch per task."""
    if is_multi_input(batch):
        return sum(batch_size(part) for part in batch.values())
    return len(model_input(batch))


def split_batch(batch: Mapping[str, object], parts: int) -> list[dict[str, object]]:
    """``batch`` cut into ``parts`` disjoint batches of nearly equal size (the batch itself for one
    part); a batch per task is cut task by task."""
    if parts == 1:
        return [dict(batch)]
    if is_multi_input(batch):
        pieces = {name: split_batch(part, parts) for name, part in batch.items()}
        return [{name: piece[index] for name, piece in pieces.items()} for index in range(parts)]
    size = len(batch[INPUT_KEY])
    if size < parts:
        raise ValueError(f"a batch of {size} samples cannot be split into {parts} independent samples; raise data.batch_size")
    pieces = {key: value.tensor_split(parts) for key, value in batch.items()}
    return [{key: value[index] for key, value in pieces.items()} for index in range(parts)]
