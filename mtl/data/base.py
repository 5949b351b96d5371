"""The pieces every data module shares: an in-memory dataset of dicts, a resumable shuffle, the
LightningDataModule skeleton, and an atomic on-disk cache for generated data."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mtl.tasks import INPUT_KEY, Task, first_sample

log = logging.getLogger(__name__)


class MultiTaskDataset(Dataset):
    """Samples held as tensors: item ``i`` is ``{"input": inputs[i], task_target: targets[task_target][i], ...}``.
    ``inputs`` may be any sequence of the same length (a PyTorch Geometric dataset of graphs)."""

    def __init__(self, inputs: Tensor | Sequence[Any], targets: dict[str, Tensor]) -> None:
        for key, values in targets.items():
            if len(values) != len(inputs):
                raise ValueError(f"target '{key}' has {len(values)} rows but there are {len(inputs)} inputs")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {INPUT_KEY: self.inputs[index], **{key: values[index] for key, values in self.targets.items()}}


def check_samples(inputs: Tensor | Sequence[Any], targets: dict[str, Tensor], tasks: list[Task], split: str) -> None:
    """Raise, naming the split, the task and the first bad sample, on a non-finite input or a
    target that a task cannot train on (``Task.check_targets``). Inputs that are not a tensor
    (graphs) are left unchecked."""
    first = first_sample(~torch.isfinite(inputs)) if isinstance(inputs, Tensor) and inputs.is_floating_point() else None
    if first is not None:
        raise ValueError(f"the {split} input at index {first} is not finite")
    for task in tasks:
        task.check_targets(task.target_of(targets), split)


def check_split(dataset: Dataset, tasks: list[Task], split: str) -> None:
    """``check_samples`` on every sample of an in-memory split, on the first of a streamed one."""
    if isinstance(dataset, MultiTaskDataset):
        check_samples(dataset.inputs, dataset.targets, tasks, split)
    elif len(dataset) > 0:
        sample = {key: value[None] for key, value in dataset[0].items()}
        check_samples(sample.pop(INPUT_KEY), sample, tasks, split)


class EpochShuffleSampler(DistributedSampler):
    """A random permutation of the dataset that depends only on ``(seed, epoch)``; in a run of
    ``W`` processes, this process's shard of it.

    Lightning calls ``set_epoch`` before every training epoch, so a run resumed from a checkpoint
    sees the same order of batches as a run that was never interrupted. Process ``r`` takes the
    positions ``r, r + W, r + 2W, ...`` of the permutation (padded by repetition to a multiple of
    ``W``, as ``DistributedSampler`` pads), so the ``b``-th batches of size ``B`` of all processes
    together hold exactly the ``b``-th batch of size ``W·B`` of a single process: a distributed run
    trains on the global batches of the single-process run. Being a ``DistributedSampler``, it is
    used by Lightning as it is, not wrapped.
    """

    def __init__(self, dataset: Sized, seed: int, processes: int | None = None, rank: int | None = None) -> None:
        """``processes`` and ``rank`` default to those of the default process group."""
        processes, rank = process_layout(processes, rank)
        super().__init__(dataset, num_replicas=processes, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        padded = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        return iter(padded[self.rank : self.total_size : self.num_replicas])


class EvaluationShard(DistributedSampler):
    """This process's share of the dataset, in order and without padding: over all processes every
    sample is evaluated exactly once, so the metrics (synchronized by torchmetrics) are those of a
    single process. ``DistributedSampler``, which Lightning would otherwise insert, repeats samples
    to give every process the same count. Evaluation needs no equal counts: it runs no collective
    per batch."""

    def __init__(self, dataset: Sized, processes: int | None = None, rank: int | None = None) -> None:
        processes, rank = process_layout(processes, rank)
        super().__init__(dataset, num_replicas=processes, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), processes))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def process_layout(processes: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(number of processes, this process's rank)``: the given values, else those of the default
    process group, ``(1, 0)`` outside a distributed run."""
    distributed = dist.is_available() and dist.is_initialized()
    if processes is None:
        processes = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    return processes, rank


class MultiTaskDataModule(pl.LightningDataModule):
    """A data module whose batches are dicts with the input under ``"input"`` and one target per task.

    Subclasses set ``tasks`` and ``input_shape`` (channels, height, width of one sample) in
    ``__init__`` and build the three splits in ``build_splits``. ``seed`` fixes the generated data;
    ``shuffle_seed`` (the run's seed) fixes the order of training batches in every epoch.
    """

    tasks: list[Task]
    input_shape: tuple[int, ...]

    def __init__(
        self, batch_size: int = 256, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0, shuffle_seed: int = 0
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_seed = shuffle_seed
        self.splits: dict[str, MultiTaskDataset] = {}

    @abstractmethod
    def build_splits(self) -> dict[str, MultiTaskDataset]:
        """The ``train``, ``val`` and ``test`` datasets."""

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.build_splits()
            for split, dataset in self.splits.items():
                check_split(dataset, self.tasks, split)

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"]
        return self._loader(dataset, self.batch_size, sampler=EpochShuffleSampler(dataset, self.shuffle_seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], self.eval_batch_size, sampler=EvaluationShard(self.splits["val"]))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], self.eval_batch_size, sampler=EvaluationShard(self.splits["test"]))

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None, collate_fn: Callable | None = None) -> DataLoader:
        # A private generator for the loader's worker seeds: creating an iterator then draws nothing
        # from the global generator, whose state (dropout) must depend on the epoch alone.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )


def cached(cache_dir: str | Path, name: str, parameters: dict[str, Any], build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """``build()``'s tensors, stored under ``cache_dir`` keyed by ``parameters`` and reused.

    The file is written to a temporary name and renamed, so an interrupted build never leaves a
    truncated cache behind.
    """
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{key}.pt"
    if path.exists():
        log.info("Loading cached %s from %s", name, path)
        return torch.load(path, weights_only=True)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(tensors, temporary)
    os.replace(temporary, path)
    log.info("Cached %s at %s", name, path)
    return tensors


SPLITS = ("train", "val", "test")


def require_splits(mapping: dict[str, Any], what: str) -> dict[str, Any]:
    """``mapping`` if its keys are exactly the three splits, else an error naming what is wrong."""
    if set(mapping) != set(SPLITS):
        raise ValueError(f"{what} must have exactly the keys {list(SPLITS)}, got {sorted(mapping)}")
    return {split: mapping[split] for split in SPLITS}
