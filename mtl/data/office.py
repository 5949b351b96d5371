"""Office-31 (Saenko, Kulis, Fritz, Darrell 2010, "Adapting Visual Category Models to New Domains",
ECCV) and Office-Home (Venkateswara, Eusebio, Chakraborty, Panchanathan 2017, "Deep Hashing Network
for Unsupervised Domain Adaptation", CVPR) as multi-task benchmarks: one classification task per
image domain, each on its own images (a batch per task, ``PerTaskDataModule``), as in LibMTL
(Lin & Zhang 2023, arXiv:2203.14338) and the papers that report its tables (DB-MTL, arXiv:2308.12029).

The releases are folders of JPEGs, one folder per class under each domain: Office-31's
``<root>/<domain>/images/<class>/*.jpg`` (domains amazon, dslr, webcam; 31 classes), Office-Home's
``<root>/<domain>/<class>/*.jpg`` (Art, Clipart, Product, Real World; 65 classes). The task of the
domain "Real World" is named ``Real_World``, as in LibMTL, and either folder name is read.

``splits`` is the folder of LibMTL's split lists (``examples/office/data_txt/office-31`` or
``office-home`` of the LibMTL repository): ``<domain>_train.txt``, ``_val.txt`` and ``_test.txt``,
each line an image path relative to ``root`` and its label (LibMTL's numbering, which is not the
alphabetical order of the folders), e.g. ``amazon/images/back_pack/frame_0065.jpg 0``. Their sizes
(train/val/test): amazon 1680/552/585, dslr 287/89/122, webcam 466/149/180; Art 1435/465/527,
Clipart 2596/846/923, Product 2635/860/944, Real_World 2586/846/925. Without ``splits`` each class
folder is split 60/20/20 at random with ``seed`` and classes are numbered alphabetically: a
protocol of its own, not LibMTL's.

Images are resized to ``image_size`` (224×224 in LibMTL) with PIL's bilinear filter, as
torchvision's ``Resize``, scaled to [0, 1] and normalized with the ImageNet mean and standard
deviation, in every split (LibMTL uses no augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mtl.data.base import SPLITS
from mtl.data.per_task import PerTaskDataModule
from mtl.tasks import INPUT_KEY, ClassificationTask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HELD_OUT = 0.2
"""The share of each class folder in the validation and in the test split without lists (at least one image each)."""


def domain_folder(root: Path, domain: str) -> Path:
    """The folder of ``domain`` under ``root``: named as the task, or with spaces for underscores
    ("Real World", as Office-Home's release names it); an error naming both when neither exists."""
    for name in dict.fromkeys((domain, domain.replace("_", " "))):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no folder of the domain '{domain}' under {root}: expected {root / domain}" + (f" or {root / domain.replace('_', ' ')}" if "_" in domain else ""))


def read_split_list(path: Path, root: Path, classes: int) -> list[tuple[Path, int]]:
    """The ``(image path, label)`` pairs of one of LibMTL's lists, the paths resolved under ``root``
    (a first component ``Real_World`` read from "Real World" where that is the folder)."""
    if not path.is_file():
        raise FileNotFoundError(f"no split list {path}: `splits` must be a folder of LibMTL's lists <domain>_<split>.txt (examples/office/data_txt)")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.rsplit(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= classes:
            raise ValueError(f"{path}:{number}: expected an image path and a label in 0..{classes - 1}, got {line!r}")
        domain, _, rest = fields[0].partition("/")
        samples.append((domain_folder(root, domain) / rest, int(fields[1])))
    return samples


def class_folders(root: Path, domain: str) -> list[Path]:
    """The class folders of ``domain``, in alphabetical order (under ``images/`` in Office-31)."""
    folder = domain_folder(root, domain)
    if (folder / "images").is_dir():
        folder = folder / "images"
    return sorted(path for path in folder.iterdir() if path.is_dir())


def random_splits(root: Path, domain: str, classes: int, seed: int, stream: int) -> dict[str, list[tuple[Path, int]]]:
    """Each class folder of ``domain`` split 60/20/20 at random (at least one image in the validation
    and the test split), its label the folder's rank."""
    folders = class_folders(root, domain)
    if len(folders) != classes:
        raise ValueError(f"the domain '{domain}' under {root} has {len(folders)} class folders; expected {classes}")
    generator = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    splits: dict[str, list[tuple[Path, int]]] = {split: [] for split in SPLITS}
    for label, folder in enumerate(folders):
        images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        order = [images[index] for index in generator.permutation(len(images))]
        held_out = max(1, round(HELD_OUT * len(order)))
        train = len(order) - 2 * held_out
        for split, part in zip(SPLITS, (order[:train], order[train : train + held_out], order[train + held_out :])):
            splits[split] += [(path, label) for path in part]
    return splits


def require_images(samples: Sequence[tuple[Path, int]], what: str) -> None:
    """An error naming ``what``, the number of missing images and a few of them, if any are missing."""
    missing = [str(path) for path, _ in samples if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {what} are missing, e.g. {missing[:3]}")


class DomainImages(Dataset):
    """One domain's images of one split, each item ``{"input": (3, H, W), task: label}``."""

    def __init__(self, task: str, samples: list[tuple[Path, int]], image_size: tuple[int, int]) -> None:
        self.task, self.samples, self.image_size = task, samples, image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {INPUT_KEY: (pixels - self.mean) / self.std, self.task: torch.tensor(label)}


class OfficeDomains(PerTaskDataModule):
    """The Office benchmarks' data module: ``DOMAINS`` (or the ``domains`` given) as
    ``CLASSES``-way classification tasks, from ``root`` with LibMTL's lists in ``splits``."""

    DOMAINS: tuple[str, ...]
    CLASSES: int

    def __init__(
        self,
        root: str | Path,
        splits: str | Path | None = None,
        domains: Sequence[str] | None = None,
        image_size: Sequence[int] = (224, 224),
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        chosen = list(domains) if domains is not None else list(self.DOMAINS)
        unknown = [domain for domain in chosen if domain not in self.DOMAINS]
        if unknown or not chosen:
            raise ValueError(f"unknown {type(self).__name__} domains {unknown or chosen}; valid choices: {list(self.DOMAINS)}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no {type(self).__name__} at {self.root}: expected a folder per domain {list(self.DOMAINS)}")
        self.samples = {domain: self._domain_samples(domain, splits) for domain in chosen}
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.tasks = [ClassificationTask(domain, self.CLASSES) for domain in chosen]
        self.input_shape = (3, *self.image_size)

    def _domain_samples(self, domain: str, splits: str | Path | None) -> dict[str, list[tuple[Path, int]]]:
        """``{split: [(image path, label)]}`` of ``domain``, every image checked to exist."""
        if splits is None:
            samples = random_splits(self.root, domain, self.CLASSES, self.seed, self.DOMAINS.index(domain))
        else:
            samples = {split: read_split_list(Path(splits) / f"{domain}_{split}.txt", self.root, self.CLASSES) for split in SPLITS}
        for split, pairs in samples.items():
            if not pairs:
                raise ValueError(f"the {domain} {split} split under {self.root} has no images" + (" (each class folder needs 3 images or more)" if splits is None else ""))
            require_images(pairs, f"the {domain} {split} split under {self.root}")
        return samples

    def build_splits(self) -> dict[str, dict[str, DomainImages]]:
        return {split: {domain: DomainImages(domain, samples[split], self.image_size) for domain, samples in self.samples.items()} for split in SPLITS}


class Office31(OfficeDomains):
    """Office-31: amazon, dslr and webcam, 31 classes each."""

    DOMAINS = ("amazon", "dslr", "webcam")
    CLASSES = 31


class OfficeHome(OfficeDomains):
    """Office-Home: Art, Clipart, Product and Real_World, 65 classes each."""

    DOMAINS = ("Art", "Clipart", "Product", "Real_World")
    CLASSES = 65
