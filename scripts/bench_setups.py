"""The models and batches that ``bench_step.py`` times (a helper module, not a script).

Each setup but the last is a hard-parameter-sharing model (``mtl.models.HardParameterSharing``:
one shared encoder, one head per task), a number of classification tasks, an input shape and a
default batch size; the last is SegNet-MTAN with NYUv2's dense tasks. Inputs and labels are random (step time and memory do not depend on their values); the batch
and the initial weights are seeded, so every measurement of a setup, ``mtl``'s and the peers',
sees the same model and the same batch.

- ``mlp-k10``, ``mlp-k40``: an MLP encoder (3×512) on 784-dimensional inputs, 10 or 40 binary
  linear heads (two-class cross-entropy), batch 256.
- ``lenet-k2``: Multi-LeNet (Sener & Koltun 2018) on 1×36×36 inputs (MultiMNIST-shaped), 2
  ten-class heads (one hidden layer of 50, dropout 0.5), batch 256.
- ``resnet18-k40``: a ResNet-18 encoder on 3×64×64 inputs (CelebA-shaped, as in Sener & Koltun
  2018), 40 binary linear heads, batch 8. The encoder is ``mtl.models.ResNet`` with widths
  64/128/256/512 and two basic blocks per stage (BasicBlock [2, 2, 2, 2], 11.2M parameters): the
  CIFAR-style ResNet-18 of Sener & Koltun's CelebA model (3×3 stride-1 stem, no max-pool), with
  global average pooling to 512 features. The batch is small because one backward pass through
  it takes about half a second on two CPU cores, and an exact Jacobian needs 40 of them.
- ``celeba-k40``: FAMO's 9-layer CelebA CNN (``mtl.models.CelebACNN``, 5.2M parameters) on
  3×64×64 inputs, 40 binary tasks of one logit each (``BinaryTask``), batch 256: the benchmark
  whose cost ratios the FAMO paper reports.
- ``segnet-mtan-nyuv2``: SegNet-MTAN (``mtl.models.SegNetMTAN``, 44.2M parameters) at NYUv2's
  shape, 3×288×384, with its three tasks (13-class segmentation, depth, normals; random targets,
  every pixel labelled), batch 2 (the protocol's; ``--batch-size segnet-mtan-nyuv2=8`` for
  CityScapes' batch). No single representation feeds its heads: aggregators take the general path,
  and no peer runs it (LibMTL's and TorchJD's steps here split a model at its shared
  representation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl.dense_tasks import DepthTask, SegmentationTask, SurfaceNormalTask
from mtl.models import MLP, CelebACNN, HardParameterSharing, LeNet, MLPHead, ResNet, SegNetMTAN
from mtl.tasks import INPUT_KEY, BinaryTask, ClassificationTask, Task


@dataclass(frozen=True)
class Setup:
    """A model factory, its tasks and input shape, and the batch size it is timed with by default."""

    name: str
    encoder: Callable[..., nn.Module]
    head: Callable[..., nn.Module]
    num_tasks: int
    num_classes: int
    """Classes of every task; 1: a binary task of one logit."""
    input_shape: tuple[int, ...]
    batch_size: int

    def tasks(self) -> list[Task]:
        if self.num_classes == 1:
            return [BinaryTask(f"task{index}") for index in range(self.num_tasks)]
        return [ClassificationTask(f"task{index}", self.num_classes) for index in range(self.num_tasks)]

    def model(self, seed: int = 0) -> HardParameterSharing:
        """The model with weights drawn from ``seed``: the same weights on every call."""
        torch.manual_seed(seed)
        return HardParameterSharing(self.encoder, self.head, self.tasks(), self.input_shape)

    def batch(self, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
        """Random inputs and labels, the same on every call with the same arguments."""
        generator = torch.Generator().manual_seed(seed)
        batch = {INPUT_KEY: torch.randn(batch_size, *self.input_shape, generator=generator)}
        for task in self.tasks():
            shape = (batch_size, 1) if self.num_classes == 1 else (batch_size,)
            batch[task.target] = torch.randint(0, max(self.num_classes, 2), shape, generator=generator)
        return {key: value.to(device) for key, value in batch.items()}


def mlp(num_tasks: int) -> Setup:
    encoder = functools.partial(MLP, hidden=(512, 512, 512))
    return Setup(f"mlp-k{num_tasks}", encoder, MLPHead, num_tasks, 2, (784,), 256)


def lenet() -> Setup:
    head = functools.partial(MLPHead, hidden=(50,), dropout=0.5)
    return Setup("lenet-k2", LeNet, head, 2, 10, (1, 36, 36), 256)


def resnet18() -> Setup:
    encoder = functools.partial(ResNet, widths=(64, 128, 256, 512), blocks=2)
    return Setup("resnet18-k40", encoder, MLPHead, 40, 2, (3, 64, 64), 8)


def celeba() -> Setup:
    return Setup("celeba-k40", CelebACNN, MLPHead, 40, 1, (3, 64, 64), 256)


@dataclass(frozen=True)
class DenseSetup:
    """SegNet-MTAN on NYUv2-shaped batches: ``Setup``'s interface for the dense benchmark."""

    name: str = "segnet-mtan-nyuv2"
    input_shape: tuple[int, ...] = (3, 288, 384)
    batch_size: int = 2

    def tasks(self) -> list[Task]:
        return [SegmentationTask("segmentation", 13), DepthTask("depth"), SurfaceNormalTask("normal")]

    def model(self, seed: int = 0) -> SegNetMTAN:
        torch.manual_seed(seed)
        return SegNetMTAN(self.tasks(), self.input_shape)

    def batch(self, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        _, height, width = self.input_shape
        batch = {
            INPUT_KEY: torch.randn(batch_size, *self.input_shape, generator=generator),
            "segmentation": torch.randint(0, 13, (batch_size, height, width), generator=generator),
            "depth": torch.rand(batch_size, 1, height, width, generator=generator) * 10 + 0.1,
            "normal": torch.nn.functional.normalize(torch.randn(batch_size, 3, height, width, generator=generator), dim=1),
        }
        return {key: value.to(device) for key, value in batch.items()}


SETUPS: dict[str, Setup | DenseSetup] = {setup.name: setup for setup in (mlp(10), mlp(40), lenet(), resnet18(), celeba(), DenseSetup())}
"""Every setup by name, in the order the report lists them."""
