"""The Jacobian engine: the per-task gradients a gradient aggregator needs, computed the cheap way.

A gradient aggregator needs the Jacobian ``G (K, P)`` of the ``K`` task losses with respect to the
``P`` shared parameters. The reference (``mtl.engine.jacobian.task_jacobian``) runs ``K`` backward
passes through the whole graph. For a model with one shared representation ``z = encode(x)`` and
``predictions = decode(z)`` (``mtl.models.HardParameterSharing``), the chain rule splits each row::

    G[k] = (dz/dθ)ᵀ · dL_k/dz

so each ``dL_k/dz`` needs the heads alone, and the encoder is traversed with the ``K``
cotangents ``dL_k/dz``. When the model also has ``decode_each`` (each head on its own copy of ``z``), every
head reads its own leaf copy of ``z``: ONE backward pass of the summed losses through the heads
then gives every head's own gradient and every task's ``dL_k/dz`` (the gradient that reached its
copy). A model with ``decode`` alone gets each ``dL_k/dz`` from its task's own loss (head ``k``
alone) and the heads' gradients from one more pass, so its heads are traversed twice.

The engine owns the forward pass, that backward pass through the heads, the buffers and the
sharing between processes; how the encoder part is run is its mode (``jacobian.mode``, the
objects of ``mtl.engine.modes``): ``loop``, ``batched``, ``rep`` (MGDA-UB, on the gradients of the
representation) or ``auto`` (the default: ``batched`` or ``loop``, whichever makes the step
faster, decided once and logged at INFO). A pass that vmap cannot run (it raises, e.g. on NumPy or
data-dependent control flow) switches the engine to ``loop`` for the rest of the run with one
warning that gives vmap's reason.

Both exact modes give the reference Jacobian (up to float rounding) on any model, BatchNorm and
dropout included, since the forward pass is the ordinary one. They assume that ``decode`` uses no
shared parameter (true of hard parameter sharing). A model without ``encode``/``decode`` takes the
general path: the ``K`` rows are vector-Jacobian products of the losses through the whole graph,
looped or batched in the same way. ``rep`` needs a representation and one sample per step.
A batch per task (``mtl.engine.separate_inputs``) runs the model on each task's batch, and each
row is then the gradient of one task's loss through its own graph, in every exact mode.

With ``groups`` (``mtl.engine.task_groups``) the cotangents of each group of tasks are averaged
before the encoder part, so the engine runs one pass per group and the aggregator sees one row per
group.

The Jacobian is written into a ``(N, K, P)`` buffer on the parameters' device, allocated once and
reused by every step (``N`` independent samples for double-sampling methods): aggregators must not
keep a reference to it across steps. One exception: on one process, ``batched`` with every task in
one call hands a Gramian weighting the per-parameter blocks that the vmapped pass returns
(``GramianWeighting.combine_blocks``), and no buffer is filled. ``torch.autograd.grad`` fires no
gradient hooks (DDP's included) and leaves ``.grad`` untouched; the engine then writes the shared
parameters' ``.grad``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from mtl.engine.auto_mode import AutoMode
from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian import copy_rows, numel, own_memory, scatter, set_gradient
from mtl.engine.linear_heads import LinearHeadOutputs, decode_recording_linear_heads
from mtl.engine.modes import Backpropagated, BatchedRows, LoopRows, RepresentationMode, Unbatchable
from mtl.engine.separate_inputs import SeparateGraphs, SeparateInputs, forward_each
from mtl.engine.task_groups import TaskGroups, grouped
from mtl.methods.base import GradientAggregator
from mtl.methods.task_state import TaskStateAggregator

MODES = ("auto", "loop", "batched", "rep")
EXACT_MODES = ("loop", "batched")

log = logging.getLogger(__name__)

T = TypeVar("T")

Mode = LoopRows | AutoMode
"""A mode of ``mtl.engine.modes``: ``LoopRows``, ``BatchedRows`` and ``RepresentationMode`` are all ``LoopRows``."""


def make_mode(name: str, chunk: int | None) -> Mode:
    """The mode object of ``jacobian.mode=name``."""
    if name not in MODES:
        raise ValueError(f"unknown jacobian mode '{name}'; valid modes: {list(MODES)}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"jacobian.chunk must be a positive number of tasks or null, got {chunk}")
    return {"auto": lambda: AutoMode(chunk), "loop": LoopRows, "batched": lambda: BatchedRows(chunk), "rep": RepresentationMode}[name]()


def has_representation(model: nn.Module) -> bool:
    """Whether ``model`` splits its forward at one shared representation (``encode`` and ``decode``)."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))


@dataclass(frozen=True)
class Representation:
    """One sample's shared representation: ``tensor`` is ``z = encode(x)`` in the encoder's graph;
    ``copies`` are the leaf copies of ``z`` that the heads read, one per task in task order (None
    when the heads read ``tensor`` itself); ``linear_heads`` the outputs of the heads on them, in
    ``rep`` mode when every head is one linear layer (``mtl.engine.linear_heads``)."""

    tensor: Tensor
    copies: tuple[Tensor, ...] | None = None
    linear_heads: LinearHeadOutputs | None = None


class JacobianEngine:
    """Computes the task Jacobian (or, in ``rep`` mode, the representation gradients) and writes
    the aggregated direction into the shared parameters' ``.grad``.

    ``mode`` is one of ``MODES``; ``chunk`` bounds the number of tasks per batched call (``None``:
    all tasks at once). ``groups`` and ``regroup_every`` group the tasks (``mtl.engine.task_groups``):
    the aggregator then sees one row per group.
    """

    def __init__(self, mode: str = "auto", chunk: int | None = None, groups: int | Sequence[Sequence[str]] | None = None, regroup_every: int = 100) -> None:
        self._mode = make_mode(mode, chunk)
        self.groups = TaskGroups(groups, regroup_every)
        self._buffers: dict[str, Tensor] = {}

    @property
    def mode(self) -> str:
        """The mode's name: in ``auto`` mode ``auto`` until its trial has chosen, then the choice."""
        return self._mode.name

    @property
    def running_mode(self) -> str:
        """The name of the exact mode that runs the next step: in ``auto`` mode, the one on trial."""
        return self._mode.running.name

    @property
    def chunk(self) -> int | None:
        """``jacobian.chunk`` of the batched calls (None: every task in one call, or no batched calls)."""
        return getattr(self._mode, "chunk", None)

    def bind(self, task_names: Sequence[str]) -> int:
        """Resolve ``jacobian.groups`` for these tasks; returns how many rows the aggregator sees
        (its ``num_tasks``)."""
        return self.groups.bind(task_names)

    def check(self, model: nn.Module, method: GradientAggregator) -> None:
        """Refuse at start-up the combinations the engine cannot run."""
        if self._mode.exact:
            return
        if not has_representation(model):
            raise ValueError(
                f"jacobian.mode=rep needs a model with encode(x) and decode(z); {type(model).__name__} has none. "
                f"Use one of {list(EXACT_MODES)} or auto"
            )
        if method.independent_samples > 1:
            raise ValueError(
                f"jacobian.mode=rep takes one sample per step, but {type(method).__name__} asks for "
                f"{method.independent_samples} independent samples. Use one of {list(EXACT_MODES)} or auto"
            )
        if isinstance(method, TaskStateAggregator):
            raise ValueError(
                f"jacobian.mode=rep gives gradients of the representation, whose size changes with the batch, but "
                f"{type(method).__name__} keeps state of the size of the gradients. Use one of {list(EXACT_MODES)} or auto"
            )

    def forward(
        self, model: nn.Module, inputs: Tensor | Mapping[str, Tensor], task_names: Sequence[str] | None = None
    ) -> tuple[Representation | SeparateInputs | None, dict[str, Tensor]]:
        """The shared representation (None for a model without one) and the predictions. Given
        the ``task_names`` (the order of the losses) and a model with ``decode_each``, each task's
        head reads its own leaf copy of ``z``; in ``rep`` mode the outputs of linear heads are recorded.
        ``inputs`` given per task (a batch per task) run one forward pass each (``SeparateInputs``)."""
        if isinstance(inputs, Mapping):
            if not self._mode.exact:
                raise ValueError(
                    f"jacobian.mode=rep aggregates gradients of one representation shared by the tasks; a batch per task has none. Use one of {list(EXACT_MODES)} or auto"
                )
            return forward_each(model, inputs, task_names if task_names is not None else list(inputs))
        if not has_representation(model):
            return None, model(inputs)
        representation = model.encode(inputs)
        decode_each = getattr(model, "decode_each", None)
        if task_names is None or not callable(decode_each):
            return Representation(representation), model.decode(representation)
        copies = {name: representation.detach().requires_grad_() for name in task_names}
        if self._mode.exact:  # rep also records the outputs of linear heads, for their products
            return Representation(representation, tuple(copies.values())), decode_each(copies)
        predictions, linear_heads = decode_recording_linear_heads(model, decode_each, copies)
        return Representation(representation, tuple(copies.values()), linear_heads), predictions

    def write_gradients(
        self,
        method: GradientAggregator,
        losses: Tensor,
        representations: Sequence[Representation | SeparateInputs | None],
        shared: Sequence[nn.Parameter],
        heads: Sequence[nn.Parameter] = (),
        batch_size: int = 1,
        sync: GradientSync | None = None,
        separate: Sequence[Sequence[Tensor]] | None = None,
    ) -> None:
        """``shared.grad`` = the method's direction for the task ``losses (N, K)`` of ``N`` samples,
        whose forward passes gave ``representations`` (one per sample); ``heads.grad`` = the
        gradient of the losses' sum over tasks, averaged over the samples (each head follows its own
        task). The graph is kept. ``separate[n][k]`` is the loss ``losses[n, k]`` before stacking:
        its gradient runs head ``k``'s backward alone, where an entry of the stacked tensor runs
        every head's (``K²`` head passes for the ``K`` rows of ``dL_k/dz``).

        With several processes, ``sync`` (``mtl.engine.distributed``) shares the step: ``exact``
        averages ``[Jacobians | head gradients | losses]`` weighted by ``batch_size`` before the
        method runs, ``local`` averages ``[direction | head gradients]`` after it.
        """
        sync = sync or GradientSync()
        if not self._mode.exact and sync.exact and sync.active:
            raise ValueError("jacobian.mode=rep aggregates gradients of this process's representation; with several processes use distributed.sync=local or an exact jacobian mode")
        with self._step(shared[0]):
            backpropagated, own_gradients = self.backward_through_heads(separate if separate is not None else losses, losses, representations, heads)
            if self.groups.due():
                # every regroup_every steps only: not worth keeping a second (N, K, P) buffer for
                ungrouped = torch.empty((*losses.shape, numel(shared)), dtype=shared[0].dtype, device=shared[0].device)
                self._fill_jacobians(ungrouped, backpropagated, shared)
                (jacobian,) = sync.average([ungrouped.mean(dim=0)], batch_size)
                self.groups.regroup(jacobian)
            averaging = None if self.groups.trivial else self.groups.matrix(losses)
            group_losses = grouped(losses, averaging).detach()
            if sync.exact and sync.active:
                self._write_shared_step(method, group_losses, backpropagated, own_gradients, shared, heads, averaging, batch_size, sync)
                return
            # one process (where exact and local agree): the gradients become the .grad as they are, without a copy
            direction = self._with_fallback(lambda mode: mode.direction(method, group_losses, backpropagated, shared, averaging, self._jacobian_buffer(shared)))
            gradients = sync.average([*direction, *own_memory(own_gradients, heads)], batch_size)
            for parameter, gradient in zip([*shared, *heads], gradients):
                parameter.grad = gradient

    def _write_shared_step(
        self,
        method: GradientAggregator,
        group_losses: Tensor,
        backpropagated: Sequence[Backpropagated],
        own_gradients: Sequence[Tensor | None],
        shared: Sequence[nn.Parameter],
        heads: Sequence[nn.Parameter],
        averaging: Tensor | None,
        batch_size: int,
        sync: GradientSync,
    ) -> None:
        """``exact`` sync over several processes: ``[Jacobians | head gradients | losses | batch
        size]`` packed in one flat buffer, averaged in one all-reduce, and the method run on the
        global Jacobian by every process."""
        samples, rows_per_sample = group_losses.shape
        width, head_width = numel(shared), numel(heads)
        flat = self._buffer("exact", (samples * rows_per_sample * (width + 1) + head_width + 1,), shared[0])
        rows, head_gradients, row_losses, weight = flat.split([samples * rows_per_sample * width, head_width, samples * rows_per_sample, 1])
        jacobians = rows.view(samples, rows_per_sample, width)
        self._fill_jacobians(jacobians, backpropagated, shared, averaging)
        row_losses.copy_(group_losses.flatten())
        scatter(own_gradients, heads, head_gradients)
        weight.fill_(batch_size)
        sync.average_(flat)
        row_losses = row_losses.view(samples, rows_per_sample)
        direction = method(jacobians[0], row_losses[0]) if samples == 1 else method(jacobians, row_losses)
        set_gradient(shared, direction)
        set_gradient(heads, head_gradients)

    @contextlib.contextmanager
    def _step(self, device_of: Tensor) -> Iterator[None]:
        """The gradient step, timed by ``auto``'s trial (``AutoMode.timed``); once the trial has
        chosen, the choice is logged and the trial's ``(K, P)`` buffer dropped (``batched`` may not
        need it, ``loop`` makes it again)."""
        mode, before = self._mode, self._mode.name
        with mode.timed(device_of):
            yield
        if mode is self._mode and before == "auto" and mode.name != "auto":
            self._buffers.pop("jacobian", None)
            log.info("jacobian.mode=auto chose %s (%s)", mode.name, mode.trial.summary())

    def _with_fallback(self, run: Callable[[Mode], T]) -> T:
        """``run(mode)``; if a vmapped pass cannot run, warns once and runs it again with ``loop``,
        the engine's mode for the rest of the run."""
        try:
            return run(self._mode)
        except Unbatchable as error:
            warnings.warn(f"jacobian.mode=batched is not possible for this model ({error}); using jacobian.mode=loop", RuntimeWarning, stacklevel=3)
            self._mode = self._mode.fall_back()
            return run(self._mode)

    def _fill_jacobians(self, buffer: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None = None) -> None:
        """``buffer[n]`` = the Jacobian of sample ``n`` (grouped by ``averaging``), by the engine's mode."""
        self._with_fallback(lambda mode: mode.fill_jacobians(buffer, backpropagated, shared, averaging))

    def jacobians(
        self, losses: Tensor, representations: Sequence[Representation | SeparateInputs | None], shared: Sequence[nn.Parameter], separate: Sequence[Sequence[Tensor]] | None = None
    ) -> Tensor:
        """The Jacobians ``(N, K, P)`` of the losses ``(N, K)`` of ``N`` samples (``separate``: as
        in ``write_gradients``): a view of the reused buffer."""
        buffer = self._jacobian_buffer(shared)((*losses.shape, numel(shared)))
        backpropagated, _ = self.backward_through_heads(separate if separate is not None else losses, losses, representations, heads=())
        self._fill_jacobians(buffer, backpropagated, shared)
        return buffer

    def task_gradients(
        self, losses: Sequence[Tensor], representation: Representation | SeparateInputs | None, shared: Sequence[nn.Parameter], heads: Sequence[Sequence[nn.Parameter]]
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """Every task's gradients of one sample, from its ``K`` separate ``losses``: the Jacobian
        ``(K, P)`` of the shared parameters (a view of the reused buffer) and task ``k``'s gradients
        on ``heads[k]``, its own head (zeros where its loss does not reach). Run by the engine's
        mode (timed by ``auto``'s trial); the graph is kept."""
        flat_heads = [parameter for head in heads for parameter in head]
        with self._step(shared[0]):
            backpropagated, own_gradients = self.backward_through_heads([losses], torch.stack(list(losses))[None], [representation], flat_heads)
            jacobian = self._jacobian_buffer(shared)((1, len(losses), numel(shared)))
            self._fill_jacobians(jacobian, backpropagated, shared)
        gradients = iter(own_memory(own_gradients, flat_heads))
        return jacobian[0], [[next(gradients) for _ in head] for head in heads]

    def backward_through_heads(
        self, separate: Sequence[Sequence[Tensor]], losses: Tensor, representations: Sequence[Representation | SeparateInputs | None], heads: Sequence[nn.Parameter]
    ) -> tuple[list[Backpropagated], list[Tensor | None]]:
        """The backward pass down to the shared representations. Returns, for every sample, what
        the encoder part backpropagates: ``(z, dL_k/dz for every k)`` (for linear heads in ``rep``
        mode as products, ``LinearHeadGradients``), or on the general path
        ``(losses, identity)``; and the heads' gradients of the losses' sum over tasks, averaged
        over the samples (None for a parameter no loss reaches)."""
        if representations and all(isinstance(representation, Representation) and representation.copies is not None for representation in representations):
            return self._through_head_copies(separate, representations, heads)
        backpropagated = [self._cotangents(separate[sample], losses[sample], representation, sample) for sample, representation in enumerate(representations)]
        own_gradients = torch.autograd.grad(losses.sum() / len(losses), heads, retain_graph=True, allow_unused=True) if heads else ()
        return backpropagated, list(own_gradients)

    def _through_head_copies(
        self, separate: Sequence[Sequence[Tensor]], representations: Sequence[Representation], heads: Sequence[nn.Parameter]
    ) -> tuple[list[Backpropagated], list[Tensor | None]]:
        """``backward_through_heads`` for heads that read their own copies of ``z``: one backward pass of
        all the losses, in which each head is traversed once; the gradient that reaches task
        ``k``'s copy is ``dL_k/dz``. For linear heads (``Representation.linear_heads``) the pass
        stops at their outputs, and ``dL_k/dz`` is kept as a product (``LinearHeadGradients``)."""
        linear = all(representation.linear_heads is not None for representation in representations)
        ends = [end for representation in representations for end in (representation.linear_heads.outputs if linear else representation.copies)]
        total = sum(loss for sample in separate for loss in sample)
        gradients = torch.autograd.grad(total, [*ends, *heads], retain_graph=True, allow_unused=True)
        backpropagated, start = [], 0
        for sample, representation in enumerate(representations):
            count = len(representation.copies)
            if linear:
                rows = representation.linear_heads.gradients(gradients[start : start + count], representation.tensor.shape)
            else:
                rows = self._as_rows(gradients[start : start + count], representation.tensor, sample)
            backpropagated.append((representation.tensor, rows))
            start += count
        own_gradients = list(gradients[len(ends) :])
        if len(representations) > 1:
            own_gradients = [None if gradient is None else gradient / len(representations) for gradient in own_gradients]
        return backpropagated, own_gradients

    def _representation_gradients(self, losses: Sequence[Tensor], representation: Tensor, sample: int = 0) -> Tensor | tuple[Tensor, ...]:
        """``dL_k/dz`` for every task (``_as_rows``), for heads that read ``z`` itself: one
        gradient per task loss, through that task's head alone when the losses are separate tensors
        (not entries of a stacked one)."""
        return self._as_rows([torch.autograd.grad(loss, representation, retain_graph=True, allow_unused=True)[0] for loss in losses], representation, sample)

    def _as_rows(self, gradients: Sequence[Tensor | None], representation: Tensor, sample: int) -> Tensor | tuple[Tensor, ...]:
        """The ``K`` gradients ``dL_k/dz`` as the mode takes them: as they are in ``loop`` mode,
        which backpropagates one at a time; stacked in the reused buffer of ``sample`` otherwise.
        A gradient of None (the loss does not reach it) is zeros."""
        if not self._mode.stacks_rows:
            return tuple(torch.zeros_like(representation) if gradient is None else gradient for gradient in gradients)
        rows = self._buffer(f"representation{sample}", (len(gradients), *representation.shape), representation)
        copy_rows(gradients, rows)
        return rows

    def _cotangents(self, separate: Sequence[Tensor], losses: Tensor, representation: Representation | SeparateInputs | None, sample: int) -> Backpropagated:
        """What to backpropagate to the shared parameters: the representation with the per-task
        ``dL_k/dz`` (from the ``separate`` losses), or (general path) the stacked losses with the
        rows of the identity; for a batch per task, the separate losses of their own graphs."""
        if isinstance(representation, SeparateInputs):
            return SeparateGraphs(tuple(separate))
        if representation is None:
            return losses, self._identity(len(losses), losses)
        return representation.tensor, self._representation_gradients(separate, representation.tensor, sample)

    def _jacobian_buffer(self, shared: Sequence[nn.Parameter]) -> Callable[[tuple[int, ...]], Tensor]:
        """The reused ``(N, K, P)`` Jacobian buffer of a shape, like the shared parameters."""
        return lambda shape: self._buffer("jacobian", shape, shared[0])

    def _identity(self, size: int, like: Tensor) -> Tensor:
        identity = self._buffers.get("identity")
        if identity is None or len(identity) != size or identity.device != like.device or identity.dtype != like.dtype:
            identity = self._buffers["identity"] = torch.eye(size, dtype=like.dtype, device=like.device)
        return identity

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The buffer ``name``, reallocated only when its shape, dtype or device changes."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer
