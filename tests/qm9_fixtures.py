"""A tiny QM9 in PyTorch Geometric's pre-processed release format, generated (never real molecules).

    python -m tests.qm9_fixtures outputs/qm9-fixture [--molecules 40]

``raw/qm9_v3.pt`` is what https://data.pyg.org/datasets/qm9_v3.zip holds: a ``torch.save``d list of
one dict per molecule, with ``x`` (atoms, 11: one-hot H/C/N/O/F, atomic number, aromatic, sp, sp2,
sp3, hydrogens), ``z`` (atomic numbers), ``pos`` (atoms, 3), ``edge_index`` (2, bonds in both
directions), ``edge_attr`` (bonds, 4: one-hot single/double/triple/aromatic), ``y`` (1, 19), ``name``,
``idx`` and ``smiles``. ``torch_geometric.datasets.QM9`` turns it into ``processed/data_v3.pt``.
Each molecule is a chain of 2 to 6 atoms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ATOMIC_NUMBERS = (1, 6, 7, 8, 9)


def molecule(index: int, generator: torch.Generator) -> dict:
    atoms = int(torch.randint(2, 7, (), generator=generator))
    kinds = torch.randint(0, len(ATOMIC_NUMBERS), (atoms,), generator=generator)
    z = torch.tensor(ATOMIC_NUMBERS)[kinds]
    hybridization = torch.nn.functional.one_hot(torch.randint(0, 3, (atoms,), generator=generator), 3).float()
    hydrogens = torch.randint(0, 4, (atoms, 1), generator=generator).float()
    x = torch.cat([torch.nn.functional.one_hot(kinds, 5).float(), z[:, None].float(), torch.zeros(atoms, 1), hybridization, hydrogens], dim=1)
    chain = torch.arange(atoms - 1)
    edge_index = torch.stack([torch.cat([chain, chain + 1]), torch.cat([chain + 1, chain])])
    order = (edge_index[0] * atoms + edge_index[1]).argsort()
    bonds = torch.randint(0, 4, (atoms - 1,), generator=generator).repeat(2)
    return {
        "x": x,
        "z": z,
        "pos": torch.randn(atoms, 3, generator=generator),
        "edge_index": edge_index[:, order],
        "edge_attr": torch.nn.functional.one_hot(bonds[order], 4).float(),
        "y": torch.randn(1, 19, generator=generator) * torch.logspace(-2, 2, 19)[None],
        "name": f"gdb_{index + 1}",
        "idx": index,
        "smiles": "C" * atoms,
    }


def write_qm9(root: Path, molecules: int = 40, seed: int = 0) -> Path:
    """The fixture's raw release under ``root``."""
    generator = torch.Generator().manual_seed(seed)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    torch.save([molecule(index, generator) for index in range(molecules)], root / "raw" / "qm9_v3.pt")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--molecules", type=int, default=40)
    args = parser.parse_args()
    print(write_qm9(args.root, args.molecules))
