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
alone) and the heads' gradients from one more pass, so its heads are traversed twice. The modes
(``jacobian.mode``) differ in how the encoder part is run:

- ``loop``: ``K`` vector-Jacobian products through the encoder, one ``torch.autograd.grad`` each.
- ``batched``: the same products as one vmapped ``torch.autograd.grad`` call per ``chunk`` tasks
  (all ``K`` at once when ``chunk`` is None; ``mtl.engine.jacobian.batched_vector_jacobian_products``);
  the memory of the encoder's backward grows with the chunk. A pass that runs out of memory
  halves the chunk, with a warning, and runs again; in ``auto`` mode a pass of one task that runs
  out of memory makes the choice ``loop``. A pass that vmap cannot run (it raises, e.g. on NumPy
  or data-dependent control flow) switches the engine to ``loop`` for the rest of the run with
  one warning that gives vmap's reason.
- ``rep``: MGDA-UB (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization",
  arXiv:1810.04650, Section 3.3; LibMTL's ``rep_grad``). The aggregator acts on the gradients with
  respect to the representation, ``Z (K, B·D)`` with ``Z[k] = vec(dL_k/dz)``, and its direction
  ``d`` is backpropagated once: ``shared.grad = (dz/dθ)ᵀ · reshape(d, z.shape)``. Sener & Koltun
  show (their Theorem 1) that under a full-rank ``dz/dθ`` the min-norm weights of ``Z`` give a
  direction that still decreases every loss; for other aggregators it is the same approximation.
  Stateful aggregators keep state of ``B·D`` columns instead of ``P``. When every head is one
  linear layer and the aggregator a Gramian weighting, ``Z`` is never formed: its Gramian and the
  direction come from the heads' output gradients and weights (``mtl.engine.linear_heads``), and
  the step costs about one ordinary training step at any ``K``.
- ``auto`` (default): ``batched`` or ``loop``, whichever makes the whole gradient step faster
  (``ModeTrial``: the first ``1 + TRIAL_STEPS`` calls of ``write_gradients`` run ``batched``, the
  next as many ``loop``; each mode's first call is its warm-up and its best later timing counts);
  decided once and logged at INFO. A step in which ``batched`` ran out of memory and halved its
  chunk starts ``batched``'s steps again; after a choice of ``batched``, the whole trial. The
  step is timed, not the Jacobian alone, since a mode's memory traffic also slows what follows it
  (the method's Gramian, the write into ``.grad``).

Both exact modes give the reference Jacobian (up to float rounding) on any model, BatchNorm and
dropout included, since the forward pass is the ordinary one. They assume that ``decode`` uses no
shared parameter (true of hard parameter sharing). A model without ``encode``/``decode`` takes the
general path: the ``K`` rows are vector-Jacobian products of the losses through the whole graph,
looped or batched in the same way. ``rep`` needs a representation and one sample per step.

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
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian import batched_vector_jacobian_products, set_gradient
from mtl.engine.linear_heads import LinearHeadGradients, LinearHeadOutputs, decode_recording_linear_heads
from mtl.engine.task_groups import TaskGroups
from mtl.methods.base import GradientAggregator, GramianWeighting
from mtl.methods.task_state import TaskStateAggregator
from mtl.task_chunks import first_line, halved_chunk

RepresentationGradients = Tensor | tuple[Tensor, ...] | LinearHeadGradients
"""Every task's ``dL_k/dz``: stacked ``(K, *z.shape)``, as the ``K`` tensors autograd returned
(``loop`` takes them one at a time, so they are not copied), or as linear heads' products."""

MODES = ("auto", "loop", "batched", "rep")
EXACT_MODES = ("loop", "batched")
TRIAL_STEPS = 3

log = logging.getLogger(__name__)


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


class ModeTrial:
    """``jacobian.mode=auto``'s decision: each exact mode in turn runs a warm-up step (buffers
    allocated, caches filled; not counted) and ``steps`` timed ones. The mode with the best timed
    step is the choice. ``batched`` goes first, so that an op without a batching rule shows on the
    first step. One mode after the other, not alternating: ``loop``'s ``(K, P)`` buffer, which
    ``batched`` does not fill for a Gramian weighting, is then not held during ``batched``'s steps,
    and the trial's peak memory is the larger of the two modes', not their sum."""

    def __init__(self, modes: Sequence[str] = ("batched", "loop"), steps: int = TRIAL_STEPS) -> None:
        self.timings: dict[str, list[float]] = {mode: [] for mode in modes}
        self.steps = steps

    @property
    def mode(self) -> str:
        """The mode whose turn it is: the first that has not had all its steps."""
        return next((mode for mode, timings in self.timings.items() if len(timings) <= self.steps), list(self.timings)[-1])

    def record(self, mode: str, seconds: float) -> str | None:
        """Count a step of ``mode``; returns the choice once every mode has had all its steps."""
        self.timings[mode].append(seconds)
        if any(len(timings) <= self.steps for timings in self.timings.values()):
            return None
        return min(self.timings, key=self.best)

    def restart(self, mode: str) -> None:
        """Count ``mode``'s steps from nothing again, its next one a warm-up: the engine has
        changed how it runs the mode."""
        self.timings[mode] = []

    def best(self, mode: str) -> float:
        """The best timed step of ``mode`` (its warm-up left out)."""
        return min(self.timings[mode][1:])

    def summary(self) -> str:
        return ", ".join(f"{mode} {self.best(mode) * 1e3:.2f} ms" for mode in self.timings) + " per gradient step"


class JacobianEngine:
    """Computes the task Jacobian (or, in ``rep`` mode, the representation gradients) and writes
    the aggregated direction into the shared parameters' ``.grad``.

    ``mode`` is one of ``MODES``; ``chunk`` bounds the number of tasks per batched call (``None``:
    all tasks at once). ``groups`` and ``regroup_every`` group the tasks (``mtl.engine.task_groups``):
    the aggregator then sees one row per group.
    """

    def __init__(self, mode: str = "auto", chunk: int | None = None, groups: int | Sequence[Sequence[str]] | None = None, regroup_every: int = 100) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown jacobian mode '{mode}'; valid modes: {list(MODES)}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"jacobian chunk must be a positive number of tasks or null, got {chunk}")
        self.mode = mode
        self.automatic = mode == "auto"
        """Whether the mode was ``auto``: ``mode`` becomes the trial's choice once it is made."""
        self.chunk = chunk
        self.groups = TaskGroups(groups, regroup_every)
        self._trial = ModeTrial()
        self._buffers: dict[str, Tensor] = {}

    def bind(self, task_names: Sequence[str]) -> int:
        """Resolve ``jacobian.groups`` for these tasks; returns how many rows the aggregator sees
        (its ``num_tasks``)."""
        return self.groups.bind(task_names)

    def check(self, model: nn.Module, method: GradientAggregator) -> None:
        """Refuse at start-up the combinations the engine cannot run."""
        if self.mode != "rep":
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

    def forward(self, model: nn.Module, inputs: Tensor, task_names: Sequence[str] | None = None) -> tuple[Representation | None, dict[str, Tensor]]:
        """The shared representation (None for a model without one) and the predictions. Given
        the ``task_names`` (the order of the losses) and a model with ``decode_each``, each task's
        head reads its own leaf copy of ``z``; in ``rep`` mode the outputs of linear heads are recorded."""
        if not has_representation(model):
            return None, model(inputs)
        representation = model.encode(inputs)
        decode_each = getattr(model, "decode_each", None)
        if task_names is None or not callable(decode_each):
            return Representation(representation), model.decode(representation)
        copies = {name: representation.detach().requires_grad_() for name in task_names}
        if self.mode != "rep":
            return Representation(representation, tuple(copies.values())), decode_each(copies)
        predictions, linear_heads = decode_recording_linear_heads(model, decode_each, copies)
        return Representation(representation, tuple(copies.values()), linear_heads), predictions

    def write_gradients(
        self,
        method: GradientAggregator,
        losses: Tensor,
        representations: Sequence[Representation | None],
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
        with self._trial_step(shared[0]):
            if self.mode == "rep" and sync.exact and sync.active:
                raise ValueError("jacobian.mode=rep aggregates gradients of this process's representation; with several processes use distributed.sync=local or an exact jacobian mode")
            backpropagated, own_gradients = self.backward_through_heads(separate if separate is not None else losses, losses, representations, heads)
            if self.groups.due():
                # every regroup_every steps only: not worth keeping a second (N, K, P) buffer for
                ungrouped = torch.empty((*losses.shape, numel(shared)), dtype=shared[0].dtype, device=shared[0].device)
                self._fill_jacobians(ungrouped, backpropagated, shared)
                (jacobian,) = sync.average([ungrouped.mean(dim=0)], batch_size)
                self.groups.regroup(jacobian)
            averaging = None if self.groups.trivial else self.groups.matrix(losses)
            group_losses = grouped(losses, averaging).detach()
            samples, rows_per_sample = group_losses.shape
            if sync.exact and sync.active and self.mode != "rep":
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
            else:
                # one process (where exact and local agree): the gradients become the .grad as they are, without a copy
                direction = self._direction(method, group_losses, backpropagated, shared, averaging)
                gradients = sync.average([*direction, *own_memory(own_gradients, heads)], batch_size)
                for parameter, gradient in zip([*shared, *heads], gradients):
                    parameter.grad = gradient

    @contextlib.contextmanager
    def _trial_step(self, device_of: Tensor) -> Iterator[None]:
        """In ``auto`` mode, times the gradient step it wraps as a step of the mode on trial
        (``ModeTrial``, waiting for the device to finish) and, once the trial has chosen, switches
        the engine to that mode and logs it; in other modes it does nothing."""
        if self.mode != "auto":
            yield
            return
        mode, chunk = self._trial.mode, self.chunk
        synchronize(device_of)
        start = time.perf_counter()
        yield
        synchronize(device_of)
        if self.mode != "auto":  # batched fell back to loop
            return
        if self.chunk != chunk:  # batched ran out of memory, and its later steps run in chunks
            self._trial.restart(mode)
            return
        choice = self._trial.record(mode, time.perf_counter() - start)
        if choice is not None:
            self.mode = choice
            self._buffers.pop("jacobian", None)  # the trial's (K, P) buffer: batched may not need it, loop makes it again
            log.info("jacobian.mode=auto chose %s (%s)", choice, self._trial.summary())

    def _direction(
        self,
        method: GradientAggregator,
        group_losses: Tensor,
        backpropagated: Sequence[tuple[Tensor, RepresentationGradients]],
        shared: Sequence[nn.Parameter],
        averaging: Tensor | None,
    ) -> list[Tensor]:
        """This process's direction from its own task gradients, grouped by ``averaging``: one
        tensor per shared parameter, each with memory of its own."""
        if self.mode == "rep":
            return self._representation_direction(method, group_losses[0], backpropagated[0], shared, averaging)
        if self._exact_mode == "batched" and isinstance(method, GramianWeighting) and len(group_losses) == 1 and (self.chunk or math.inf) >= group_losses.shape[1]:
            direction = self._blockwise_direction(method, group_losses[0], backpropagated[0], shared, averaging)
            if direction is not None:
                return direction
        jacobians = self._buffer("jacobian", (*group_losses.shape, numel(shared)), shared[0])
        self._fill_jacobians(jacobians, backpropagated, shared, averaging)
        direction = method(jacobians[0], group_losses[0]) if len(group_losses) == 1 else method(jacobians, group_losses)
        # a copy: a method may return a view of the Jacobian buffer, which the next pass overwrites
        parts = direction.to(jacobians.dtype, copy=True).split([parameter.numel() for parameter in shared])
        return [part.view_as(parameter) for part, parameter in zip(parts, shared)]

    def jacobians(
        self, losses: Tensor, representations: Sequence[Representation | None], shared: Sequence[nn.Parameter], separate: Sequence[Sequence[Tensor]] | None = None
    ) -> Tensor:
        """The Jacobians ``(N, K, P)`` of the losses ``(N, K)`` of ``N`` samples (``separate``: as
        in ``write_gradients``): a view of the reused buffer."""
        buffer = self._buffer("jacobian", (*losses.shape, numel(shared)), shared[0])
        backpropagated, _ = self.backward_through_heads(separate if separate is not None else losses, losses, representations, heads=())
        self._fill_jacobians(buffer, backpropagated, shared)
        return buffer

    def backward_through_heads(
        self, separate: Sequence[Sequence[Tensor]], losses: Tensor, representations: Sequence[Representation | None], heads: Sequence[nn.Parameter]
    ) -> tuple[list[tuple[Tensor, RepresentationGradients]], list[Tensor | None]]:
        """The backward pass down to the shared representations. Returns, for every sample, what
        the encoder part backpropagates: ``(z, dL_k/dz for every k)`` (for linear heads in ``rep``
        mode as products, ``LinearHeadGradients``), or on the general path
        ``(losses, identity)``; and the heads' gradients of the losses' sum over tasks, averaged
        over the samples (None for a parameter no loss reaches)."""
        if representations and all(representation is not None and representation.copies is not None for representation in representations):
            return self._through_head_copies(separate, representations, heads)
        backpropagated = [self._cotangents(separate[sample], losses[sample], representation, sample) for sample, representation in enumerate(representations)]
        own_gradients = torch.autograd.grad(losses.sum() / len(losses), heads, retain_graph=True, allow_unused=True) if heads else ()
        return backpropagated, list(own_gradients)

    def _through_head_copies(
        self, separate: Sequence[Sequence[Tensor]], representations: Sequence[Representation], heads: Sequence[nn.Parameter]
    ) -> tuple[list[tuple[Tensor, RepresentationGradients]], list[Tensor | None]]:
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

    def _fill_jacobians(
        self, buffer: Tensor, backpropagated: Sequence[tuple[Tensor, RepresentationGradients]], shared: Sequence[nn.Parameter], averaging: Tensor | None = None
    ) -> None:
        """``buffer[n]`` = the Jacobian of sample ``n``, its rows averaged over groups of tasks by
        ``averaging (C, K)`` when given (``C`` backward passes through the encoder instead of ``K``)."""
        for rows, (outputs, cotangents) in zip(buffer, backpropagated):
            self._fill(rows, outputs, grouped_cotangents(cotangents, averaging), shared)

    def _representation_gradients(self, losses: Sequence[Tensor], representation: Tensor, sample: int = 0) -> Tensor | tuple[Tensor, ...]:
        """``dL_k/dz`` for every task (``_as_rows``), for heads that read ``z`` itself: one
        gradient per task loss, through that task's head alone when the losses are separate tensors
        (not entries of a stacked one)."""
        return self._as_rows([torch.autograd.grad(loss, representation, retain_graph=True, allow_unused=True)[0] for loss in losses], representation, sample)

    def _as_rows(self, gradients: Sequence[Tensor | None], representation: Tensor, sample: int) -> Tensor | tuple[Tensor, ...]:
        """The ``K`` gradients ``dL_k/dz`` as the encoder part takes them: as they are in ``loop``
        mode, which backpropagates one at a time; stacked in the reused buffer of ``sample``
        otherwise. A gradient of None (the loss does not reach it) is zeros."""
        if self._exact_mode == "loop":
            return tuple(torch.zeros_like(representation) if gradient is None else gradient for gradient in gradients)
        rows = self._buffer(f"representation{sample}", (len(gradients), *representation.shape), representation)
        copy_rows(gradients, rows)
        return rows

    def _cotangents(self, separate: Sequence[Tensor], losses: Tensor, representation: Representation | None, sample: int) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """What to backpropagate to the shared parameters: the representation with the per-task
        ``dL_k/dz`` (from the ``separate`` losses), or (general path) the stacked losses with the
        rows of the identity."""
        if representation is None:
            return losses, self._identity(len(losses), losses)
        return representation.tensor, self._representation_gradients(separate, representation.tensor, sample)

    def _fill(self, rows: Tensor, outputs: Tensor, cotangents: Tensor | tuple[Tensor, ...], shared: Sequence[nn.Parameter]) -> None:
        """``rows[k] = vec((d outputs/dθ)ᵀ · cotangents[k])`` in the engine's exact mode."""
        if self._exact_mode == "batched" and self._fill_batched(rows, outputs, cotangents, shared):
            return
        self._fill_looped(rows, outputs, cotangents, shared)

    @property
    def _exact_mode(self) -> str:
        """The engine's mode; in ``auto`` mode, the one on trial."""
        return self._trial.mode if self.mode == "auto" else self.mode

    def _fill_looped(self, rows: Tensor, outputs: Tensor, cotangents: Tensor | tuple[Tensor, ...], shared: Sequence[nn.Parameter]) -> None:
        for row, cotangent in zip(rows, cotangents):
            gradients = torch.autograd.grad(outputs, shared, grad_outputs=cotangent, retain_graph=True, allow_unused=True)
            scatter(gradients, shared, row)

    def _fill_batched(self, rows: Tensor, outputs: Tensor, cotangents: Tensor, shared: Sequence[nn.Parameter]) -> bool:
        """``_fill`` by one vmapped pass per chunk of tasks; a pass that ran out of memory is run
        again in the smaller chunks it left (``_batched_gradients``). False, with ``rows`` not all
        filled, when the engine fell back to ``loop``."""
        start = 0
        while start < len(rows):
            block = slice(start, start + (self.chunk or len(rows)))
            gradients = self._batched_gradients(outputs, cotangents[block], shared)
            if gradients is not None:
                scatter(gradients, shared, rows[block])
                start = block.stop
            elif self._exact_mode == "loop":
                return False
        return True

    def _batched_gradients(self, outputs: Tensor, cotangents: Tensor, shared: Sequence[nn.Parameter]) -> tuple[Tensor | None, ...] | None:
        """The vector-Jacobian products of all ``cotangents`` in one vmapped pass: per parameter
        ``(len(cotangents), *parameter.shape)``, or None where no output depends on it.

        None when the pass failed. A pass of several tasks that ran out of memory sets ``chunk`` to
        half its tasks, for this and every later step, with a warning: the memory of a vmapped pass
        grows with its tasks. If ``auto`` had already chosen ``batched``, its trial starts again,
        since ``batched`` now runs otherwise than it was timed. When vmap cannot run the pass, or
        in ``auto`` mode when a pass of one task ran out of memory, the engine uses ``loop`` for
        the rest of the run (``loop`` holds one task's backward at a time, without vmap). A pass
        of one task that runs out of memory in ``batched`` mode raises."""
        try:
            return batched_vector_jacobian_products(outputs, cotangents, shared)
        except torch.OutOfMemoryError as error:
            if len(cotangents) > 1:
                self.chunk = halved_chunk(len(cotangents), error, "jacobian.mode=batched", "jacobian.chunk")
                if self.automatic and self.mode == "batched":
                    self.mode, self._trial = "auto", ModeTrial()
                return None
            if not self.automatic:
                raise
            self._fall_back(error)
            return None
        except RuntimeError as error:
            self._fall_back(error)
            return None

    def _blockwise_direction(
        self, method: GramianWeighting, losses: Tensor, backpropagated: tuple[Tensor, RepresentationGradients], shared: Sequence[nn.Parameter], averaging: Tensor | None
    ) -> list[Tensor] | None:
        """``batched`` mode's direction for a Gramian weighting when every task fits in one vmapped
        pass: that pass returns the Jacobian as one block of columns per parameter, which the method
        takes as they are (``GramianWeighting.combine_blocks``). They are never copied into the
        ``(K, P)`` buffer, so the step holds one Jacobian instead of two. None when the pass failed
        (``_batched_gradients``): the buffer is filled then, by ``loop`` or in chunks."""
        outputs, cotangents = backpropagated
        gradients = self._batched_gradients(outputs, grouped_cotangents(cotangents, averaging), shared)
        if gradients is None:
            return None
        parts = iter(method.combine_blocks([gradient.flatten(start_dim=1) for gradient in gradients if gradient is not None], losses))
        return [torch.zeros_like(parameter) if gradient is None else next(parts).view_as(parameter) for gradient, parameter in zip(gradients, shared)]

    def _fall_back(self, error: RuntimeError) -> None:
        warnings.warn(f"jacobian.mode=batched is not possible for this model ({first_line(error)}); using jacobian.mode=loop", RuntimeWarning, stacklevel=2)
        self.mode = "loop"

    def _representation_direction(
        self,
        method: GradientAggregator,
        losses: Tensor,
        backpropagated: tuple[Tensor, RepresentationGradients],
        shared: Sequence[nn.Parameter],
        averaging: Tensor | None,
    ) -> list[Tensor]:
        """MGDA-UB: aggregate ``Z (K, B·D)`` (grouped by ``averaging``) at the group ``losses``,
        backpropagate the direction through the encoder once; one gradient per shared parameter
        (``_direction``). A Gramian weighting of linear heads' gradients takes the Gramian and the
        combination of their products."""
        representation, cotangents = backpropagated
        if isinstance(cotangents, LinearHeadGradients) and isinstance(method, GramianWeighting):
            direction = linear_heads_direction(method, cotangents, losses, averaging).to(representation.dtype)
        else:
            rows = dense(cotangents).flatten(start_dim=1)
            if averaging is not None:
                rows = averaging @ rows
            direction = method(rows, losses).view_as(representation)
        return own_memory(torch.autograd.grad(representation, shared, grad_outputs=direction, retain_graph=True, allow_unused=True), shared)

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


def linear_heads_direction(method: GramianWeighting, gradients: LinearHeadGradients, losses: Tensor, averaging: Tensor | None) -> Tensor:
    """``method``'s direction ``Σ_c w_c Σ_k averaging[c, k] Z_k`` (``Σ_k w_k Z_k`` without groups) from
    the Gramian of the products ``Z_k``, grouped as ``averaging Z Zᵀ averagingᵀ``."""
    gramian = gradients.gramian()
    if averaging is not None:
        averaging = averaging.to(gramian.dtype)
        gramian = averaging @ gramian @ averaging.T
    weights = method.gramian_weights(gramian, losses)
    task_weights = weights if averaging is None else averaging.T.double().cpu() @ weights
    return gradients.combination(task_weights)


def dense(gradients: RepresentationGradients) -> Tensor:
    """The representation gradients ``(K, *z.shape)``: formed if they are held as products, stacked
    if they are separate tensors."""
    if isinstance(gradients, LinearHeadGradients):
        return gradients.dense()
    return torch.stack(gradients) if isinstance(gradients, tuple) else gradients


def grouped_cotangents(cotangents: RepresentationGradients, averaging: Tensor | None) -> Tensor | tuple[Tensor, ...]:
    """What the encoder part backpropagates: the representation gradients (separate tensors stay
    so), or with ``averaging (C, K)`` their means over the groups of tasks ``(C, *z.shape)``."""
    if averaging is None:
        return cotangents if isinstance(cotangents, tuple) else dense(cotangents)
    return torch.tensordot(averaging, dense(cotangents), dims=1)


def grouped(losses: Tensor, averaging: Tensor | None) -> Tensor:
    """The group losses ``(..., C)`` of task ``losses (..., K)`` (the losses themselves without groups)."""
    return losses if averaging is None else losses @ averaging.T


def numel(parameters: Sequence[nn.Parameter]) -> int:
    """The number of entries of all ``parameters`` together."""
    return sum(parameter.numel() for parameter in parameters)


def scatter(gradients: Sequence[Tensor | None], parameters: Sequence[nn.Parameter], rows: Tensor) -> None:
    """Copy per-parameter ``gradients`` (each ``(*batch, *parameter.shape)``) into the flat
    ``rows (*batch, P)``; a gradient of None (unused parameter) writes zeros."""
    offset = 0
    for gradient, parameter in zip(gradients, parameters):
        size = parameter.numel()
        block = rows[..., offset : offset + size]
        if gradient is None:
            block.zero_()
        else:
            block.copy_(gradient.reshape(block.shape))
        offset += size


def own_memory(gradients: Sequence[Tensor | None], parameters: Sequence[nn.Parameter]) -> list[Tensor]:
    """``gradients`` (from ``torch.autograd.grad``) as tensors the ``parameters`` may keep as
    ``.grad`` and change in place (gradient clipping does): zeros for None (no loss reaches the
    parameter), and a copy of a gradient that is not contiguous (autograd may return an expanded
    one) or that shares memory with an earlier one (autograd may hand one tensor to several inputs)."""
    owned, storages = [], set()
    for gradient, parameter in zip(gradients, parameters):
        if gradient is None:
            gradient = torch.zeros_like(parameter)
        elif not gradient.is_contiguous() or gradient.untyped_storage().data_ptr() in storages:
            gradient = gradient.clone(memory_format=torch.contiguous_format)
        storages.add(gradient.untyped_storage().data_ptr())
        owned.append(gradient)
    return owned


def copy_rows(gradients: Sequence[Tensor | None], rows: Tensor) -> None:
    """``rows[k] = gradients[k]``; a gradient of None (the loss does not reach it) writes zeros."""
    for row, gradient in zip(rows, gradients):
        if gradient is None:
            row.zero_()
        else:
            row.copy_(gradient)


def synchronize(device_of: Tensor) -> None:
    """Wait for the device of ``device_of`` to finish its queued work (nothing to wait for on the CPU)."""
    if device_of.is_cuda:
        torch.cuda.synchronize(device_of.device)
