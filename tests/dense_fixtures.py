"""Tiny NYUv2 and CityScapes fixtures in MTAN's preprocessed on-disk format, generated (never real data).

    python -m tests.dense_fixtures nyuv2 outputs/nyuv2-fixture      # or cityscapes

Each split directory holds one ``<i>.npy`` per sample and folder, as the release stores them:
images ``(H, W, 3)`` float32 in [0, 1]; labels ``(H, W)`` float32, classes ``0 .. C-1`` and ``-1``
for unlabelled pixels; depth ``(H, W, 1)`` float32, 0 where unknown; normals ``(H, W, 3)`` float32
of unit length, 0 where unknown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLITS = {"train": 4, "val": 2}
HEIGHT, WIDTH = 32, 64


def write_sample(directory: Path, index: int, folders: dict[str, np.ndarray]) -> None:
    for folder, array in folders.items():
        (directory / folder).mkdir(parents=True, exist_ok=True)
        np.save(directory / folder / f"{index}.npy", array.astype(np.float32))


def dense_sample(generator: np.random.Generator, classes: int, height: int, width: int) -> dict[str, np.ndarray]:
    """An image, labels with about 10% unlabelled pixels, and a depth map with about 10% unknown."""
    labels = generator.integers(0, classes, (height, width)).astype(np.float32)
    labels[generator.random((height, width)) < 0.1] = -1
    depth = generator.uniform(0.5, 10.0, (height, width, 1))
    depth[generator.random((height, width)) < 0.1] = 0
    return {"image": generator.random((height, width, 3)), "labels": labels, "depth": depth}


def write_nyuv2(root: Path, splits: dict[str, int] = SPLITS, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    for split, count in splits.items():
        for index in range(count):
            sample = dense_sample(generator, 13, height, width)
            normal = generator.normal(size=(height, width, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[generator.random((height, width)) < 0.1] = 0
            write_sample(root / split, index, {"image": sample["image"], "label": sample["labels"], "depth": sample["depth"], "normal": normal})
    return root


def write_cityscapes(root: Path, splits: dict[str, int] = SPLITS, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    for split, count in splits.items():
        for index in range(count):
            sample = dense_sample(generator, 7, height, width)
            write_sample(root / split, index, {"image": sample["image"], "label_7": sample["labels"], "depth": sample["depth"]})
    return root


WRITERS = {"nyuv2": write_nyuv2, "cityscapes": write_cityscapes}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(WRITERS))
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    print(WRITERS[args.dataset](args.root))
