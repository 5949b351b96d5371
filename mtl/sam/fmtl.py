"""F-MTL: Improving Multi-task Learning via Seeking Task-based Flat Regions.

Phan, Tran, Tran, Tran, Truong, Lei, Ho, Phung, Le, 2022, arXiv:2211.13723 (Algorithm 1).

Each task seeks a flat region of its own loss over the shared parameters ``θ`` and its head
``φ_k``. With ``g_k = ∇_θ L_k(θ, φ_k)`` and ``∇_φk L_k`` from one clean pass (the step's Jacobian
engine computes them, so ``jacobian.mode`` and ``jacobian.chunk`` apply to it)::

    for each task k:
        (e_k, e'_k) = rho-ascent step along (∇_θ L_k, ∇_φk L_k)        SAM or ASAM, see `norm`
        g_k^SAM, φ_k.grad = ∇_(θ, φ_k) L_k(θ + e_k, φ_k + e'_k)         then the weights are restored
        h_k = g_k^SAM - g_k                                              the "flat" gradient
    θ.grad = aggregate(g_1..g_K) + aggregate(h_1..h_K)

``aggregate`` is the run's method: a gradient aggregator's direction, or a loss weighting's
combination ``sum_k w_k (.)`` with ``w_k = ∂objective/∂L_k``. Each head takes its own perturbed
gradient (which the engine multiplies by ``w_k`` under a loss weighting, as in the plain step);
the base optimizer then steps once at the unperturbed weights. ``combine="direct"``
is the paper's ablation that aggregates the perturbed gradients alone:
``θ.grad = aggregate(g_1^SAM..g_K^SAM)``.

Perturbation: ``e = rho T² g / |T g|`` with ``T = 1``, or with ``adaptive`` ``T = |w| + eta`` on
every tensor (the paper's code scales every tensor by ``|w|``, ``eta = 0``). ``norm="separate"``
normalizes the shared part and the head part each to radius ``rho``, as the released NYUv2,
Cityscapes and CelebA scripts do (and Algorithm 1, which perturbs ``θ`` and ``φ_k`` each in its
own ball); ``norm="joint"`` normalizes them together, one ball of radius ``rho`` over
``(θ, φ_k)``, as the released MultiMNIST ``train.py`` does. The experiment configs choose the
norm of the script they follow (``fmtl_norm``).

Defaults, from the paper's code: ``rho = 2.0`` and ``adaptive = True`` (MultiMNIST, NYUv2 and
CelebA scripts; the Cityscapes launch script runs ``rho = 0``, ``adaptive = False``). Cost per
step: one forward pass, one backward pass through the heads and K through the shared parameters
(one vmapped call in ``jacobian.mode=batched``) for the clean task gradients, then K perturbed
forward and K backward passes, and two aggregations. Memory: the clean and the perturbed task
gradients, each held once as the rows of a ``(K, P)`` Jacobian (the engine's buffer; ``as_jacobian``);
the clean pass's graph is let go before the perturbed passes.

The K perturbed passes are independent. With ``batched`` they run as one call per ``chunk`` tasks
(all K when ``chunk`` is None): the perturbed weights of the tasks are stacked and the model is
evaluated once under ``torch.func.vmap`` with ``torch.func.functional_call``, then one backward
pass gives each task's gradient at its own weights. Memory grows with the chunk: per task of a
chunk, about two copies of the shared parameters and of the chunk's heads (the stacked weights and
their gradients) and one forward pass's activations; the loop (``batched=False``) holds one
perturbed copy and one pass at a time (the default: faster on CPU in ``scripts/bench_sam.py``), and
``chunk`` bounds the batched call's memory (a call that runs out of memory halves it, with a
warning). Both give the same update up to float rounding. Every perturbed pass replays the clean
pass's random draws (``TaskLosses.randomness``; ``randomness="same"`` in the batched call), so the
K perturbed models see the clean pass's dropout masks and ``h_k`` is a difference of gradients of
one loss: at ``rho = 0`` it is exactly zero. Buffers are passed in as copies and dropped after the pass, so BatchNorm statistics move
with the clean pass only. A model that cannot be vmapped (an op without a batching rule,
data-dependent control flow) switches F-MTL to the loop for the rest of the run, with one warning
naming the reason. A batch per task (``SeparateTaskLosses``) always takes the loop: model ``k``
runs on task ``k``'s batch alone, replaying the draws of that task's clean pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from mtl.sam.base import Aggregate, CleanGradients, SeparateTaskLosses, Share, TaskLosses, TaskPerturbation, ascent
from mtl.task_chunks import TaskChunks, first_line

NORMS = ("separate", "joint")
COMBINES = ("sum", "direct")

TaskGradients = tuple[list[Tensor], list[Tensor]]
"""One task's gradients: on the shared parameters, then on its head."""


class FlatMTL(TaskPerturbation):
    """F-MTL: per-task SAM on the shared parameters and the task's head; aggregate clean plus flat gradients."""

    def __init__(
        self,
        rho: float = 2.0,
        adaptive: bool = True,
        eta: float = 0.0,
        norm: str = "separate",
        combine: str = "sum",
        batched: bool = False,
        chunk: int | None = None,
    ) -> None:
        if rho < 0:
            raise ValueError(f"sam.rho must be non-negative, got {rho}")
        if eta < 0:
            raise ValueError(f"sam.eta must be non-negative, got {eta}")
        if norm not in NORMS:
            raise ValueError(f"sam.norm must be one of {NORMS}, got '{norm}'")
        if combine not in COMBINES:
            raise ValueError(f"sam.combine must be one of {COMBINES}, got '{combine}'")
        if chunk is not None and chunk < 1:
            raise ValueError(f"sam.chunk must be a positive number of tasks or null, got {chunk}")
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.norm = norm
        self.combine = combine
        self.batched = batched
        self.chunks = TaskChunks(chunk, "sam.batched=true", "sam.chunk")

    def step(
        self,
        clean: CleanGradients,
        losses: Tensor,
        task_losses: TaskLosses | SeparateTaskLosses,
        shared: Sequence[Tensor],
        heads: Sequence[Sequence[Tensor]],
        aggregate: Aggregate,
        share: Share = list,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        if len(heads) != len(losses):
            raise ValueError(f"F-MTL got {len(losses)} task losses but {len(heads)} heads")
        clean_jacobian, clean_heads = shared_clean_gradients(clean, share)
        sizes = [parameter.numel() for parameter in shared]
        clean_shared = [[part.view_as(parameter) for part, parameter in zip(row.split(sizes), shared)] for row in clean_jacobian]
        models = PerturbedModels(task_losses, shared, heads, lambda task: self._perturbation(shared, heads[task], clean_shared[task], clean_heads[task]))
        perturbed_jacobian, perturbed = as_jacobian(shared_task_gradients(self._perturbed_gradients(models), share), shared)
        direction = self._direction(clean_jacobian, perturbed_jacobian, losses.detach(), aggregate)
        return direction, [head_gradients for _, head_gradients in perturbed]

    def _perturbed_gradients(self, models: PerturbedModels) -> list[TaskGradients]:
        """Every task's gradients at its perturbed weights, batched while the model allows it (and
        one forward pass gives every task's loss: a batch per task runs each task's model on its
        own batch, one after the other)."""
        if self.batched and models.task_losses.one_forward:
            try:
                return self._batched_gradients(models)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as error:
                warnings.warn(f"sam.batched=true is not possible for this model ({first_line(error)}); using sam.batched=false", RuntimeWarning, stacklevel=2)
                self.batched = False
        return [models.looped(task) for task in range(models.count)]

    def _batched_gradients(self, models: PerturbedModels) -> list[TaskGradients]:
        """The tasks' gradients in vmapped calls of ``chunk`` tasks (``TaskChunks``: a call of
        several tasks that runs out of memory halves the chunk, one of one task raises)."""
        gradients: list[TaskGradients] = [([], [])] * models.count

        def call(tasks: range) -> None:
            gradients[tasks.start : tasks.stop] = models.batched(tasks)

        self.chunks.run(models.count, call)
        return gradients

    @property
    def chunk(self) -> int | None:
        """Tasks per batched call (``sam.chunk``; None: all)."""
        return self.chunks.size

    def _perturbation(self, shared: Sequence[Tensor], head: Sequence[Tensor], shared_gradients: list[Tensor], head_gradients: list[Tensor]) -> list[Tensor]:
        """``(e, e')`` for the shared parameters then the head, normalized jointly or separately."""
        if self.norm == "joint":
            return ascent([*shared_gradients, *head_gradients], self.rho, self._scales([*shared, *head]))
        return ascent(shared_gradients, self.rho, self._scales(shared)) + ascent(head_gradients, self.rho, self._scales(head))

    def _scales(self, parameters: Sequence[Tensor]) -> list[Tensor | None]:
        if not self.adaptive:
            return [None] * len(parameters)
        return [parameter.detach().abs() + self.eta for parameter in parameters]

    def _direction(self, clean: Tensor, perturbed: Tensor, losses: Tensor, aggregate: Aggregate) -> Tensor:
        """The shared update from the clean and perturbed task gradients ``(K, P)``."""
        if self.combine == "direct":
            return aggregate(perturbed, losses)
        return aggregate(clean, losses) + aggregate(perturbed.sub_(clean), losses)  # the flat gradients, in place


class PerturbedModels:
    """The K perturbed models of one step: model ``k`` has the shared parameters ``θ + e_k``, head
    ``k`` at ``φ_k + e'_k`` (``shift(k)``, shared part first) and the other heads unperturbed.
    Each is evaluated on task ``k``'s loss, with copies of the model's buffers."""

    def __init__(self, task_losses: TaskLosses | SeparateTaskLosses, shared: Sequence[Tensor], heads: Sequence[Sequence[Tensor]], shift: Callable[[int], list[Tensor]]) -> None:
        names = {id(parameter): name for name, parameter in task_losses.model.named_parameters()}
        unknown = [tuple(parameter.shape) for parameter in (*shared, *(parameter for head in heads for parameter in head)) if id(parameter) not in names]
        if unknown:
            raise ValueError(f"F-MTL perturbs parameters of shapes {unknown} that are not parameters of {type(task_losses.model).__name__}")
        self.task_losses = task_losses
        self.shared, self.heads, self.shift = list(shared), [list(head) for head in heads], shift
        self.shared_names = [names[id(parameter)] for parameter in shared]
        self.head_names = [[names[id(parameter)] for parameter in head] for head in heads]
        self.count = len(heads)

    def weights(self, task: int) -> list[Tensor]:
        """Model ``task``'s perturbed shared parameters then head, detached."""
        return [parameter.detach() + shift for parameter, shift in zip([*self.shared, *self.heads[task]], self.shift(task))]

    def looped(self, task: int) -> TaskGradients:
        """Task ``task``'s gradients at its perturbed weights, from one forward and one backward pass."""
        weights = dict(zip([*self.shared_names, *self.head_names[task]], (weight.requires_grad_() for weight in self.weights(task))))
        buffers = {name: buffer.clone() for name, buffer in self.task_losses.model.named_buffers()}
        loss = self.task_losses.task_loss({**weights, **buffers}, task)
        return self._split(gradients(loss, list(weights.values())))

    def batched(self, tasks: Sequence[int]) -> list[TaskGradients]:
        """The gradients of ``tasks``, each at its own perturbed weights, from one vmapped forward
        and one backward pass: the losses of different models depend on different rows of the
        stacked weights, so the gradient of their sum holds each model's gradient in its row."""
        stacked = self._stacked(tasks)
        buffers = {name: buffer.expand(len(tasks), *buffer.shape).clone() for name, buffer in self.task_losses.model.named_buffers()}
        # randomness="same": every model draws the one set of masks that task_losses replays
        losses = vmap(lambda weights, copies: torch.stack(list(self.task_losses.at({**weights, **copies}))), randomness="same")(stacked, buffers)
        own = losses[torch.arange(len(tasks), device=losses.device), torch.tensor(list(tasks), device=losses.device)]
        rows = dict(zip(stacked, gradients(own.sum(), list(stacked.values()))))
        return [self._split([rows[name][row] for name in (*self.shared_names, *self.head_names[task])]) for row, task in enumerate(tasks)]

    def _stacked(self, tasks: Sequence[int]) -> dict[str, Tensor]:
        """The weights of the models of ``tasks`` stacked along a new first dimension: the shared
        parameters and the heads of ``tasks``, each head perturbed in its own task's row only."""
        perturbed = [self.weights(task) for task in tasks]
        stacked = {name: torch.stack([weights[index] for weights in perturbed]) for index, name in enumerate(self.shared_names)}
        for row, task in enumerate(tasks):
            for index, (name, parameter) in enumerate(zip(self.head_names[task], self.heads[task])):
                rows = parameter.detach().expand(len(tasks), *parameter.shape).clone()
                rows[row] = perturbed[row][len(self.shared) + index]
                stacked[name] = rows
        return {name: weight.requires_grad_() for name, weight in stacked.items()}

    def _split(self, tensors: list[Tensor]) -> TaskGradients:
        return tensors[: len(self.shared)], tensors[len(self.shared) :]


def gradients(loss: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
    """``∇ loss`` with respect to each of ``inputs``; zeros for an input the loss does not reach."""
    found = torch.autograd.grad(loss, inputs, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(tensor) if gradient is None else gradient for tensor, gradient in zip(inputs, found)]


def shared_clean_gradients(clean: CleanGradients, share: Share) -> CleanGradients:
    """The clean Jacobian and head gradients passed through ``share`` together (one all-reduce)."""
    jacobian, heads = clean
    shared = share([jacobian, *(gradient for head in heads for gradient in head)])
    rest = iter(shared[1:])
    return shared[0], [[next(rest) for _ in head] for head in heads]


def shared_task_gradients(gradients: list[tuple[list[Tensor], list[Tensor]]], share: Share) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Every task's ``(shared, head)`` gradients passed through ``share`` together (one all-reduce)."""
    shared = iter(share([tensor for shared_part, head_part in gradients for tensor in (*shared_part, *head_part)]))
    return [([next(shared) for _ in shared_part], [next(shared) for _ in head_part]) for shared_part, head_part in gradients]


def as_jacobian(gradients: list[TaskGradients], shared: Sequence[Tensor]) -> tuple[Tensor, list[TaskGradients]]:
    """The tasks' shared gradients as the rows of one ``(K, P)`` Jacobian, and the same gradients
    with their shared part as views of it: the separate tensors are let go, so the step holds each
    set of task gradients once (not three times, as stacking flattened copies did)."""
    sizes = [parameter.numel() for parameter in shared]
    first = gradients[0][0][0]
    jacobian = torch.empty((len(gradients), sum(sizes)), dtype=first.dtype, device=first.device)
    for row, (shared_gradients, _) in zip(jacobian, gradients):
        torch.cat([gradient.reshape(-1) for gradient in shared_gradients], out=row)
    views = [[part.view_as(parameter) for part, parameter in zip(row.split(sizes), shared)] for row in jacobian]
    return jacobian, [(row_views, head_gradients) for row_views, (_, head_gradients) in zip(views, gradients)]
