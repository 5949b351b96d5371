"""Per-pixel metrics of the dense benchmarks (NYUv2, CityScapes), as torchmetrics metrics.

The definitions are those of the MTAN code (Liu et al. 2019, lorenmt/mtan ``utils.py``) that
CAGrad, Nash-MTL and FAMO reuse: a depth pixel counts where its target is nonzero, a normal pixel
where its target's components do not sum to zero; depth errors are ``|d̂ - d|`` and
``|d̂ - d| / d``; a normal's error is the angle in degrees between the unit prediction and the
target. Each metric pools its pixels over every batch of the epoch (the papers' code averages the
per-batch means instead, which differs only through unequal numbers of valid pixels per batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def depth_mask(target: Tensor) -> Tensor:
    """The pixels ``(B, 1, H, W)`` with a depth: target nonzero."""
    return target != 0


def normal_mask(target: Tensor) -> Tensor:
    """The pixels ``(B, H, W)`` with a normal: the target's components do not sum to zero."""
    return target.sum(dim=1) != 0


def normal_angles(prediction: Tensor, target: Tensor) -> Tensor:
    """The angles in degrees between the unit ``prediction`` and ``target`` at their valid pixels (flat)."""
    cosine = (F.normalize(prediction, dim=1) * target).sum(dim=1)
    return torch.rad2deg(torch.acos(cosine[normal_mask(target)].clamp(-1.0, 1.0)))


class DepthError(Metric):
    """The mean absolute depth error over valid pixels, or with ``relative`` the mean of ``|d̂ - d| / d``."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, relative: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.relative = relative
        self.add_state("error", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        valid = depth_mask(target)
        error = (prediction[valid] - target[valid]).abs()
        if self.relative:
            error = error / target[valid]
        self.error += error.double().sum()
        self.pixels += valid.sum()

    def compute(self) -> Tensor:
        return self.error / self.pixels


class NormalAngleMean(Metric):
    """The mean angle error (degrees) over valid pixels."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("degrees", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        angles = normal_angles(prediction, target)
        self.degrees += angles.double().sum()
        self.pixels += angles.numel()

    def compute(self) -> Tensor:
        return self.degrees / self.pixels


class NormalAngleMedian(Metric):
    """The median angle error (degrees) over valid pixels, read from a histogram of ``bins`` equal
    bins over [0°, 180°], so that its state stays small on any number of pixels: each middle
    order statistic is the centre of its bin (exact to half a bin, 0.005° by default), and for an
    even count the median is their mean, as ``numpy.median``'s."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, bins: int = 18_000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bins = bins
        self.add_state("counts", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        angles = normal_angles(prediction, target)
        index = (angles * (self.bins / 180.0)).long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index, minlength=self.bins)

    def compute(self) -> Tensor:
        cumulative = self.counts.cumsum(0)
        pixels = int(cumulative[-1])
        middle = torch.tensor([(pixels - 1) // 2 + 1, pixels // 2 + 1])  # the 1-based ranks of the middle order statistics
        bins = torch.searchsorted(cumulative, middle).double()
        return ((bins + 0.5) * (180.0 / self.bins)).mean()


class NormalAngleWithin(Metric):
    """The fraction of valid pixels whose angle error is below ``degrees`` (11.25, 22.5 and 30 in the papers)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, degrees: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < degrees <= 180.0 or math.isnan(degrees):
            raise ValueError(f"degrees must be in (0, 180], got {degrees}")
        self.degrees = degrees
        self.add_state("within", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        angles = normal_angles(prediction, target)
        self.within += (angles < self.degrees).sum()
        self.pixels += angles.numel()

    def compute(self) -> Tensor:
        return self.within.double() / self.pixels
