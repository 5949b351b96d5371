"""Two regression tasks whose relatedness is set by one number: the synthetic data of MMoE.

Ma, Zhao, Yi, Chen, Hong, Chi, 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD (Section 4.1). With two orthogonal unit vectors
``u_1, u_2`` of ``R^d``, a scale ``c`` and a correlation score ``p`` in ``[-1, 1]``::

    w_1 = c u_1,        w_2 = c (p u_1 + sqrt(1 - p²) u_2)          (cos(w_1, w_2) = p)
    x ~ N(0, I_d)
    y_k = w_kᵀ x + Σ_{i=1..m} sin(α_i w_kᵀ x + β_i) + ε_k,         ε_k ~ N(0, 0.01)

The sinusoids make the tasks non-linear, so that the Pearson correlation of the labels grows with
``p`` without equalling it. Defaults: ``d = 100``, ``c = 1``, ``m = 10``, as in the paper; the paper
calls ``α_i, β_i`` given parameters without listing them, so they are drawn once from ``N(0, 1)``
(shared by both tasks, as its formula writes them). Everything is drawn from ``seed``: the same
seed and ``dimension`` give the same ``u_1, u_2, α, β`` at every ``correlation``, so a sweep over
``correlation`` changes the task relation alone. Generated in memory, in about a second.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl.data.base import MultiTaskDataModule, MultiTaskDataset, require_splits
from mtl.tasks import RegressionTask

NOISE_VARIANCE = 0.01


class SyntheticCorrelation(MultiTaskDataModule):
    """Tasks ``y1`` and ``y2`` (regression) on inputs of ``dimension`` features; ``correlation`` is
    ``p``, the cosine between the two tasks' weight vectors. ``samples`` gives each split's size."""

    def __init__(
        self,
        correlation: float = 1.0,
        dimension: int = 100,
        scale: float = 1.0,
        sinusoids: int = 10,
        samples: dict[str, int] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        if not -1.0 <= correlation <= 1.0:
            raise ValueError(f"data.correlation is a cosine, in [-1, 1]; got {correlation}")
        if dimension < 2:
            raise ValueError(f"data.dimension must be at least 2 (two orthogonal directions), got {dimension}")
        self.correlation, self.dimension, self.scale, self.sinusoids = correlation, dimension, scale, sinusoids
        self.samples = require_splits(dict(samples or {"train": 10_000, "val": 1_000, "test": 1_000}), "data.samples")
        self.tasks = [RegressionTask("y1"), RegressionTask("y2")]
        self.input_shape = (dimension,)

    def task_weights(self, generator: torch.Generator) -> Tensor:
        """``(w_1, w_2)`` as the columns of a ``(d, 2)`` matrix."""
        orthonormal, _ = torch.linalg.qr(torch.randn(self.dimension, 2, generator=generator, dtype=torch.float64))
        first, second = orthonormal.T
        p = self.correlation
        return self.scale * torch.stack([first, p * first + math.sqrt(1 - p * p) * second], dim=1)

    def build_splits(self) -> dict[str, MultiTaskDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        weights = self.task_weights(generator)
        alpha, beta = torch.randn(2, self.sinusoids, generator=generator, dtype=torch.float64)
        splits = {}
        for split, size in self.samples.items():
            inputs = torch.randn(size, self.dimension, generator=generator, dtype=torch.float64)
            projections = inputs @ weights  # (N, 2): w_kᵀ x
            waves = torch.sin(alpha * projections[..., None] + beta).sum(dim=-1)
            labels = projections + waves + math.sqrt(NOISE_VARIANCE) * torch.randn(size, 2, generator=generator, dtype=torch.float64)
            splits[split] = MultiTaskDataset(inputs.float(), {task.target: labels[:, [index]].float() for index, task in enumerate(self.tasks)})
        return splits
