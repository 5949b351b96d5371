"""A batch per task (``{task: {"input": x_k, task: y_k}}``, the Office benchmarks): each task's
row of the Jacobian and each head's gradient are those of its own loss on its own batch, in every
mode and under every kind of step."""

import copy
import functools

import pytest
import torch

from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.step import MultiTaskStep
from mtl.methods.linear import LinearScalarization
from mtl.methods.pcgrad import PCGrad
from mtl.models import MLP, HardParameterSharing, MLPHead, ResNet
from mtl.sam import SAM, FlatMTL
from mtl.tasks import ClassificationTask, MissingTargetError, task_batch
from tests.test_module import MeanOfRows

TASKS = [ClassificationTask("amazon", 3), ClassificationTask("webcam", 4)]
SIZES = {"amazon": 5, "webcam": 3}


class RecordsJacobian(MeanOfRows):
    """The mean of the rows, keeping the Jacobian it was given."""

    def forward(self, jacobian, losses):
        self.jacobian = jacobian.clone()
        return super().forward(jacobian, losses)


def resnet_model(dropout=0.0):
    """A tiny ResNet (BatchNorm in its blocks) with heads that may drop out their inputs."""
    torch.manual_seed(0)
    head = functools.partial(MLPHead, hidden=[3], dropout=dropout) if dropout else MLPHead
    return HardParameterSharing(functools.partial(ResNet, widths=(2, 3), blocks=1), head, TASKS, (1, 4, 4))


def per_task_batch(sizes=SIZES, same=False):
    """Each task's own images and labels (with ``same``, one set of images for every task)."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(max(sizes.values()), 1, 4, 4, generator=generator)
    batch = {}
    for task in TASKS:
        size = sizes[task.name]
        inputs = images[:size] if same else torch.randn(size, 1, 4, 4, generator=generator)
        batch[task.name] = {"input": inputs, task.name: torch.randint(0, task.num_outputs, (size,), generator=generator)}
    return batch


def own_losses(network, batch):
    """Each task's loss on its own batch, from a forward pass of that batch alone."""
    return [task.loss(network(batch[task.name]["input"])[task.name], batch[task.name][task.name]) for task in TASKS]


def gradients(loss, parameters):
    return torch.cat([gradient.flatten() for gradient in torch.autograd.grad(loss, parameters, retain_graph=True)])


@pytest.mark.parametrize("mode", ["loop", "batched", "auto"])
def test_each_row_of_the_jacobian_is_the_gradient_of_the_task_loss_on_its_own_batch(mode):
    network, batch = resnet_model(), per_task_batch()
    reference = copy.deepcopy(network)
    losses = own_losses(reference, batch)
    shared = list(reference.shared_parameters())
    expected_rows = torch.stack([gradients(loss, shared) for loss in losses])
    method = RecordsJacobian(len(TASKS))

    returned = MultiTaskStep(network, TASKS, method, JacobianEngine(mode))(batch, learning_rate=0.1)
    assert torch.allclose(returned, torch.stack(losses).detach())
    assert torch.allclose(method.jacobian, expected_rows, atol=1e-6)
    # BatchNorm normalized each task's batch with its own statistics, not those of the batches concatenated
    joint = reference(torch.cat([batch[task.name]["input"] for task in TASKS]))["amazon"][: SIZES["amazon"]]
    joint_row = gradients(TASKS[0].loss(joint, batch["amazon"]["amazon"]), shared)
    assert not torch.allclose(joint_row, expected_rows[0], atol=1e-3)
    for task, loss in zip(TASKS, losses):
        head = list(reference.task_parameters(task.name))
        assert torch.allclose(torch.cat([p.grad.flatten() for p in network.task_parameters(task.name)]), gradients(loss, head), atol=1e-6)
    shared_gradient = torch.cat([p.grad.flatten() for p in network.shared_parameters()])
    assert torch.allclose(shared_gradient, expected_rows.mean(dim=0), atol=1e-6)


def test_a_loss_weighting_step_is_the_gradient_of_the_weighted_losses_on_their_own_batches():
    network, batch = resnet_model(), per_task_batch()
    reference = copy.deepcopy(network)
    first, second = own_losses(reference, batch)
    expected = torch.autograd.grad(0.3 * first + 2.0 * second, list(reference.parameters()))

    MultiTaskStep(network, TASKS, LinearScalarization(len(TASKS), [0.3, 2.0]))(batch, learning_rate=0.1)
    for parameter, gradient in zip(network.parameters(), expected):
        assert torch.allclose(parameter.grad, gradient, atol=1e-6)


def test_task_groups_average_the_rows_of_their_tasks():
    network, batch = resnet_model(), per_task_batch()
    reference = copy.deepcopy(network)
    shared = list(reference.shared_parameters())
    mean_row = torch.stack([gradients(loss, shared) for loss in own_losses(reference, batch)]).mean(dim=0)
    method = RecordsJacobian(1)

    MultiTaskStep(network, TASKS, method, JacobianEngine("loop", groups=[["amazon", "webcam"]]))(batch, learning_rate=0.1)
    assert torch.allclose(method.jacobian, mean_row[None], atol=1e-6)


def mlp_model():
    torch.manual_seed(0)
    return HardParameterSharing(functools.partial(MLP, hidden=(5,)), MLPHead, TASKS, (1, 4, 4))


@pytest.mark.parametrize(
    "method, sharpness",
    [
        (lambda: LinearScalarization(len(TASKS), [0.3, 2.0]), None),
        (lambda: PCGrad(len(TASKS)), None),
        (lambda: PCGrad(len(TASKS)), SAM(rho=0.3)),
        (lambda: PCGrad(len(TASKS)), FlatMTL(rho=0.3, adaptive=False, norm="joint")),
        (lambda: LinearScalarization(len(TASKS), [0.3, 2.0]), FlatMTL(rho=0.3)),
    ],
    ids=["weighting", "pcgrad", "sam_pcgrad", "fmtl_pcgrad", "fmtl_weighting"],
)
def test_one_batch_given_to_every_task_takes_the_single_input_step(method, sharpness):
    """Without BatchNorm or dropout, K forward passes of one batch give the single-input step."""
    sizes = dict.fromkeys(SIZES, 4)
    separate = per_task_batch(sizes, same=True)
    shared_batch = {"input": separate["amazon"]["input"], **{task.name: separate[task.name][task.name] for task in TASKS}}
    first, second = mlp_model(), mlp_model()
    torch.manual_seed(3)
    MultiTaskStep(first, TASKS, method(), sharpness=copy.deepcopy(sharpness))(separate, learning_rate=0.1)
    torch.manual_seed(3)
    MultiTaskStep(second, TASKS, method(), sharpness=copy.deepcopy(sharpness))(shared_batch, learning_rate=0.1)
    for one, other in zip(first.parameters(), second.parameters()):
        assert torch.allclose(one.grad, other.grad, atol=1e-6)


def test_fmtl_at_radius_zero_replays_each_task_passs_dropout_masks():
    """At rho = 0 every flat gradient vanishes only if task k's perturbed pass draws the masks of
    task k's clean pass: F-MTL then takes the plain step."""
    plain, flat = resnet_model(dropout=0.5), resnet_model(dropout=0.5)
    batch = per_task_batch()
    torch.manual_seed(3)
    MultiTaskStep(plain, TASKS, MeanOfRows(len(TASKS)))(batch, learning_rate=0.1)
    torch.manual_seed(3)
    MultiTaskStep(flat, TASKS, MeanOfRows(len(TASKS)), sharpness=FlatMTL(rho=0.0))(batch, learning_rate=0.1)
    for one, other in zip(plain.parameters(), flat.parameters()):
        assert torch.allclose(one.grad, other.grad, atol=1e-6)


def test_rep_mode_is_refused_with_the_modes_that_work():
    step = MultiTaskStep(resnet_model(), TASKS, MeanOfRows(len(TASKS)), JacobianEngine("rep"))
    with pytest.raises(ValueError, match=r"a batch per task has none. Use one of \['loop', 'batched'\] or auto"):
        step(per_task_batch(), learning_rate=0.1)


def test_a_task_without_its_own_batch_is_named_with_the_tasks_present():
    batch = per_task_batch()
    del batch["webcam"]
    with pytest.raises(MissingTargetError, match=r"task 'webcam' has no batch of its own; the batch holds batches of the tasks \['amazon'\]"):
        task_batch(batch, TASKS[1])
    with pytest.raises(KeyError, match=r"tasks \['webcam'\] have no batch of their own"):
        MultiTaskStep(resnet_model(), TASKS, MeanOfRows(len(TASKS)))(batch, learning_rate=0.1)
