"""Gradient aggregation across processes: the same update on ``W`` processes as on one.

Under data parallelism each process holds a shard of the global batch. A gradient aggregator is
nonlinear in the task gradients (MGDA of an average is not the average of MGDAs), so averaging
each process's aggregated direction, which is what plain DDP does, runs a different algorithm.
``distributed.sync`` chooses:

- ``exact`` (default): every process computes its task Jacobian ``G_r (K, P)`` without firing
  DDP's gradient hooks, and the processes average ``[G_r | head gradients | losses]`` in one
  all-reduce, weighted by their batch sizes ``b_r``: ``G = sum_r b_r G_r / sum_r b_r`` is the
  Jacobian of the mean loss over the global batch. Every process then runs the aggregator on the
  same ``G`` and losses (stochastic methods share the run's seed) and takes the same step.
  Communication: ``K·P + H + K + 1`` numbers per step (``H`` head parameters), against ``P + H``
  for plain DDP.
- ``local``: every process aggregates its own Jacobian and the processes average the directions
  and head gradients (``P + H + 1`` numbers): the cheap approximation, for comparison or when
  ``K·P`` floats do not fit.

Loss weightings are linear in the task gradients, so DDP's own reduction of the weighted-loss
gradient is exact once the weights come from the global losses: under ``exact`` the weights see
the losses averaged over the processes.

The buffer is all-reduced in place in slices of at most ``bucket_size`` numbers, launched
together and then awaited, so no second copy of a ``K·P`` buffer is ever allocated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

SYNCS = ("exact", "local")

DEFAULT_BUCKET = 2**24
"""Numbers per all-reduce call: 64 MiB of float32."""


def process_count() -> int:
    """The number of processes of the default process group; 1 outside a distributed run."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GradientSync:
    """How the gradients of one training step are shared between the processes of a run.

    ``sync`` is one of ``SYNCS``; ``bucket_size`` bounds the numbers per all-reduce call. Outside a
    distributed run (one process) every method here returns its input untouched, without cost.
    """

    def __init__(self, sync: str = "exact", bucket_size: int = DEFAULT_BUCKET) -> None:
        if sync not in SYNCS:
            raise ValueError(f"unknown distributed.sync '{sync}'; valid choices: {list(SYNCS)}")
        if bucket_size < 1:
            raise ValueError(f"distributed.bucket_size must be a positive number of elements, got {bucket_size}")
        self.sync = sync
        self.bucket_size = bucket_size
        self._paused = False

    @property
    def exact(self) -> bool:
        return self.sync == "exact"

    @property
    def active(self) -> bool:
        """Whether there is more than one process to share with (and sharing is not paused)."""
        return not self._paused and process_count() > 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Within: every process keeps its own values, nothing is shared (``sam.sync=local``'s
        clean pass)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def average_(self, flat: Tensor) -> None:
        """Replace the 1-d ``flat`` by its weighted average over the processes, in place.

        The last entry of ``flat`` is this process's weight ``b_r`` (its batch size); the others
        become ``sum_r b_r x_r / sum_r b_r`` and the last entry ``sum_r b_r``.
        """
        if not self.active:
            return
        values, weight = flat[:-1], flat[-1:]
        values.mul_(weight)
        pending = [dist.all_reduce(bucket, async_op=True) for bucket in flat.split(self.bucket_size)]
        for work in pending:
            work.wait()
        values.div_(weight)

    def average(self, tensors: Sequence[Tensor], weight: float) -> list[Tensor]:
        """The weighted averages over the processes of ``tensors`` (new tensors, in one all-reduce);
        the tensors themselves when there is one process."""
        if not self.active:
            return list(tensors)
        flat = torch.cat([*(tensor.detach().reshape(-1) for tensor in tensors), tensors[0].new_full((1,), weight)])
        self.average_(flat)
        return [part.view_as(tensor) for part, tensor in zip(flat[:-1].split([tensor.numel() for tensor in tensors]), tensors)]

    def global_values(self, losses: Tensor, weight: float) -> Tensor:
        """``losses`` with the values of their average over the processes and the gradient of this
        process's own: what a loss weighting needs to weight the global losses while DDP averages
        the gradients. The losses themselves when not ``exact`` or with one process."""
        if not self.exact or not self.active:
            return losses
        (average,) = self.average([losses], weight)
        return losses + (average - losses).detach()
