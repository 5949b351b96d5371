"""Start-up checks: the combinations of model, method, sharpness, Jacobian engine and strategy that
a training step cannot run are refused before the first step, with the bad value and what to use.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch import nn

from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.methods.base import GradientAggregator, LossWeighting, Method
from mtl.sam.base import Sharpness, TaskPerturbation, WeightPerturbation

CLIP_ALGORITHMS = ("norm", "value")
SAM_SYNCS = ("global", "local")


def check_method(model: nn.Module, method: Method) -> None:
    """Refuse a method of neither kind, and a gradient aggregator for a model without shared parameters."""
    if not isinstance(method, (LossWeighting, GradientAggregator)):
        raise TypeError(f"{type(method).__name__} is neither a mtl.methods.LossWeighting nor a mtl.methods.GradientAggregator")
    if isinstance(method, GradientAggregator) and not hasattr(model, "shared_parameters"):
        raise TypeError(
            f"{type(method).__name__} aggregates gradients of the shared parameters, but "
            f"{type(model).__name__} has no shared_parameters(); use a loss weighting or a MultiTaskModel"
        )


def check_clipping(value: float | None, algorithm: str) -> None:
    """Refuse a clipping threshold that is not positive and an unknown clipping algorithm."""
    if value is not None and value <= 0:
        raise ValueError(f"gradient_clip_val must be positive or null, got {value}")
    if algorithm not in CLIP_ALGORITHMS:
        raise ValueError(f"unknown gradient_clip_algorithm '{algorithm}'; valid choices: {list(CLIP_ALGORITHMS)}")


def check_sharpness(sam: Sharpness | None, model: nn.Module, method: Method, sam_sync: str = "global") -> None:
    """Refuse a sharpness object of neither kind, what F-MTL cannot run with, and a
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
        raise ValueError(
            f"jacobian.groups groups the rows of the task Jacobian, which the loss weighting {type(method).__name__} never builds; "
            "use a gradient aggregator or jacobian.groups=null"
        )
    if isinstance(sam, TaskPerturbation):
        raise ValueError(f"jacobian.groups cannot be used with sam={type(sam).__name__}, which perturbs the weights task by task; use sam=sam, asam, gsam or none")
    if method.num_tasks != rows:
        raise ValueError(f"{type(method).__name__} was built for {method.num_tasks} tasks, but jacobian.groups gives it {rows} rows; build it with num_tasks={rows}")


def check_strategy(strategy: Strategy, method: Method, sam: Sharpness | None, jacobian: JacobianEngine, sync: GradientSync) -> None:
    """Refuse a Lightning strategy that cannot run the method's step: gradient aggregators and
    sharpness-aware steps write ``.grad`` themselves, which only one device or DDP (its reduction
    bypassed by ``distributed.sync``) allows."""
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
