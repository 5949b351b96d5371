"""The on-disk layout of MTAN's preprocessed dense benchmarks, read in place, and their augmentation.

Liu, Johns, Davison 2019 (lorenmt/mtan ``create_dataset.py``; reused by CAGrad, Nash-MTL and FAMO)
release NYUv2 and CityScapes as one ``.npy`` file per sample and modality:
``<root>/<split>/<folder>/<i>.npy`` for ``i = 0 .. N-1``, images and dense maps stored
height × width × channels (float), class labels height × width (float, ``-1`` unlabelled). A
sample is a dict: the image under ``"input"`` (channels first), ``"segmentation"`` (long, the
unlabelled pixels ``IGNORE_INDEX``), ``"depth"`` ``(1, H, W)`` and ``"normal"`` ``(3, H, W)``.

The augmentation is the official code's (its ``RandomScaleCrop``, from lorenmt/mtan issue 34,
then a horizontal flip): a crop of ``1/s`` of the height and width at a random place, ``s`` drawn
from (1.0, 1.2, 1.5), resized back (bilinear for the image and the normals, nearest for the labels
and the depth, which is divided by ``s``: the scene comes closer), then with probability 1/2 a
left-right flip that also negates the normals' x component. Its random draws come from
``(seed, epoch, index)`` alone (``EpochIndexSampler``), so a resumed run sees the crops of a run that
was never interrupted, with any number of loader workers.

With ``download``, a release missing under ``root`` is fetched from its archive (``fetch_release``)
before it is read; nothing is downloaded otherwise.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.hub
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtl.data.base import EpochShuffleSampler, MultiTaskDataModule
from mtl.tasks import IGNORE_INDEX, INPUT_KEY

SCALES = (1.0, 1.2, 1.5)
SHOWN = 5
"""How many missing files an error lists."""


def missing_files(directory: Path, folders: Mapping[str, str]) -> tuple[int, list[Path]]:
    """The number of samples in ``directory`` (the files of its image folder) and the files of the
    other folders that are not there."""
    image_folder = directory / folders[INPUT_KEY]
    count = len(list(image_folder.glob("*.npy"))) if image_folder.is_dir() else 0
    if count == 0:
        return 0, [image_folder / "0.npy"]
    expected = [directory / folder / f"{index}.npy" for folder in folders.values() for index in range(count)]
    return count, [path for path in expected if not path.is_file()]


def scale_crop_flip(sample: dict[str, Tensor], generator: random.Random) -> dict[str, Tensor]:
    """The official augmentation of one sample (every value ``(C, H, W)`` or, for labels, ``(H, W)``)."""
    height, width = sample[INPUT_KEY].shape[-2:]
    scale = SCALES[generator.randrange(len(SCALES))]
    crop_height, crop_width = int(height / scale), int(width / scale)
    top, left = generator.randint(0, height - crop_height), generator.randint(0, width - crop_width)
    flip = generator.random() < 0.5
    augmented = {}
    for key, value in sample.items():
        crop = (value[None, None] if value.dim() == 2 else value[None])[..., top : top + crop_height, left : left + crop_width]
        if key in (INPUT_KEY, "normal"):
            resized = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)
        else:
            resized = F.interpolate(crop, size=(height, width), mode="nearest")
        resized = resized[0, 0] if value.dim() == 2 else resized[0]
        if key == "depth":
            resized = resized / scale
        if flip:
            resized = resized.flip(-1)
            if key == "normal":
                resized[0] = -resized[0]
        augmented[key] = resized
    return augmented


def fetch_release(root: Path, url: str) -> None:
    """Download the zip archive at ``url`` and unpack its release as ``root``: the directory in the
    archive that holds ``train`` and ``val`` becomes ``root``, which must not exist or be empty
    (nothing of a user's is ever replaced). The archive and the unpacked files stay in temporary
    places beside ``root`` until the last rename, so an interrupted fetch leaves nothing that looks
    like a release."""
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"data.download=true unpacks the release as {root}, which holds other files; empty it or point data.root elsewhere")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as scratch:
        archive = Path(scratch) / "release.zip"
        torch.hub.download_url_to_file(url, str(archive), progress=True)
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(Path(scratch) / "unpacked")
        releases = [path.parent for path in sorted((Path(scratch) / "unpacked").rglob("train")) if (path.parent / "val").is_dir()]
        if not releases:
            raise FileNotFoundError(f"the archive at {url} holds no directory with train/ and val/")
        if root.exists():
            root.rmdir()
        os.replace(releases[0], root)


class NpyFolders(Dataset):
    """The samples of one split directory: ``folders`` maps each batch key to its folder. An item
    is an index (the sample as stored) or, with ``augment``, an ``(epoch, index)`` pair (the sample
    augmented with draws from ``(seed, epoch, index)``)."""

    def __init__(self, directory: Path, folders: Mapping[str, str], name: str, augment: bool = False, seed: int = 0, hint: str = "") -> None:
        count, missing = missing_files(directory, folders)
        if missing:
            layout = f"{directory}/{{{','.join(folders.values())}}}/<i>.npy"
            shown = ", ".join(str(path) for path in missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else "")
            raise FileNotFoundError(f"{name} is not complete at {directory}: expected {layout} for i = 0 .. N-1 (MTAN's preprocessed release); missing {shown}{hint}")
        self.directory, self.folders, self.count = directory, dict(folders), count
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` as floats, channels first."""
        sample = {}
        for key, folder in self.folders.items():
            array = torch.from_numpy(np.load(self.directory / folder / f"{index}.npy")).float()
            sample[key] = array if array.dim() == 2 else array.movedim(-1, 0)
        return sample

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = item if isinstance(item, tuple) else (None, item)
        sample = self.load(index)
        if self.augment and epoch is not None:
            sample = scale_crop_flip(sample, random.Random(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])))
        if "segmentation" in sample:
            labels = sample["segmentation"].round().long()
            sample["segmentation"] = labels.masked_fill(labels < 0, IGNORE_INDEX)
        return sample


class EpochIndexSampler(EpochShuffleSampler):
    """``EpochShuffleSampler``'s order, each index paired with the epoch, from which ``NpyFolders``
    draws its augmentation."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in super().__iter__())


class NpyFoldersDataModule(MultiTaskDataModule):
    """A benchmark in MTAN's layout under ``root``: ``train`` trains, and ``val``, the release's
    held-out split, is both the validation and the test split, as the papers that report on it
    evaluate (their "test" numbers are on this split). With ``augmentation`` the training samples
    are augmented (``scale_crop_flip``). With ``download``, a release missing under ``root`` is
    fetched from ``url`` (default: the release's). Subclasses set ``name``, ``folders``, ``url``
    and ``tasks``."""

    name: str
    folders: dict[str, str]
    url: str

    def __init__(
        self,
        root: str | Path,
        augmentation: bool = False,
        download: bool = False,
        url: str | None = None,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        self.root = Path(root)
        self.augmentation = augmentation
        url = url or self.url
        try:
            self.datasets = self.read_splits(augmentation, shuffle_seed, hint="" if download else f"; set data.download=true to fetch the release from {url}")
        except FileNotFoundError:
            if not download:
                raise
            fetch_release(self.root, url)
            self.datasets = self.read_splits(augmentation, shuffle_seed)
        self.input_shape = tuple(self.datasets["train"].load(0)[INPUT_KEY].shape)

    def read_splits(self, augmentation: bool, seed: int, hint: str = "") -> dict[str, NpyFolders]:
        """The release's ``train`` (augmented with ``augmentation``) and ``val`` directories."""
        return {split: NpyFolders(self.root / split, self.folders, self.name, augment=augmentation and split == "train", seed=seed, hint=hint) for split in ("train", "val")}

    def build_splits(self) -> dict[str, NpyFolders]:
        return {"train": self.datasets["train"], "val": self.datasets["val"], "test": self.datasets["val"]}

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"]
        sampler = EpochIndexSampler(dataset, self.shuffle_seed) if self.augmentation else EpochShuffleSampler(dataset, self.shuffle_seed)
        return self._loader(dataset, self.batch_size, sampler=sampler)
