"""Segmentation, depth and surface normals: every loss and metric against values computed by hand on
hand-made predictions, with unlabelled pixels, a class that never occurs and several batches."""

import math

import pytest
import torch

from mtl.dense_tasks import DepthTask, SegmentationTask, SurfaceNormalTask
from mtl.tasks import IGNORE_INDEX

SEGMENTATION = SegmentationTask("semantic", 3)


def one_hot_logits(classes: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` whose argmax is ``classes`` ``(B, H, W)``."""
    return torch.nn.functional.one_hot(classes, num_classes).permute(0, 3, 1, 2).float()


def compute(task, batches):
    metrics = task.metrics()
    for prediction, target in batches:
        metrics.update(prediction, target)
    return {name: value.item() for name, value in metrics.compute().items()}


def test_the_segmentation_loss_is_the_cross_entropy_of_the_labelled_pixels():
    # two classes, pixels (0,0) p=[1/2,1/2] label 0, (0,1) p=[3/4,1/4] label 0, (1,0) label 1 with
    # p=[3/4,1/4], (1,1) unlabelled with any logits
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 50.0]], [[0.0, 0.0], [0.0, -50.0]]])[None]
    target = torch.tensor([[[0, 0], [1, IGNORE_INDEX]]])
    expected = (math.log(2) - math.log(3 / 4) - math.log(1 / 4)) / 3
    assert SegmentationTask("s", 2).loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_miou_averages_the_classes_that_occur_and_pixel_accuracy_counts_the_labelled_pixels():
    # class 2 occurs in neither predictions nor targets; the ignored pixel is predicted as 1
    target = torch.tensor([[[0, 0, 1], [1, 1, IGNORE_INDEX]]])
    prediction = torch.tensor([[[0, 1, 1], [1, 0, 1]]])
    # class 0: intersection 1, union {p0,p1,p4} = 3; class 1: intersection 2, union {p1,p2,p3,p4} = 4
    scores = compute(SEGMENTATION, [(one_hot_logits(prediction), target)])
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)


def test_miou_is_that_of_the_epochs_confusion_matrix_not_the_mean_over_batches():
    first = (one_hot_logits(torch.tensor([[[0, 0]]])), torch.tensor([[[0, 1]]]))  # IoU 0: 1/2, 1: 0/1
    second = (one_hot_logits(torch.tensor([[[1, 1, 1, 1]]])), torch.tensor([[[1, 1, 1, 1]]]))  # IoU 1: 4/4
    # pooled: class 0 intersection 1, union 2; class 1 intersection 4, union 5
    assert compute(SEGMENTATION, [first, second])["miou"] == pytest.approx((1 / 2 + 4 / 5) / 2)


def test_the_depth_loss_and_errors_skip_the_pixels_without_depth():
    target = torch.tensor([[[[2.0, 4.0], [0.0, 1.0]]]])
    prediction = torch.tensor([[[[3.0, 3.0], [9.0, 1.5]]]])
    assert DepthTask("depth").loss(prediction, target).item() == pytest.approx((1 + 1 + 0.5) / 3)
    scores = compute(DepthTask("depth"), [(prediction, target)])
    assert scores["abs_error"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert scores["rel_error"] == pytest.approx((1 / 2 + 1 / 4 + 0.5 / 1) / 3)


def test_depth_errors_pool_the_pixels_of_every_batch():
    first = (torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[2.0, 2.0]]]]))  # two pixels, error 1
    second = (torch.tensor([[[[5.0, 0.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))  # one valid pixel, error 4
    assert compute(DepthTask("depth"), [first, second])["abs_error"] == pytest.approx((1 + 1 + 4) / 3)


def normals_at(degrees: list[float], scale: float = 2.0) -> torch.Tensor:
    """Predictions ``(1, 3, 1, N)`` at the given angles from the x axis in the xy plane, of length ``scale``."""
    radians = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return (scale * torch.stack([radians.cos(), radians.sin(), torch.zeros_like(radians)]))[None, :, None, :].float()


def x_axis_targets(pixels: int, unknown: int = 0) -> torch.Tensor:
    """Targets ``(1, 3, 1, pixels + unknown)``: the x axis, then ``unknown`` pixels of zeros."""
    target = torch.zeros(1, 3, 1, pixels + unknown)
    target[0, 0, 0, :pixels] = 1.0
    return target


def test_the_normal_loss_is_one_minus_the_mean_cosine_of_the_unit_prediction():
    prediction, target = normals_at([10.0, 20.0, 25.0, 40.0, 90.0]), x_axis_targets(4, unknown=1)
    expected = 1 - sum(math.cos(math.radians(angle)) for angle in (10, 20, 25, 40)) / 4
    assert SurfaceNormalTask("normal").loss(prediction, target).item() == pytest.approx(expected, rel=1e-5)


def test_the_normal_metrics_are_the_angle_statistics_of_the_pixels_with_a_normal():
    prediction, target = normals_at([10.0, 20.0, 25.0, 40.0, 90.0]), x_axis_targets(4, unknown=1)
    scores = compute(SurfaceNormalTask("normal"), [(prediction, target)])
    assert scores["angle_mean"] == pytest.approx((10 + 20 + 25 + 40) / 4, abs=1e-4)
    assert scores["angle_median"] == pytest.approx((20 + 25) / 2, abs=0.006)  # even count: the mean of the middle two
    assert (scores["within_11_25"], scores["within_22_5"], scores["within_30"]) == (1 / 4, 2 / 4, 3 / 4)


def test_the_median_angle_of_an_odd_count_pooled_over_batches_is_the_middle_one():
    batches = [(normals_at([5.0, 70.0]), x_axis_targets(2)), (normals_at([33.3]), x_axis_targets(1))]
    assert compute(SurfaceNormalTask("normal"), batches)["angle_median"] == pytest.approx(33.3, abs=0.006)


def test_every_dense_metric_declares_its_direction_for_delta_m():
    assert SEGMENTATION.higher_is_better() == {"miou": True, "pixel_accuracy": True}
    assert DepthTask("depth").higher_is_better() == {"abs_error": False, "rel_error": False}
    assert SurfaceNormalTask("normal").higher_is_better() == {
        "angle_mean": False,
        "angle_median": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }
