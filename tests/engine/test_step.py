"""``MultiTaskStep`` without a Trainer: it fills ``.grad`` with the method's update and records its clean pass only."""

import copy
import functools

import pytest
import torch

from mtl.engine.step import MultiTaskStep
from mtl.methods.linear import LinearScalarization
from mtl.models import MLP, HardParameterSharing, MLPHead
from mtl.sam import SAM, FlatMTL
from tests.test_module import TASKS, MeanOfRows, batch


def model():
    torch.manual_seed(0)
    return HardParameterSharing(functools.partial(MLP, hidden=(4,)), MLPHead, TASKS, (1, 2, 2))


def task_losses(network, data):
    predictions = network(data["input"])
    return [task.loss(predictions[task.name], data[task.name]) for task in TASKS]


def test_a_loss_weighting_step_writes_the_gradient_of_the_weighted_loss():
    network, data = model(), batch()
    reference = copy.deepcopy(network)
    first, second = task_losses(reference, data)
    expected = torch.autograd.grad(0.2 * first + 1.5 * second, list(reference.parameters()))

    losses = MultiTaskStep(network, TASKS, LinearScalarization(len(TASKS), [0.2, 1.5]))(data, learning_rate=0.1)
    assert torch.allclose(losses, torch.stack([first, second]).detach())
    for parameter, gradient in zip(network.parameters(), expected):
        assert torch.allclose(parameter.grad, gradient, atol=1e-6)


def test_an_aggregator_step_gives_the_shared_parameters_the_direction_and_each_head_its_task_gradient():
    network, data = model(), batch()
    reference = copy.deepcopy(network)
    losses = task_losses(reference, data)
    shared = list(reference.shared_parameters())
    per_task = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses]

    MultiTaskStep(network, TASKS, MeanOfRows(len(TASKS)))(batch(), learning_rate=0.1)
    for parameter, *gradients in zip(network.shared_parameters(), *per_task):
        assert torch.allclose(parameter.grad, sum(gradients) / len(TASKS), atol=1e-6)
    for task, loss in zip(TASKS, losses):
        head = list(reference.task_parameters(task.name))
        for parameter, gradient in zip(network.task_parameters(task.name), torch.autograd.grad(loss, head, retain_graph=True)):
            assert torch.allclose(parameter.grad, gradient, atol=1e-6)


@pytest.mark.parametrize("sharpness", [SAM(rho=0.5), FlatMTL(rho=0.5)], ids=["sam", "fmtl"])
def test_a_sharpness_aware_step_records_its_clean_pass_alone(sharpness):
    network, data = model(), batch()
    clean = torch.stack(task_losses(copy.deepcopy(network), data)).detach()
    recorded = []
    step = MultiTaskStep(network, TASKS, LinearScalarization(len(TASKS)), sharpness=sharpness, record=lambda predictions, part, losses: recorded.append(losses.detach()))

    step(data, learning_rate=0.1)
    assert len(recorded) == 1 and torch.allclose(recorded[0], clean)
    assert all(parameter.grad is not None for parameter in network.parameters())


def test_the_step_refuses_a_method_of_neither_kind_before_any_batch():
    with pytest.raises(TypeError, match="Identity is neither a mtl.methods.LossWeighting nor a mtl.methods.GradientAggregator"):
        MultiTaskStep(model(), TASKS, torch.nn.Identity())
