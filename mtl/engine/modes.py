"""The Jacobian engine's modes (``jacobian.mode``): how the encoder part of a gradient step is run.

The engine (``mtl.engine.jacobian_modes.JacobianEngine``) runs the forward pass and the backward
pass through the heads, down to what each task backpropagates into the encoder: the cotangents
``dL_k/dz`` at the representation ``z`` (or, on the general path, the rows of the identity at the
losses). A mode turns them into the shared parameters' update:

- ``LoopRows`` (``loop``): ``K`` vector-Jacobian products through the encoder, one
  ``torch.autograd.grad`` each, into the rows of the Jacobian.
- ``BatchedRows`` (``batched``): the same products as one vmapped call per ``chunk`` tasks
  (``mtl.engine.jacobian.batched_vector_jacobian_products``). A call of several tasks that runs out
  of memory halves the chunk, with a warning, and runs again (``mtl.task_chunks``); a call vmap
  cannot run raises
  ``Unbatchable``, after which the engine runs ``loop``. A Gramian weighting whose tasks all fit
  in one call takes the per-parameter blocks that call returns (``combine_blocks``), and the
  ``(K, P)`` buffer is never filled.
- ``RepresentationMode`` (``rep``): MGDA-UB; the method aggregates the representation gradients
  and its direction is backpropagated through the encoder once.
- ``AutoMode`` (``auto``, ``mtl.engine.auto_mode``): ``batched`` or ``loop``, whichever makes the
  whole step faster.

Each mode states the facts the engine reads: ``name``, ``exact`` (whether it gives the Jacobian of
the shared parameters, which DDP's exact sync shares) and ``stacks_rows`` (whether it takes the
``K`` cotangents stacked in one tensor).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl.engine.jacobian import batched_vector_jacobian_products, numel, own_memory, scatter
from mtl.engine.linear_heads import LinearHeadGradients
from mtl.engine.separate_inputs import SeparateGraphs
from mtl.methods.base import GradientAggregator
from mtl.task_chunks import TaskChunks, first_line

RepresentationGradients = Tensor | tuple[Tensor, ...] | LinearHeadGradients
"""Every task's ``dL_k/dz``: stacked ``(K, *z.shape)``, as the ``K`` tensors autograd returned
(``loop`` takes them one at a time, so they are not copied), or as linear heads' products."""

Backpropagated = tuple[Tensor, RepresentationGradients] | SeparateGraphs
"""What one sample backpropagates into the encoder: the outputs (``z``, or the losses on the
general path) and the cotangents of every task (or group of tasks); for a batch per task, the
task losses of their separate graphs (``mtl.engine.separate_inputs``), which every exact mode
backpropagates one by one."""

Buffer = Callable[[tuple[int, ...]], Tensor]
"""The engine's reused Jacobian buffer of a shape."""

class Unbatchable(RuntimeError):
    """A vmapped pass that cannot run: the engine takes ``loop`` for the rest of the run."""


class LoopRows:
    """``jacobian.mode=loop``: one backward pass through the encoder per task."""

    name = "loop"
    exact = True
    stacks_rows = False

    @property
    def running(self) -> LoopRows:
        """The mode that runs the step: this one."""
        return self

    def timed(self, device_of: Tensor) -> contextlib.AbstractContextManager[None]:
        """Nothing to time: only ``auto`` times its steps."""
        return contextlib.nullcontext()

    def fill(self, rows: Tensor, outputs: Tensor, cotangents: Tensor | tuple[Tensor, ...], shared: Sequence[nn.Parameter]) -> None:
        """``rows[k] = vec((d outputs/dθ)ᵀ · cotangents[k])``."""
        for row, cotangent in zip(rows, cotangents):
            scatter(torch.autograd.grad(outputs, shared, grad_outputs=cotangent, retain_graph=True, allow_unused=True), shared, row)

    def fill_jacobians(self, buffer: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None = None) -> None:
        """``buffer[n]`` = the Jacobian of sample ``n``, its rows averaged over groups of tasks by
        ``averaging (C, K)`` when given (``C`` backward passes through the encoder instead of ``K``)."""
        for rows, sample in zip(buffer, backpropagated):
            if isinstance(sample, SeparateGraphs):
                sample.fill(rows, shared, averaging)
            else:
                outputs, cotangents = sample
                self.fill(rows, outputs, grouped_cotangents(cotangents, averaging), shared)

    def direction(
        self, method: GradientAggregator, losses: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None, buffer: Buffer
    ) -> list[Tensor]:
        """The method's direction from the Jacobians ``(N, C, P)`` at the (group) ``losses (N, C)``:
        one tensor per shared parameter, each with memory of its own."""
        jacobians = buffer((*losses.shape, numel(shared)))
        self.fill_jacobians(jacobians, backpropagated, shared, averaging)
        direction = method(jacobians[0], losses[0]) if len(losses) == 1 else method(jacobians, losses)
        # a copy: a method may return a view of the Jacobian buffer, which the next pass overwrites
        parts = direction.to(jacobians.dtype, copy=True).split([parameter.numel() for parameter in shared])
        return [part.view_as(parameter) for part, parameter in zip(parts, shared)]

    def fall_back(self) -> LoopRows:
        """The mode after a pass raised ``Unbatchable``: ``loop``."""
        return LoopRows()


class BatchedRows(LoopRows):
    """``jacobian.mode=batched``: the products of ``chunk`` tasks (all when None) in one vmapped
    call. ``out_of_memory_falls_back``: whether a call of one task that runs out of memory raises
    ``Unbatchable`` (``auto``, which has ``loop`` to fall back to) or the error itself."""

    name = "batched"
    stacks_rows = True

    def __init__(self, chunk: int | None = None, out_of_memory_falls_back: bool = False) -> None:
        self.chunks = TaskChunks(chunk, "jacobian.mode=batched", "jacobian.chunk")
        self.out_of_memory_falls_back = out_of_memory_falls_back

    @property
    def chunk(self) -> int | None:
        return self.chunks.size

    def fill(self, rows: Tensor, outputs: Tensor, cotangents: Tensor, shared: Sequence[nn.Parameter]) -> None:
        def call(tasks: range) -> None:
            block = slice(tasks.start, tasks.stop)
            scatter(self.products(outputs, cotangents[block], shared), shared, rows[block])

        with self._one_task_out_of_memory():
            self.chunks.run(len(rows), call)

    def products(self, outputs: Tensor, cotangents: Tensor, shared: Sequence[nn.Parameter]) -> tuple[Tensor | None, ...]:
        """The vector-Jacobian products of all ``cotangents`` in one vmapped call: per parameter
        ``(len(cotangents), *parameter.shape)``, or None where no output depends on it."""
        try:
            return batched_vector_jacobian_products(outputs, cotangents, shared)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:  # what vmap cannot run: NumPy, .item(), data-dependent control flow
            raise Unbatchable(first_line(error)) from error

    @contextlib.contextmanager
    def _one_task_out_of_memory(self) -> Iterator[None]:
        """A call of one task that ran out of memory (which ``TaskChunks`` raises again) raises
        ``Unbatchable`` when ``loop`` can take over, itself otherwise."""
        try:
            yield
        except torch.OutOfMemoryError as error:
            if not self.out_of_memory_falls_back:
                raise
            raise Unbatchable(first_line(error)) from error

    def direction(
        self, method: GradientAggregator, losses: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None, buffer: Buffer
    ) -> list[Tensor]:
        """A Gramian weighting of one sample whose tasks fit in one call takes the Jacobian as the
        blocks of columns that call returns, never copied into the ``(K, P)`` buffer (so the step
        holds one Jacobian instead of two); otherwise, and after that call ran out of memory, the
        buffer is filled in chunks (and for a batch per task, which has nothing to batch)."""
        one_call = len(losses) == 1 and (self.chunk or math.inf) >= losses.shape[1] and not isinstance(backpropagated[0], SeparateGraphs)
        if "gramian" in method.requires and one_call:
            outputs, cotangents = backpropagated[0]
            cotangents = grouped_cotangents(cotangents, averaging)
            try:
                gradients = self.products(outputs, cotangents, shared)
            except torch.OutOfMemoryError as error:
                with self._one_task_out_of_memory():
                    self.chunks.halve(len(cotangents), error)
            else:
                parts = iter(method.combine_blocks([gradient.flatten(start_dim=1) for gradient in gradients if gradient is not None], losses[0]))
                return [torch.zeros_like(parameter) if gradient is None else next(parts).view_as(parameter) for gradient, parameter in zip(gradients, shared)]
        return super().direction(method, losses, backpropagated, shared, averaging, buffer)


class RepresentationMode(LoopRows):
    """``jacobian.mode=rep``: MGDA-UB (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective
    Optimization", arXiv:1810.04650, Section 3.3; LibMTL's ``rep_grad``).

    The aggregator acts on ``Z (K, B·D)`` with ``Z[k] = vec(dL_k/dz)``, and its direction ``d`` is
    backpropagated once: ``shared.grad = (dz/dθ)ᵀ · reshape(d, z.shape)``. Sener & Koltun show
    (their Theorem 1) that under a full-rank ``dz/dθ`` the min-norm weights of ``Z`` give a
    direction that still decreases every loss; for other aggregators it is the same approximation.
    When every head is one linear layer and the aggregator a Gramian weighting, ``Z`` is never
    formed: its Gramian and the direction come from the heads' output gradients and weights
    (``mtl.engine.linear_heads``). A full Jacobian (task regrouping) is filled by ``loop``'s passes.
    """

    name = "rep"
    exact = False
    stacks_rows = True

    def direction(
        self, method: GradientAggregator, losses: Tensor, backpropagated: Sequence[Backpropagated], shared: Sequence[nn.Parameter], averaging: Tensor | None, buffer: Buffer
    ) -> list[Tensor]:
        """Aggregate ``Z`` (grouped by ``averaging``) of the one sample at its group ``losses``,
        and backpropagate the direction through the encoder."""
        representation, cotangents = backpropagated[0]
        if isinstance(cotangents, LinearHeadGradients) and "gramian" in method.requires:
            direction = linear_heads_direction(method, cotangents, losses[0], averaging).to(representation.dtype)
        else:
            rows = dense(cotangents).flatten(start_dim=1)
            if averaging is not None:
                rows = averaging @ rows
            direction = method(rows, losses[0]).view_as(representation)
        return own_memory(torch.autograd.grad(representation, shared, grad_outputs=direction, retain_graph=True, allow_unused=True), shared)


def linear_heads_direction(method: GradientAggregator, gradients: LinearHeadGradients, losses: Tensor, averaging: Tensor | None) -> Tensor:
    """A Gramian weighting's direction ``Σ_c w_c Σ_k averaging[c, k] Z_k`` (``Σ_k w_k Z_k`` without
    groups) from the Gramian of the products ``Z_k``, grouped as ``averaging Z Zᵀ averagingᵀ``."""
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
