"""CelebA (Liu, Luo, Wang, Tang 2015, "Deep Learning Face Attributes in the Wild", ICCV): 40 binary
face attributes of the aligned-and-cropped images, read in place.

The release's files: the JPEGs ``img_align_celeba/<id>.jpg`` (178×218), ``list_attr_celeba.txt``
(a count line, a line of the 40 attribute names, then one line per image: its file name and 40
values of ``1`` or ``-1``) and ``list_eval_partition.txt`` (file name and split, ``0`` train,
``1`` val, ``2`` test: 162,770 / 19,867 / 19,962 images). Both layouts of ``root`` are read:
torchvision's, all three in ``root``, and the release's Google Drive folders
(``Img/img_align_celeba/``, ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt``),
which FAMO's code reads. Images are resized to ``image_size`` (64×64 in FAMO and Nash-MTL) with
PIL's bilinear filter, as torchvision's ``Resize`` does, and scaled to [0, 1], no normalization.
Each attribute is a ``BinaryTask`` named as in the file (``Smiling``, ``5_o_Clock_Shadow``, ...);
``attributes`` keeps a subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mtl.data.base import MultiTaskDataModule
from mtl.tasks import INPUT_KEY, BinaryTask

LAYOUTS = {
    "torchvision": {"images": "img_align_celeba", "attributes": "list_attr_celeba.txt", "partition": "list_eval_partition.txt"},
    "release": {"images": "Img/img_align_celeba", "attributes": "Anno/list_attr_celeba.txt", "partition": "Eval/list_eval_partition.txt"},
}
PARTITIONS = {"train": 0, "val": 1, "test": 2}


def find_layout(root: Path) -> dict[str, Path]:
    """The paths of the images folder and the two lists under ``root``, in whichever layout is complete."""
    for layout in LAYOUTS.values():
        paths = {key: root / relative for key, relative in layout.items()}
        if paths["images"].is_dir() and paths["attributes"].is_file() and paths["partition"].is_file():
            return paths
    expected = "; or ".join(", ".join(str(root / relative) for relative in layout.values()) for layout in LAYOUTS.values())
    raise FileNotFoundError(f"no CelebA at {root}: expected {expected}")


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """The attribute names and ``{image file: [0 or 1 per attribute]}`` of ``list_attr_celeba.txt``."""
    lines = path.read_text().splitlines()
    names = lines[1].split()
    labels = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1 or not set(fields[1:]) <= {"1", "-1"}:
            raise ValueError(f"{path}:{number}: expected an image name and {len(names)} values of 1 or -1, got {line!r}")
        labels[fields[0]] = [int(value == "1") for value in fields[1:]]
    return names, labels


def read_partition(path: Path) -> dict[str, int]:
    """``{image file: split number}`` of ``list_eval_partition.txt``."""
    return {name: int(split) for name, split in (line.split() for line in path.read_text().splitlines() if line.strip())}


class CelebAImages(Dataset):
    """The images of one split with their chosen attributes, each target ``(1,)``."""

    def __init__(self, images: Path, files: list[str], labels: Tensor, attributes: Sequence[str], image_size: tuple[int, int]) -> None:
        self.images, self.files, self.labels, self.attributes, self.image_size = images, files, labels, list(attributes), image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        with Image.open(self.images / self.files[index]) as image:
            resized = image.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {INPUT_KEY: pixels, **{name: self.labels[index, [column]] for column, name in enumerate(self.attributes)}}


class CelebA(MultiTaskDataModule):
    """CelebA from ``root`` (either layout), its official train/val/test partition, the 40
    attributes (or ``attributes``) as binary tasks, images at ``image_size`` (height, width)."""

    def __init__(
        self,
        root: str | Path,
        image_size: Sequence[int] = (64, 64),
        attributes: Sequence[str] | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        self.paths = find_layout(Path(root))
        names, self.labels = read_attributes(self.paths["attributes"])
        chosen = list(attributes) if attributes is not None else names
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise ValueError(f"unknown CelebA attributes {unknown}; valid choices: {names}")
        self.columns = [names.index(name) for name in chosen]
        self.partition = read_partition(self.paths["partition"])
        unlabelled = sorted(set(self.partition) - set(self.labels))
        if unlabelled:
            raise ValueError(f"{self.paths['partition']} lists {len(unlabelled)} images without attributes in {self.paths['attributes']}, e.g. {unlabelled[:3]}")
        self.attributes = chosen
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.tasks = [BinaryTask(name) for name in chosen]
        self.input_shape = (3, *self.image_size)

    def build_splits(self) -> dict[str, CelebAImages]:
        splits = {}
        for split, number in PARTITIONS.items():
            files = [name for name, part in self.partition.items() if part == number]
            labels = torch.tensor([[self.labels[name][column] for column in self.columns] for name in files], dtype=torch.long).reshape(len(files), len(self.columns))
            splits[split] = CelebAImages(self.paths["images"], files, labels, self.attributes, self.image_size)
        return splits
