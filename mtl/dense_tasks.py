"""Dense prediction tasks: semantic segmentation, depth and surface normals, one value per pixel.

The losses are those of the MTAN code (Liu, Johns, Davison 2019, arXiv:1803.10704; lorenmt/mtan
``utils.py: model_fit``) that CAGrad, Nash-MTL and FAMO train NYUv2 and CityScapes with: per-pixel
cross-entropy without the unlabelled pixels, L1 depth on the pixels that have a depth, and one
minus the mean cosine between the predicted and the true normal on the pixels that have one. The
metrics are in ``mtl.metrics.dense``. A head predicts ``(B, num_outputs, H, W)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from mtl.metrics.dense import DepthError, NormalAngleMean, NormalAngleMedian, NormalAngleWithin, depth_mask, normal_mask
from mtl.tasks import IGNORE_INDEX, Task, check_labels


class SegmentationTask(Task):
    """Per-pixel classification over ``num_classes`` classes; targets ``(B, H, W)``, ``IGNORE_INDEX``
    where a pixel has no label. Metrics: mean IoU over the classes that the predictions or the
    targets contain (torchmetrics' Jaccard index, from the confusion matrix of the whole epoch)
    and pixel accuracy over the labelled pixels."""

    def __init__(self, name: str, num_classes: int, target: str | None = None) -> None:
        super().__init__(name, target)
        if num_classes < 2:
            raise ValueError(f"task '{name}': num_classes must be at least 2, got {num_classes}")
        self.num_outputs = num_classes

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the labelled pixels (0 when none is)."""
        summed = F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return summed / (target != IGNORE_INDEX).sum().clamp_min(1)

    def check_targets(self, targets: Tensor, split: str) -> None:
        check_labels(self.name, targets, self.num_outputs, split)

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(self.num_outputs, average="macro", ignore_index=IGNORE_INDEX),
                "pixel_accuracy": MulticlassAccuracy(self.num_outputs, average="micro", ignore_index=IGNORE_INDEX),
            }
        )


class DepthTask(Task):
    """Depth ``(B, 1, H, W)``, zero where unknown. Loss: the mean absolute error over the pixels with
    a depth; metrics: that error (``abs_error``) and the relative error (``rel_error``)."""

    num_outputs = 1

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        valid = depth_mask(target)
        return ((prediction - target).abs() * valid).sum() / valid.sum().clamp_min(1)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"abs_error": DepthError(), "rel_error": DepthError(relative=True)})


class SurfaceNormalTask(Task):
    """Unit surface normals ``(B, 3, H, W)``, zero where unknown. The head's output is normalized to
    unit length at every pixel (the MTAN models' last layer does this) before the loss and the
    metrics. Loss: one minus the mean cosine over the pixels with a normal; metrics: the mean and
    median angle error in degrees and the fractions of pixels within 11.25°, 22.5° and 30°."""

    num_outputs = 3
    THRESHOLDS = (11.25, 22.5, 30.0)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        valid = normal_mask(target)
        cosine = (F.normalize(prediction, dim=1) * target).sum(dim=1)
        return 1 - (cosine * valid).sum() / valid.sum().clamp_min(1)

    def metrics(self) -> MetricCollection:
        within = {f"within_{degrees:g}".replace(".", "_"): NormalAngleWithin(degrees) for degrees in self.THRESHOLDS}
        return MetricCollection({"angle_mean": NormalAngleMean(), "angle_median": NormalAngleMedian(), **within})
