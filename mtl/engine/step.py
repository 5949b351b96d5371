"""One multi-task training step without Lightning: given a batch, fill ``.grad`` and return the task losses.

The step, written out so a reader can follow it end to end::

    predictions = model(batch["input"])                    # {task: output}; a batch per task: each on its own
    losses      = [task.loss(...) for task]                 # L (K,)
    # a loss weighting:
    backward(method.objective(losses))                      # sum(w * L), w = method(L)
    # a gradient aggregator:
    G = jacobian(losses, shared parameters)                 # (K, P), by the Jacobian engine
    shared.grad = method(G, losses)                         # d (P,)
    head_k.grad = gradient of L_k                           # each head follows its own task

The caller then clips and steps the optimizer (``mtl.engine.module.MultiTaskModule.training_step``)
and calls ``after_update`` for the methods that read the losses after the update (FAMO).

With ``sharpness`` set, the gradient computation above runs at the weights ``w`` and again at
perturbed weights (``mtl.sam``); only the pass at ``w`` moves BatchNorm statistics and method state,
and only it is recorded (``record``: the caller's metrics and logs).

Under DDP, gradient aggregators compute their gradients with ``torch.autograd.grad``, which fires
none of DDP's hooks, and share them as ``sync`` says (``mtl.engine.distributed``): by default every
process then takes the single-process step on the global batch. A loss weighting's backward is the
caller's ``backward`` (Lightning's ``manual_backward``, which DDP's reduction sees).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl.engine.checks import check_method, check_sharpness, check_task_groups
from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian import set_gradient, task_jacobian
from mtl.engine.jacobian_modes import JacobianEngine, Representation
from mtl.engine.nonfinite import NonFiniteStep, StateBeforeStep, check_losses, check_update
from mtl.engine.separate_inputs import SeparateInputs
from mtl.methods.base import GradientAggregator, LossWeighting, Method, NonFiniteRows
from mtl.sam.base import Aggregate, CleanGradients, RandomState, SeparateTaskLosses, Sharpness, TaskLosses, TaskPerturbation
from mtl.tasks import Task, batch_size, model_input, predict, split_batch, stack_losses, task_batch, task_losses

Backward = Callable[[Tensor], None]
"""Backpropagates a scalar into ``.grad``."""

Record = Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Tensor], None]
"""Takes the predictions, the batch and the task losses ``(K,)`` of the step's clean pass."""


def backward(loss: Tensor) -> None:
    """The default ``Backward``: ``loss.backward()``."""
    loss.backward()


def record_nothing(predictions: Mapping[str, Tensor], batch: Mapping[str, Tensor], losses: Tensor) -> None:
    """The default ``Record``."""


class MultiTaskStep:
    """Writes the update of ``method`` on ``tasks`` into the ``.grad`` of the parameters of ``model``
    and ``method``; ``engine`` computes the Jacobians of a gradient aggregator, ``sharpness`` (with
    ``sam_sync``) wraps the step in a sharpness-aware one, ``sync`` shares it between processes.
    Invalid combinations are refused here, before the first step (``mtl.engine.checks``).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        method: Method,
        engine: JacobianEngine | None = None,
        sharpness: Sharpness | None = None,
        sync: GradientSync | None = None,
        sam_sync: str = "global",
        backward: Backward = backward,
        record: Record = record_nothing,
    ) -> None:
        check_method(model, method)
        self.engine = engine or JacobianEngine()
        check_task_groups(self.engine, [task.name for task in tasks], method, sharpness)
        if isinstance(method, GradientAggregator):
            self.engine.check(model, method)
        check_sharpness(sharpness, model, method, sam_sync)
        self.model, self.tasks, self.method = model, list(tasks), method
        self.sharpness, self.sam_sync = sharpness, sam_sync
        self.sync = sync or GradientSync()
        self.backward, self.record = backward, record
        self._recording = True

    def __call__(self, batch: Mapping[str, Tensor], learning_rate: float) -> Tensor:
        """Fill the empty ``.grad`` of every trained parameter with the step's update for ``batch``;
        returns the task losses ``(K,)``. ``learning_rate`` is the optimizer's (GSAM reads it).

        Raises ``NonFiniteStep`` (``mtl.engine.nonfinite``), naming the tasks, when a task loss or
        a task gradient the method would see is not finite, or the update is not."""
        before = StateBeforeStep(self.model, self.method)
        try:
            if self.sharpness is None:
                losses = self._write_gradients(batch)
            else:
                losses = self._write_sharpness_aware_gradients(batch, learning_rate)
            check_update([parameter.grad for parameter in self.parameters() if parameter.grad is not None])
        except NonFiniteRows as error:
            before.restore()
            what = {"gradient": "shared-parameter gradient"}.get(error.what, error.what)
            raise NonFiniteStep(f"the {what} of {self._row_names(error.rows)} is not finite") from None
        except NonFiniteStep:
            before.restore()
            raise
        return losses

    def after_update(self, batch: Mapping[str, Tensor]) -> None:
        """After the optimizer step: the losses at the new weights, for a method that requires them."""
        if "losses_after_step" in self.method.requires:
            with torch.no_grad():
                losses_after_step = stack_losses(self.tasks, predict(self.model, self.tasks, batch), batch)
                self.method.update(self._global(losses_after_step, batch))

    def _row_names(self, rows: Sequence[int]) -> str:
        """The tasks of an aggregator's Jacobian ``rows``: one task each, or a group of tasks."""
        names = [task.name for task in self.tasks]
        if self.engine.groups.trivial:
            return "task " + ", ".join(f"'{names[row]}'" for row in rows)
        return "task group " + ", ".join(str([names[task] for task in self.engine.groups.groups[row]]) for row in rows)

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the step writes a gradient for: the model's, then the method's."""
        return [*self.model.parameters(), *self.method.parameters()]

    def _write_gradients(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Write the method's update into the ``.grad`` of every trained parameter (which must be
        empty); returns the task losses ``(K,)``."""
        if isinstance(self.method, LossWeighting):
            losses = self._train_losses(batch)
            norms = self._last_shared_layer_gradient_norms(losses, batch)
            self.backward(self.method.objective(self._global(losses, batch), norms))
            return losses
        return self._aggregate_gradients(batch)

    def _train_losses(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The task losses ``(K,)`` of a training batch, recorded except in a perturbed pass."""
        predictions = predict(self.model, self.tasks, batch)
        losses = stack_losses(self.tasks, predictions, batch)
        check_losses(losses, [task.name for task in self.tasks])
        if self._recording:
            self.record(predictions, batch, losses)
        return losses

    def _write_sharpness_aware_gradients(self, batch: Mapping[str, Tensor], learning_rate: float) -> Tensor:
        """``self.sharpness`` around the step: the clean pass at ``w`` is recorded, the perturbed
        passes are not, and running state (BatchNorm statistics, the method's state) moves with the
        clean pass only. Returns the clean losses."""
        if isinstance(self.sharpness, TaskPerturbation):
            return self._write_flat_gradients(batch)
        return self.sharpness.step(
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
        """F-MTL: the clean pass here, its task gradients from the Jacobian engine; the per-task
        perturbed passes in ``self.sharpness`` (which evaluates the model functionally, at copies of
        its weights and buffers, unrecorded); the shared parameters take its direction and each
        head its own perturbed gradient (times the task's weight under a loss weighting, as in the
        plain step).

        With several processes, ``exact`` sync averages the clean and the perturbed task gradients
        over the processes (so every perturbation is the single-process one); ``local`` averages
        the final gradients."""
        inputs = model_input(batch)
        shared = trained(self.model.shared_parameters())
        # the perturbed passes replay the clean pass's draws (of each task's pass, for a batch per
        # task: SeparateInputs) on the device of the weights, which is the inputs' one
        randomness = None if isinstance(inputs, Mapping) else RandomState.capture(shared[0].device)
        heads = [trained(self.model.task_parameters(task.name)) for task in self.tasks]
        representation, losses, global_losses, clean, (aggregate, head_weights) = self._clean_pass(batch, shared, heads)
        size = batch_size(batch)

        def share(gradients: Sequence[Tensor]) -> list[Tensor]:
            return self.sync.average(gradients, size) if self.sync.exact else list(gradients)

        if isinstance(representation, SeparateInputs):
            scores = [functools.partial(own_loss, task, task_batch(batch, task)) for task in self.tasks]
            losses_at = SeparateTaskLosses(self.model, [inputs[task.name] for task in self.tasks], scores, representation.randomness)
        else:
            losses_at = TaskLosses(self.model, inputs, lambda outputs: task_losses(self.tasks, outputs, batch), randomness)
        direction, head_gradients = self.sharpness.step(clean, global_losses, losses_at, shared, heads, aggregate, share)
        set_gradient(shared, direction)
        for weight, head, gradients in zip(head_weights, heads, head_gradients):
            for parameter, gradient in zip(head, gradients):
                parameter.grad = weight.to(gradient.dtype) * gradient
        if not self.sync.exact:
            self._average_gradients(size)
        return losses

    def _clean_pass(
        self, batch: Mapping[str, Tensor], shared: Sequence[nn.Parameter], heads: Sequence[Sequence[nn.Parameter]]
    ) -> tuple[Representation | SeparateInputs | None, Tensor, Tensor, CleanGradients, tuple[Aggregate, Tensor]]:
        """F-MTL's pass at ``w``, recorded: its representation (``JacobianEngine.forward``), the task
        losses and their global values (detached), the task gradients from the Jacobian engine, and
        the task combination (``_task_combination``). Its graph ends here, so the perturbed passes
        do not hold its activations."""
        representation, predictions = self.engine.forward(self.model, model_input(batch), [task.name for task in self.tasks])
        separate = task_losses(self.tasks, predictions, batch)
        losses = torch.stack(separate)
        check_losses(losses, [task.name for task in self.tasks])
        self.record(predictions, batch, losses)
        global_losses = self._global(losses, batch)
        # each task's own loss (its gradient runs its own head alone), with the global value
        global_separate = [loss + (value - loss).detach() for loss, value in zip(separate, global_losses.detach())]
        clean = self.engine.task_gradients(global_separate, representation, shared, heads)
        return representation, losses.detach(), global_losses.detach(), clean, self._task_combination(global_losses, batch)

    def _average_gradients(self, batch_size: int) -> None:
        """Replace every ``.grad`` by its average over the processes, in one all-reduce."""
        parameters = [parameter for parameter in self.parameters() if parameter.grad is not None]
        for parameter, gradient in zip(parameters, self.sync.average([parameter.grad for parameter in parameters], batch_size)):
            parameter.grad = gradient

    def _global(self, values: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """``values`` (losses, gradients) averaged over the processes under ``exact`` sync, with the
        gradient of this process's own; ``values`` otherwise (see ``GradientSync.global_values``)."""
        return self.sync.global_values(values, batch_size(batch))

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
        """``compute()`` without lasting side effects: nothing is recorded, the model's buffers
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
        representations, separate = [], []
        for part in split_batch(batch, self.method.independent_samples):
            representation, predictions = self.engine.forward(self.model, model_input(part), [task.name for task in self.tasks])
            representations.append(representation)
            separate.append(task_losses(self.tasks, predictions, part))
            check_losses(torch.stack(separate[-1]), [task.name for task in self.tasks])
            if self._recording:
                self.record(predictions, part, torch.stack(separate[-1]))
        losses = torch.stack([torch.stack(sample) for sample in separate])
        shared = trained(self.model.shared_parameters())
        heads = trained(parameter for task in self.tasks for parameter in self.model.task_parameters(task.name))
        self.engine.write_gradients(self.method, losses, representations, shared, heads, batch_size(batch), self.sync, separate)
        return losses.mean(dim=0)


def own_loss(task: Task, batch: Mapping[str, Tensor], predictions: Mapping[str, Tensor]) -> Tensor:
    """``task``'s loss on its own ``batch`` from the ``predictions`` of its forward pass."""
    return task.loss(predictions[task.name], task.target_of(batch))


def trained(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require a gradient."""
    return [parameter for parameter in parameters if parameter.requires_grad]
