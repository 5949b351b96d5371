"""Data modules: one LightningDataModule per dataset, each declaring its tasks."""

from mtl.data.adult import Adult
from mtl.data.base import MultiTaskDataModule, MultiTaskDataset
from mtl.data.celeba import CelebA
from mtl.data.cityscapes import CityScapes
from mtl.data.multidigits import MultiDigits
from mtl.data.multimnist import MultiMNIST
from mtl.data.nyuv2 import NYUv2
from mtl.data.office import Office31, OfficeHome
from mtl.data.per_task import PerTaskDataModule
from mtl.data.synthetic_correlation import SyntheticCorrelation

__all__ = [
    "Adult",
    "CelebA",
    "CityScapes",
    "MultiDigits",
    "MultiMNIST",
    "MultiTaskDataModule",
    "MultiTaskDataset",
    "NYUv2",
    "Office31",
    "OfficeHome",
    "PerTaskDataModule",
    "SyntheticCorrelation",
]
