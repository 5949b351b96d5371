"""MultiMNIST (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
arXiv:1810.04650): two MNIST digits on a 36x36 canvas, one shifted up-left and one down-right;
tasks ``left`` and ``right`` (10 classes each). ``right_offset``, ``image_size`` and ``normalize``
(``mtl.data.overlay``) reproduce their loader's placement, resizing and normalization
(``experiment=multimnist_sener_koltun``).

``splits_from`` chooses the source digits:

- ``official``: train and val pairs from the 60,000 training digits (``val_fraction`` of them held
  out as a disjoint pool), test pairs from the 10,000 test digits. Needs all four official files.
- ``test_set``: all three splits from disjoint pools of the 10,000 official test digits alone
  (``pool_fractions``), for machines that carry only the test files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtl.data.base import require_splits
from mtl.data.mnist_files import TEST_FILES, TRAIN_FILES, read_idx, verified_files
from mtl.data.overlay import TwoDigitOverlay, split_pools

SPLIT_SOURCES = ("official", "test_set")


class MultiMNIST(TwoDigitOverlay):
    """MultiMNIST from the official IDX files in ``root`` (md5-verified, read in place, never copied).

    Missing files are downloaded into ``root`` when ``download`` is true; otherwise the error
    names the files expected there.
    """

    cache_name = "multimnist"
    pixel_levels = 255

    def __init__(
        self,
        root: str | Path,
        cache_dir: str | Path,
        splits_from: str = "official",
        download: bool = False,
        canvas_size: int = 36,
        right_offset: int | None = None,
        image_size: int | None = None,
        normalize: dict[str, float] | None = None,
        val_fraction: float = 1 / 6,
        pool_fractions: dict[str, float] | None = None,
        pairs_per_digit: dict[str, int] | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        pairs_per_digit = pairs_per_digit or {"train": 1, "val": 1, "test": 1}
        super().__init__(cache_dir, canvas_size, pairs_per_digit, batch_size, eval_batch_size, num_workers, seed, shuffle_seed, right_offset, image_size, normalize)
        if splits_from not in SPLIT_SOURCES:
            raise ValueError(f"data.splits_from={splits_from!r} is not one of {list(SPLIT_SOURCES)}")
        self.root = Path(root)
        self.splits_from = splits_from
        self.download = download
        self.val_fraction = val_fraction
        self.pool_fractions = require_splits(dict(pool_fractions or {"train": 0.6, "val": 0.2, "test": 0.2}), "pool_fractions")

    @property
    def required_files(self) -> tuple[str, ...]:
        return TEST_FILES if self.splits_from == "test_set" else TRAIN_FILES + TEST_FILES

    def prepare_data(self) -> None:
        verified_files(self.root, self.required_files, allow_download=self.download)

    def cache_parameters(self) -> dict[str, Any]:
        return {
            "version": 1,
            "seed": self.seed,
            "splits_from": self.splits_from,
            "canvas_size": self.canvas_size,
            "val_fraction": self.val_fraction if self.splits_from == "official" else None,
            "pool_fractions": self.pool_fractions if self.splits_from == "test_set" else None,
            "pairs_per_digit": self.pairs_per_digit,
            # only when set, so that the caches of the default placement keep their keys
            **({"right_offset": self.right_offset} if self.right_offset is not None else {}),
        }

    def generate(self) -> dict[str, torch.Tensor]:
        files = verified_files(self.root, self.required_files, allow_download=False)
        generator = torch.Generator().manual_seed(self.seed)
        test_digits, test_labels = read_digits(files, *TEST_FILES)
        if self.splits_from == "test_set":
            pools = split_pools(len(test_digits), self.pool_fractions, generator)
            sources = {split: (test_digits, test_labels, pool) for split, pool in pools.items()}
        else:
            train_digits, train_labels = read_digits(files, *TRAIN_FILES)
            pools = split_pools(len(train_digits), {"val": self.val_fraction, "train": 1 - self.val_fraction}, generator)
            sources = {
                "train": (train_digits, train_labels, pools["train"]),
                "val": (train_digits, train_labels, pools["val"]),
                "test": (test_digits, test_labels, torch.arange(len(test_digits))),
            }
        return self.compose_splits(sources, generator)


def read_digits(files: dict[str, Path], images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 from a pair of IDX files."""
    return torch.from_numpy(read_idx(files[images]).copy()), torch.from_numpy(read_idx(files[labels]).copy()).long()
