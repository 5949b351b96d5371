"""Task grouping for many tasks: the aggregator sees C groups of tasks instead of K tasks.

Go, Kim, Kim, Lee, Yoon, Shin, Kim, 2023, "Addressing Negative Transfer in Diffusion Models"
(arXiv:2306.00354, Section 4): with thousands of tasks (their denoising timesteps), they cluster
the tasks into a few groups of mutually affine tasks and apply an MTL method to the groups'
losses. Here group ``g`` is the mean of its tasks::

    L_g = mean_{k in g} L_k        G_g = mean_{k in g} G_k        (A: the (C, K) averaging matrix)

so the aggregator takes ``A G (C, P)`` and ``A L (C,)``. The Jacobian engine backpropagates the
``C`` combined cotangents ``A · dL/dz`` through the encoder: ``C`` backward passes instead of
``K``. Each head still follows its own task's gradient.

``groups`` is either fixed, a list of groups of task names covering every task once, or a count
``C``: every ``regroup_every`` steps (from the first) the tasks are clustered by the cosine
similarity of their full gradients (one ``K``-row Jacobian on that step), with average-linkage
hierarchical clustering cut at exactly ``C`` clusters. Go et al. cluster timesteps into intervals
because their tasks are ordered; tasks in general are not, so any partition is allowed. ``C = K``
(or no grouping) leaves every task its own row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.spatial.distance import squareform
from torch import Tensor

Groups = list[list[int]]


class TaskGroups:
    """Which tasks share a row of the aggregated Jacobian.

    ``groups``: ``None`` (every task alone), a number of groups to cluster into, or a list of
    groups of task names. ``regroup_every``: steps between two clusterings (count only).
    """

    def __init__(self, groups: int | Sequence[Sequence[str]] | None = None, regroup_every: int = 100) -> None:
        if isinstance(groups, int) and groups < 1:
            raise ValueError(f"jacobian.groups must be a positive number of groups, a list of groups of task names, or null; got {groups}")
        if regroup_every < 1:
            raise ValueError(f"jacobian.regroup_every must be a positive number of steps, got {regroup_every}")
        self.spec = groups
        self.regroup_every = regroup_every
        self.groups: Groups = []
        self.steps = 0
        self._matrix: tuple[Groups, Tensor] | None = None

    @property
    def clustered(self) -> bool:
        return isinstance(self.spec, int)

    def bind(self, task_names: Sequence[str]) -> int:
        """Resolve the groups for these tasks; returns the number of rows the aggregator sees."""
        count = len(task_names)
        if self.spec is None:
            self.groups = [[task] for task in range(count)]
        elif self.clustered:
            if self.spec > count:
                raise ValueError(f"jacobian.groups={self.spec} asks for more groups than the {count} tasks {list(task_names)}")
            self.groups = contiguous_groups(count, self.spec)
        else:
            self.groups = named_groups(self.spec, task_names)
        return len(self.groups)

    @property
    def trivial(self) -> bool:
        """Whether every task is its own group, in order (nothing to combine)."""
        return all(group == [task] for task, group in enumerate(self.groups))

    def matrix(self, like: Tensor) -> Tensor:
        """The ``(C, K)`` averaging matrix ``A`` with ``like``'s dtype and device, built again only
        when the groups (every change assigns a new list), the dtype or the device change."""
        cached = self._matrix
        if cached is not None and cached[0] is self.groups and cached[1].dtype == like.dtype and cached[1].device == like.device:
            return cached[1]
        count = sum(len(group) for group in self.groups)
        averaging = torch.zeros(len(self.groups), count, dtype=like.dtype)
        for row, group in enumerate(self.groups):
            averaging[row, group] = 1.0 / len(group)
        self._matrix = (self.groups, averaging.to(like.device))
        return self._matrix[1]

    def due(self) -> bool:
        """Whether this step reclusters; advances the step count."""
        due = self.clustered and self.steps % self.regroup_every == 0
        self.steps += 1
        return due

    def regroup(self, jacobian: Tensor) -> None:
        """Cluster the tasks by the cosine similarity of the rows of ``jacobian (K, P)``."""
        self.groups = cluster_by_cosine(jacobian, len(self.groups))

    def state_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = [list(group) for group in state["groups"]]
        self.steps = state["steps"]


def contiguous_groups(count: int, groups: int) -> Groups:
    """``count`` tasks in ``groups`` runs of consecutive tasks of nearly equal size (the start)."""
    return [part.tolist() for part in np.array_split(np.arange(count), groups)]


def named_groups(spec: Sequence[Sequence[str]], task_names: Sequence[str]) -> Groups:
    """Task indices of groups given by name; every task must appear in exactly one group."""
    names = list(task_names)
    listed = [name for group in spec for name in group]
    unknown = sorted(set(listed) - set(names))
    if unknown:
        raise ValueError(f"jacobian.groups names {unknown}, which are not tasks; the tasks are {names}")
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    missing = [name for name in names if name not in listed]
    if repeated or missing or any(not group for group in spec):
        raise ValueError(f"jacobian.groups must put every task in exactly one non-empty group; repeated: {repeated}, missing: {missing}")
    return [[names.index(name) for name in group] for group in spec]


def cluster_by_cosine(jacobian: Tensor, groups: int) -> Groups:
    """Exactly ``groups`` clusters of the rows of ``jacobian`` by average-linkage clustering on the
    cosine distance ``1 - cos``, each sorted, ordered by their first task."""
    rows = torch.nn.functional.normalize(jacobian.detach().double(), dim=1).cpu().numpy()
    count = len(rows)
    if groups >= count:
        return [[task] for task in range(count)]
    distances = np.clip(1.0 - rows @ rows.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    labels = cut_tree(linkage(squareform(distances, checks=False), method="average"), n_clusters=groups).ravel()
    clusters: dict[int, list[int]] = {}
    for task, label in enumerate(labels):
        clusters.setdefault(int(label), []).append(task)
    return sorted(clusters.values(), key=lambda group: group[0])


def grouped(losses: Tensor, averaging: Tensor | None) -> Tensor:
    """The group losses ``(..., C)`` of task ``losses (..., K)`` by the averaging matrix ``(C, K)``
    (the losses themselves without groups)."""
    return losses if averaging is None else losses @ averaging.T
