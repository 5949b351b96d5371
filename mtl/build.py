"""From a composed configuration to the objects of a run: data module, training module, trainer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from mtl.data.base import MultiTaskDataModule
from mtl.engine.module import MultiTaskModule
from mtl.engine.nonfinite import NonFinitePolicy
from mtl.tasks import Task


def sweep_name() -> str | None:
    """The name of the multirun a run belongs to (its sweep directory's name), None for a single
    run: ``${mtl.sweep_name:}`` in configs, e.g. W&B's ``group``, which puts a sweep's runs together."""
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None


def job_name() -> str | None:
    """The overrides that set this job apart (``method=mgda,seed=1``), None without any:
    ``${mtl.job_name:}`` in configs, e.g. W&B's run ``name``."""
    return HydraConfig.get().job.override_dirname or None


OmegaConf.register_new_resolver("mtl.sweep_name", sweep_name, replace=True)
OmegaConf.register_new_resolver("mtl.job_name", job_name, replace=True)


def build_datamodule_and_module(cfg: DictConfig) -> tuple[MultiTaskDataModule, MultiTaskModule]:
    """The data module from ``cfg.data``; the model, method, sharpness, Jacobian engine, distributed
    sync, optimizer and scheduler around its tasks."""
    datamodule: MultiTaskDataModule = instantiate(cfg.data)
    tasks = datamodule.tasks
    model = instantiate(cfg.model, tasks=tasks, input_shape=datamodule.input_shape)
    jacobian = instantiate(cfg.jacobian) if cfg.get("jacobian") else None
    # a gradient aggregator sees one row per group of tasks when jacobian.groups is set
    rows = jacobian.bind([task.name for task in tasks]) if jacobian is not None else len(tasks)
    method = instantiate(cfg.method, num_tasks=rows, **task_index_of(cfg.method, tasks))
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    sam, sam_sync = sharpness(cfg.get("sam"))
    sync = instantiate(cfg.distributed) if cfg.get("distributed") else None
    module = MultiTaskModule(
        model=model,
        tasks=tasks,
        method=method,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        sam=sam,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        jacobian=jacobian,
        sync=sync,
        gradient_clip_val=cfg.get("gradient_clip_val"),
        gradient_clip_algorithm=cfg.get("gradient_clip_algorithm", "norm"),
        sam_sync=sam_sync,
        scheduler_monitor=cfg.get("scheduler_monitor"),
        baselines=OmegaConf.to_container(cfg.baselines) if cfg.get("baselines") else None,
        nonfinite=NonFinitePolicy(cfg.get("nonfinite", "raise"), cfg.get("nonfinite_max_skips", 10)),
    )
    return datamodule, module


def sharpness(spec: DictConfig | None) -> tuple[Any, str]:
    """The sharpness-aware step of ``cfg.sam`` (None for none) and its ``sync`` (``global`` or
    ``local``: which gradients the perturbation follows under DDP, a setting of the training
    module rather than of the step)."""
    if not spec:
        return None, "global"
    options = OmegaConf.to_container(spec, resolve=True)
    sync = options.pop("sync", "global")
    return instantiate(options), sync


TASK_OPTIONS = ("task", "primary")
"""Method options that name a task (``stl``'s ``task``, ``pcd``'s ``primary``); methods get its index."""


def task_index_of(method: DictConfig, tasks: Sequence[Task]) -> dict[str, int]:
    """``{option: index}`` for each of ``TASK_OPTIONS`` that the method config sets to the name of
    one of ``tasks`` (single-task training, ``method=stl``; PCD's primary task): methods see task
    indices, configs name tasks."""
    names = [task.name for task in tasks]
    indices = {}
    for option in TASK_OPTIONS:
        if method.get(option) is None:
            continue
        if method[option] not in names:
            raise ValueError(f"method.{option}={method[option]!r} is not a task of this data; its tasks are {names}")
        indices[option] = names.index(method[option])
    return indices


@contextmanager
def logger_runs(loggers: Sequence[Logger]) -> Iterator[None]:
    """End this job's W&B run when the block ends, failed (exit code 1) or not. wandb keeps one run
    per process, and the basic and joblib launchers run the jobs of a sweep in the same processes:
    a run left open would take in the next job's metrics and config (Lightning's WandbLogger reuses
    a run in progress)."""
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if succeeded else 1)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The trainer from ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` and loggers of ``cfg.logger``."""
    callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(spec) for spec in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
