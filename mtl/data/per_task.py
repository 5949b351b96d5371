"""A dataset per task: the data module of benchmarks whose tasks have inputs of their own (Office-31
and Office-Home, one classification task per image domain; QM9's targets on different molecules).

A training batch is ``{task name: that task's batch}``, each of ``batch_size`` samples of its own
dataset: the multi-input setting of LibMTL (Lin & Zhang 2023, arXiv:2203.14338, ``multi_input``),
where every task's forward and loss run on its own batch. A training epoch has as many steps as the
largest task has full batches; a smaller task cycles through fresh permutations of its data meanwhile,
as LibMTL's trainer restarts an exhausted task's loader. Evaluation runs one loader per task, its
batches ``{task name: batch}``, so each task's metrics are computed on its own validation and test
data only.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sized
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from mtl.data.base import SPLITS, EpochShuffleSampler, EvaluationShard, MultiTaskDataModule, check_split, process_layout, require_splits


class CyclingShuffleSampler(EpochShuffleSampler):
    """``steps`` batches of ``batch_size`` per process from one task's dataset, however large it is:
    whole global batches (of ``W · batch_size``) of successive random permutations, each depending
    only on ``(seed, stream, epoch, pass)``. A permutation contributes its full global batches and drops the
    rest, as a loader with ``drop_last`` does before it is restarted; a dataset smaller than one
    global batch contributes all of it. Process ``r`` takes every ``W``-th position from ``r``, so the
    processes together train on the global batches of a single process (``EpochShuffleSampler``)."""

    def __init__(
        self, dataset: Sized, seed: int, stream: int, batch_size: int, steps: int, processes: int | None = None, rank: int | None = None
    ) -> None:
        """``stream`` (the task's index) gives each task of a run permutations of its own."""
        super().__init__(dataset, seed, processes, rank)
        self.stream = stream
        if len(dataset) == 0:
            raise ValueError("a task's training set is empty")
        self.global_batch = batch_size * self.num_replicas
        self.total_size = steps * self.global_batch
        self.num_samples = steps * batch_size

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        per_pass = (size // self.global_batch) * self.global_batch or size
        order: list[int] = []
        for cycle in range(math.ceil(self.total_size / per_pass)):
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.stream, self.epoch, cycle]).generate_state(1)[0]))
            order += torch.randperm(size, generator=generator)[:per_pass].tolist()
        return iter(order[self.rank : self.total_size : self.num_replicas])


def steps_per_epoch(sizes: Mapping[str, int], batch_size: int, processes: int) -> int:
    """The training steps of an epoch: the full global batches of the largest task, at least one."""
    return max(1, max(size // (batch_size * processes) for size in sizes.values()))


def nest_under(task: str, samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The batch of ``samples`` of ``task``'s dataset, under the task's name."""
    return {task: default_collate(samples)}


class PerTaskDataModule(MultiTaskDataModule):
    """A ``MultiTaskDataModule`` whose splits hold a dataset per task: subclasses build
    ``{split: {task name: dataset}}``, each item ``{"input": ..., target: ...}`` of that task."""

    splits: dict[str, dict[str, Dataset]]

    @abstractmethod
    def build_splits(self) -> dict[str, dict[str, Dataset]]:
        """``{split: {task name: dataset}}`` for the ``train``, ``val`` and ``test`` splits."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = require_splits(self.build_splits(), "build_splits()")
        names = [task.name for task in self.tasks]
        for split in SPLITS:
            if sorted(splits[split]) != sorted(names):
                raise ValueError(f"the {split} split has datasets for the tasks {sorted(splits[split])}; the tasks are {names}")
            for task in self.tasks:
                check_split(splits[split][task.name], [task], f"{split} ({task.name})")
        self.splits = splits

    def train_dataloader(self) -> dict[str, DataLoader]:
        """A loader per task, all of the same length (Lightning zips them into ``{task: batch}``)."""
        datasets = self.splits["train"]
        processes, _ = process_layout()
        steps = steps_per_epoch({name: len(dataset) for name, dataset in datasets.items()}, self.batch_size, processes)
        return {
            name: self._loader(dataset, self.batch_size, sampler=CyclingShuffleSampler(dataset, self.shuffle_seed, index, self.batch_size, steps))
            for index, (name, dataset) in enumerate(datasets.items())
        }

    def val_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders("test")

    def _evaluation_loaders(self, split: str) -> list[DataLoader]:
        """A loader per task over its own data, each batch ``{task name: batch}``."""
        return [
            self._loader(dataset, self.eval_batch_size, sampler=EvaluationShard(dataset), collate_fn=partial(nest_under, name))
            for name, dataset in self.splits[split].items()
        ]
