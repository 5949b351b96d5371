"""QM9 (Ramakrishnan et al. 2014, "Quantum chemistry structures and properties of 134 kilo
molecules", Scientific Data; as MoleculeNet and PyTorch Geometric release it) as the 11-task graph
regression benchmark of Nash-MTL (Navon et al. 2022, arXiv:2202.01017; AvivNavon/nash-mtl
``experiments/quantum_chemistry``) and FAMO (Liu et al. 2023, arXiv:2306.03792), read in place
with PyTorch Geometric (an extra: ``pip install -e '.[graph]'``).

``root`` is PyTorch Geometric's QM9 folder: ``processed/data_v3.pt`` (what ``torch_geometric.datasets.QM9``
loads), or ``raw/qm9_v3.pt``, its pre-processed release (https://data.pyg.org/datasets/qm9_v3.zip),
from which it writes the processed file once. With ``download=true`` PyTorch Geometric fetches the
release into ``root`` when neither is there; otherwise a missing dataset stops with what is expected.

As in Nash-MTL's code: each molecule is a complete graph (every ordered pair of distinct atoms an
edge, a bond's four one-hot features on bonded pairs and zeros elsewhere) with the interatomic
distance appended as a fifth edge feature; the 11 atom features of PyTorch Geometric are the node
features; the molecules are shuffled (here with ``seed``), the first 10,000 are the test split, the
next 10,000 the validation split, the rest (110,831) the training split; each target is standardized
with the mean and standard deviation of all molecules (their code computes them on
``train_dataset.data``, which for a subset of an in-memory dataset is the whole dataset). The
errors are reported as the mean absolute error in Nash-MTL's units: the energies (HOMO, LUMO, ZPVE
and the atomization energies U0, U, H, G) in meV, the others in PyTorch Geometric's units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mtl.data.base import MultiTaskDataModule, MultiTaskDataset
from mtl.graphs import QM9 as GeometricQM9
from mtl.graphs import Batch, Data, Distance, remove_self_loops
from mtl.tasks import INPUT_KEY, RegressionTask


class Target(NamedTuple):
    """A QM9 property: its column of PyTorch Geometric's ``y``, the unit it is reported in and the
    factor from PyTorch Geometric's unit to that one."""

    column: int
    unit: str
    factor: float = 1.0


TARGETS = {
    "mu": Target(0, "D"),
    "alpha": Target(1, "a0^3"),
    "homo": Target(2, "meV", 1000.0),
    "lumo": Target(3, "meV", 1000.0),
    "r2": Target(5, "a0^2"),
    "zpve": Target(6, "meV", 1000.0),
    "U0": Target(12, "meV", 1000.0),
    "U": Target(13, "meV", 1000.0),
    "H": Target(14, "meV", 1000.0),
    "G": Target(15, "meV", 1000.0),
    "cv": Target(11, "cal/(mol K)"),
}
"""Nash-MTL's 11 targets in its order (``target_idx`` of its ``utils.py``); U0, U, H and G are the
atomization energies (columns 12-15), as DimeNet and Nash-MTL use them."""

HELD_OUT = {"test": 10_000, "val": 10_000}
"""The molecules of the held-out splits, taken in this order from the front of the shuffle."""

DISTANCE = Distance(norm=False)


def molecule_graph(data: Data) -> Data:
    """The model's input of one molecule: its complete graph with the distances as a fifth edge
    feature, without its targets (nash-mtl's ``Complete`` and ``T.Distance(norm=False)``)."""
    atoms = data.num_nodes
    index = torch.arange(atoms)
    pairs = torch.stack([index.repeat_interleave(atoms), index.repeat(atoms)])
    features = data.edge_attr.new_zeros(atoms * atoms, data.edge_attr.size(1))
    features[data.edge_index[0] * atoms + data.edge_index[1]] = data.edge_attr
    graph = Data(x=data.x, pos=data.pos)
    graph.edge_index, graph.edge_attr = remove_self_loops(pairs, features)
    return DISTANCE(graph)


def graph_batch(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch of molecules: their graphs as one PyTorch Geometric ``Batch``, the targets stacked."""
    targets = default_collate([{key: value for key, value in sample.items() if key != INPUT_KEY} for sample in samples])
    return {INPUT_KEY: Batch.from_data_list([sample[INPUT_KEY] for sample in samples]), **targets}


class LocalQM9(GeometricQM9):
    """PyTorch Geometric's QM9, which fetches its release only when ``allow_download``: its
    processed file alone is enough to load it (PyTorch Geometric would otherwise fetch the raw
    files whenever they are missing)."""

    def __init__(self, root: str, allow_download: bool) -> None:
        self.allow_download = allow_download
        super().__init__(root, transform=molecule_graph)

    def download(self) -> None:
        if Path(self.processed_paths[0]).is_file():
            return
        if not self.allow_download:
            raise FileNotFoundError(
                f"no QM9 at {self.root}: expected PyTorch Geometric's {self.processed_paths[0]} or its raw {self.raw_paths}; "
                f"set data.download=true to fetch {self.processed_url}"
            )
        super().download()


class QM9(MultiTaskDataModule):
    """QM9's ``targets`` (default: Nash-MTL's 11) as standardized regression tasks on molecule graphs,
    split ``held_out`` molecules for test and validation from a shuffle by ``seed``."""

    def __init__(
        self,
        root: str | Path,
        targets: Sequence[str] | None = None,
        held_out: Mapping[str, int] | None = None,
        download: bool = False,
        batch_size: int = 120,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        chosen = list(targets) if targets is not None else list(TARGETS)
        unknown = [name for name in chosen if name not in TARGETS]
        if unknown or not chosen:
            raise ValueError(f"unknown QM9 targets {unknown or chosen}; valid choices: {list(TARGETS)}")
        self.held_out = dict(held_out if held_out is not None else HELD_OUT)
        if sorted(self.held_out) != ["test", "val"]:
            raise ValueError(f"held_out must give the sizes of 'test' and 'val', got {sorted(self.held_out)}")
        self.molecules = LocalQM9(str(root), download)
        if sum(self.held_out.values()) >= len(self.molecules):
            raise ValueError(f"held_out={self.held_out} leaves none of the {len(self.molecules)} molecules of {root} for training")
        columns = [TARGETS[name].column for name in chosen]
        values = self.molecules.y[:, columns]
        self.mean, self.std = values.mean(0), values.std(0)
        self.standardized = (values - self.mean) / self.std
        self.targets = chosen
        self.tasks = [RegressionTask(name, scale=float(self.std[k]) * TARGETS[name].factor, metrics=["mae"]) for k, name in enumerate(chosen)]
        self.input_shape = (self.molecules.num_node_features,)

    def build_splits(self) -> dict[str, MultiTaskDataset]:
        order = torch.from_numpy(np.random.default_rng(np.random.SeedSequence(self.seed)).permutation(len(self.molecules)))
        test, val = self.held_out["test"], self.held_out["val"]
        indices = {"train": order[test + val :], "val": order[test : test + val], "test": order[:test]}
        return {
            split: MultiTaskDataset(self.molecules[index], {name: self.standardized[index, k : k + 1] for k, name in enumerate(self.targets)})
            for split, index in indices.items()
        }

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None, collate_fn: Callable | None = None) -> DataLoader:
        return super()._loader(dataset, batch_size, sampler, collate_fn or graph_batch)
