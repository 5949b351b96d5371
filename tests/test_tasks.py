import math

import pytest
import torch

from mtl.tasks import IGNORE_INDEX, BinaryTask, ClassificationTask, MissingTargetError, RegressionTask, stack_losses


def test_cross_entropy_matches_hand_computation_and_skips_missing_labels():
    task = ClassificationTask("digit", num_classes=2)
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]])
    target = torch.tensor([0, 1, IGNORE_INDEX])
    # Row 1: -log(1/2); row 2: -log(e^0 / (e^2 + e^0)); row 3 is unlabelled.
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert task.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_loss_of_a_batch_without_labels_is_zero_and_keeps_the_graph():
    task = ClassificationTask("digit", num_classes=3)
    logits = torch.randn(4, 3, requires_grad=True)
    loss = task.loss(logits, torch.full((4,), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))


def test_accuracy_ignores_missing_labels():
    metrics = ClassificationTask("digit", num_classes=3).metrics()
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    metrics.update(logits, torch.tensor([0, 2, IGNORE_INDEX]))
    assert metrics.compute()["accuracy"].item() == pytest.approx(0.5)


def test_metric_directions_come_from_torchmetrics():
    assert ClassificationTask("digit", 10).higher_is_better() == {"accuracy": True}


def test_missing_target_names_the_task_and_the_batch_keys():
    tasks = [ClassificationTask("left", 10), ClassificationTask("right", 10)]
    batch = {"input": torch.zeros(2, 4), "left": torch.zeros(2, dtype=torch.long)}
    predictions = {"left": torch.zeros(2, 10), "right": torch.zeros(2, 10)}
    with pytest.raises(MissingTargetError) as error:
        stack_losses(tasks, predictions, batch)
    assert str(error.value) == "task 'right' needs the batch key 'right', but the batch has keys ['input', 'left']"


def test_a_task_reads_its_own_target_key():
    task = ClassificationTask("income", 2, target="label_income")
    assert torch.equal(task.target_of({"label_income": torch.tensor([1])}), torch.tensor([1]))


def test_fewer_than_two_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        ClassificationTask("digit", 1)


def test_a_binary_task_takes_the_cross_entropy_of_its_logit_and_f1_at_one_half_skipping_missing_labels():
    task = BinaryTask("smiling")
    logits, labels = torch.tensor([[2.0], [-1.0], [0.5], [3.0]]), torch.tensor([[1], [1], [0], [IGNORE_INDEX]])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(0.5))) / 3
    assert task.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    metrics = task.metrics()
    metrics.update(logits, labels)
    scores = {name: value.item() for name, value in metrics.compute().items()}
    # predicted 1, 0, 1 for labels 1, 1, 0: one true positive, one false positive, one false negative
    assert scores == {"accuracy": pytest.approx(1 / 3), "f1": pytest.approx(0.5)}
    assert task.higher_is_better() == {"accuracy": True, "f1": True}


def test_a_standardized_regression_task_learns_standardized_targets_and_reports_errors_in_its_units():
    task = RegressionTask("homo", scale=250.0, metrics=["mae"])
    prediction, target = torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.0], [0.0]])
    assert task.loss(prediction, target).item() == pytest.approx((0.25 + 1.0) / 2)  # on the standardized scale
    metrics = task.metrics()
    metrics.update(prediction, target)
    assert {name: value.item() for name, value in metrics.compute().items()} == {"mae": pytest.approx(250.0 * 0.75)}
    assert task.higher_is_better() == {"mae": False}
    with pytest.raises(ValueError, match=r"task 'homo': unknown regression metrics \['rmse'\]; valid choices: \['mse', 'mae'\]"):
        RegressionTask("homo", metrics=["rmse"])
