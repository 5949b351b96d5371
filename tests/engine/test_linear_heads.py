"""Linear heads in ``rep`` mode: the representation gradients' Gramian and combination from products."""

import copy
import functools

import pytest
import torch
from torch import nn

from mtl.engine import MultiTaskModule
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.linear_heads import LinearHeadOutputs, single_linear_layer
from mtl.methods import GradientAggregator
from mtl.methods.dual_cone import UPGrad
from mtl.methods.mgda import MGDA
from mtl.methods.pcgrad import PCGrad
from mtl.models import MLP, HardParameterSharing, MLPHead
from mtl.tasks import ClassificationTask, stack_losses
from tests.engine.test_jacobian import LR, TASKS, MeanOfRows, assert_step, heads_after_sgd
from tests.test_module import one_training_step

NAMES = [task.name for task in TASKS]
GROUPS = [["a", "c"], ["b"]]


class FirstRowRecorder(GradientAggregator):
    """Not a Gramian weighting: returns the first row and keeps the rows it was given."""

    def forward(self, jacobian, losses):
        self.seen = jacobian.clone()
        return jacobian[0]


class HeadsOnDoubledZ(HardParameterSharing):
    """Each head reads twice its copy of ``z``: its linear layer does not read the copy itself."""

    def decode_each(self, representations):
        return {name: self.head(name)(2 * z) for name, z in representations.items()}


def wide_model(model_class=HardParameterSharing, head=MLPHead, tasks=TASKS):
    """Linear heads on a representation wide enough (D = 16, batch 32) that the products are cheaper."""
    torch.manual_seed(0)
    return model_class(functools.partial(MLP, hidden=(16,)), head, tasks, (1, 2, 2))


def wide_batch(size=32, tasks=TASKS):
    generator = torch.Generator().manual_seed(1)
    data = {"input": torch.randn(size, 1, 2, 2, generator=generator)}
    data.update({task.name: torch.randint(0, task.num_outputs, (size,), generator=generator) for task in tasks})
    return data


def test_the_products_give_the_gramian_combination_and_rows_of_the_formed_gradients():
    # z of shape (2, 3, 5): the heads act on its last dimension, N = 6 rows of D = 5 features
    torch.manual_seed(0)
    z = torch.randn(2, 3, 5, requires_grad=True)
    layers = [nn.Linear(5, size) for size in (3, 1, 4)]
    outputs = [layer(z) for layer in layers]
    output_gradients = [torch.randn_like(output) for output in outputs]
    # L_k = <out_k, g_k> has dL_k/d out_k = g_k; autograd gives Z_k = dL_k/dz
    formed = torch.stack([torch.autograd.grad((output * gradient).sum(), z, retain_graph=True)[0] for output, gradient in zip(outputs, output_gradients)])
    gradients = LinearHeadOutputs(tuple(outputs), tuple(layer.weight.detach() for layer in layers)).gradients(output_gradients, z.shape)
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)

    assert torch.allclose(gradients.dense(), formed, atol=1e-6)
    assert torch.allclose(gradients.gramian(), formed.flatten(1) @ formed.flatten(1).T, atol=1e-5)
    assert torch.allclose(gradients.combination(weights), torch.tensordot(weights.float(), formed, dims=1), atol=1e-6)


def test_a_loss_that_does_not_reach_its_head_has_a_zero_gradient():
    outputs = (torch.ones(4, 2), torch.ones(4, 3))
    gradients = LinearHeadOutputs(outputs, (torch.ones(2, 5), torch.ones(3, 5))).gradients([torch.ones(4, 2), None], torch.Size((4, 5)))
    assert torch.equal(gradients.dense()[1], torch.zeros(4, 5))
    assert gradients.gramian()[1].abs().sum() == 0


def test_a_head_is_one_linear_layer_only_without_other_modules():
    assert isinstance(single_linear_layer(MLPHead(4, 2)), nn.Linear)
    assert isinstance(single_linear_layer(nn.Linear(4, 2)), nn.Linear)
    assert single_linear_layer(MLPHead(4, 2, hidden=(3,))) is None
    assert single_linear_layer(nn.Sequential(nn.Linear(4, 2), nn.Sigmoid())) is None


def linear_heads_of(model, data, mode="rep"):
    representation, _ = JacobianEngine(mode).forward(model, data["input"], NAMES)
    return representation.linear_heads


def test_linear_heads_are_recorded_in_rep_mode_where_each_reads_its_copy_and_the_products_are_cheaper():
    assert linear_heads_of(wide_model(), wide_batch()) is not None
    assert linear_heads_of(wide_model(), wide_batch(), mode="loop") is None
    assert linear_heads_of(wide_model(head=functools.partial(MLPHead, hidden=(3,))), wide_batch()) is None
    assert linear_heads_of(wide_model(HeadsOnDoubledZ), wide_batch()) is None
    # one 500-class head: (N + D)(ΣC)² exceeds N D (K² + K)
    many_classes = [ClassificationTask("a", 500)]
    representation, _ = JacobianEngine("rep").forward(wide_model(tasks=many_classes), wide_batch(tasks=many_classes)["input"], ["a"])
    assert representation.linear_heads is None


def wide_step_module(method, groups=None):
    model = wide_model()
    return MultiTaskModule(model, TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=LR), jacobian=JacobianEngine("rep", groups=groups))


def expected_rep_step(reference, data, method, groups):
    """The shared parameters after an SGD step along ``method``'s direction of the formed
    representation gradients (per-task ``autograd.grad`` with respect to ``z``), rows and losses
    averaged over ``groups``."""
    representation = reference.encode(data["input"])
    leaf = representation.detach().requires_grad_()
    losses = stack_losses(TASKS, reference.decode(leaf), data)
    rows = torch.stack([torch.autograd.grad(loss, leaf, retain_graph=True)[0].flatten() for loss in losses])
    row_losses = losses.detach()
    if groups is not None:
        averaging = torch.stack([torch.tensor([float(name in group) / len(group) for name in NAMES]) for group in groups])
        rows, row_losses = averaging @ rows, averaging @ row_losses
    direction = method(rows, row_losses)
    gradients = torch.autograd.grad(representation, list(reference.shared_parameters()), direction.view_as(representation))
    return [p.detach() - LR * g for p, g in zip(reference.shared_parameters(), gradients)], heads_after_sgd(reference, losses)


@pytest.mark.parametrize("groups", [None, GROUPS])
@pytest.mark.parametrize("method_class", [MGDA, PCGrad, UPGrad, MeanOfRows])
def test_a_rep_step_with_the_products_equals_the_step_with_the_formed_gradients(method_class, groups):
    rows = len(TASKS) if groups is None else len(groups)
    module, data = wide_step_module(method_class(rows), groups), wide_batch()
    module.step.engine.bind(NAMES)
    shared_expected, heads_expected = expected_rep_step(copy.deepcopy(module.model), data, method_class(rows), groups)

    one_training_step(module, data)
    assert_step(module, shared_expected, heads_expected)


def test_the_products_form_no_gradient_of_a_copy_of_z():
    model, data = wide_model(), wide_batch()
    engine = JacobianEngine("rep")
    representation, predictions = engine.forward(model, data["input"], NAMES)
    reached = []
    for copy_of_z in representation.copies:
        copy_of_z.register_hook(lambda gradient: reached.append(gradient))
    losses = stack_losses(TASKS, predictions, data)
    heads = [p for name in NAMES for p in model.task_parameters(name)]
    engine.write_gradients(UPGrad(len(TASKS)), losses[None], [representation], list(model.shared_parameters()), heads)
    assert reached == []
    assert all(p.grad is not None for p in model.parameters())


def test_an_aggregator_that_is_no_gramian_weighting_gets_the_formed_gradients():
    model, data = wide_model(), wide_batch()
    reference = copy.deepcopy(model)
    leaf = reference.encode(data["input"]).detach().requires_grad_()
    expected = torch.stack([torch.autograd.grad(loss, leaf, retain_graph=True)[0].flatten() for loss in stack_losses(TASKS, reference.decode(leaf), data)])

    engine, recorder = JacobianEngine("rep"), FirstRowRecorder(len(TASKS))
    representation, predictions = engine.forward(model, data["input"], NAMES)
    assert representation.linear_heads is not None
    engine.write_gradients(recorder, stack_losses(TASKS, predictions, data)[None], [representation], list(model.shared_parameters()))
    assert torch.allclose(recorder.seen, expected, atol=1e-6)
