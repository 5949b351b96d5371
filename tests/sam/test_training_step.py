"""Sharpness-aware steps inside MultiTaskModule: F-MTL at rho = 0 is the plain step, running state
(BatchNorm statistics, a method's history) and logs follow the clean pass only."""

import collections
import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mtl.engine import MultiTaskModule
from mtl.methods.double_sampling import MoDo
from mtl.methods.dwa import DynamicWeightAverage
from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.methods.pcgrad import PCGrad
from mtl.methods.uncertainty import UncertaintyWeighting
from mtl.models import MLP, HardParameterSharing, MLPHead
from mtl.models.encoders import Encoder
from mtl.sam import GSAM, SAM, FlatMTL
from mtl.tasks import ClassificationTask
from tests.test_module import batch

TASKS = [ClassificationTask("left", 3), ClassificationTask("right", 3)]
LR = 0.1


class NormalizedEncoder(Encoder):
    """Flatten → Linear → BatchNorm → ReLU: a shared encoder with running statistics."""

    def __init__(self, input_shape, width: int = 5) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU())
        self.out_features = width

    def forward(self, x):
        return self.layers(x)


def make_model():
    torch.manual_seed(0)
    return HardParameterSharing(NormalizedEncoder, MLPHead, TASKS, (1, 2, 2))


def make_module(method, sam=None):
    return MultiTaskModule(make_model(), TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=LR), sam=sam)


def one_training_step(module, data):
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader([data], batch_size=None))
    return trainer


METHODS = {
    "fixed weights": lambda: LinearScalarization(2, [0.2, 1.5]),
    "uw": lambda: UncertaintyWeighting(2),
    "pcgrad": lambda: PCGrad(2),
    "mgda": lambda: MGDA(2),
}


@pytest.mark.parametrize("name", METHODS)
def test_fmtl_with_rho_zero_is_the_plain_step_of_the_method(name):
    data = batch()
    plain, flat = make_module(METHODS[name]()), make_module(METHODS[name](), FlatMTL(rho=0.0))
    one_training_step(plain, data)
    one_training_step(flat, data)
    for (key, expected), parameter in zip(plain.named_parameters(), flat.parameters()):
        assert torch.allclose(parameter, expected, atol=1e-6), key


def test_fmtl_moves_the_weights_when_rho_is_positive():
    data = batch()
    plain, flat = make_module(PCGrad(2)), make_module(PCGrad(2), FlatMTL(rho=0.5))
    one_training_step(plain, data)
    one_training_step(flat, data)
    assert not torch.allclose(plain.model.encoder.layers[1].weight, flat.model.encoder.layers[1].weight, atol=1e-4)


def make_dropout_module(method, sam=None):
    torch.manual_seed(0)
    model = HardParameterSharing(functools.partial(MLP, hidden=(16,), dropout=0.5), MLPHead, TASKS, (1, 2, 2))
    return MultiTaskModule(model, TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=LR), sam=sam)


@pytest.mark.parametrize("sam", [SAM(rho=0.0), FlatMTL(rho=0.0), FlatMTL(rho=0.0, batched=True)], ids=["sam", "fmtl-loop", "fmtl-batched"])
@pytest.mark.parametrize("name", ["fixed weights", "mgda"])
def test_at_rho_zero_on_a_model_with_dropout_a_sharpness_aware_step_is_the_plain_step(name, sam):
    """The perturbed passes replay the clean pass's dropout masks, which are the plain step's."""
    data = batch()
    plain, sharp = make_dropout_module(METHODS[name]()), make_dropout_module(METHODS[name](), sam)
    one_training_step(plain, data)
    one_training_step(sharp, data)
    moved = [not torch.equal(parameter, start) for parameter, start in zip(plain.parameters(), make_dropout_module(METHODS[name]()).parameters())]
    assert any(moved)
    for (key, expected), parameter in zip(plain.named_parameters(), sharp.parameters()):
        assert torch.allclose(parameter, expected, rtol=0, atol=1e-7), key


def clean_pass_statistics(data):
    model = make_model().train()
    model(data["input"])
    return {name: buffer for name, buffer in model.named_buffers()}


@pytest.mark.parametrize(
    ("method", "sam"),
    [
        (LinearScalarization(2), SAM(rho=0.5)),
        (MGDA(2), SAM(rho=0.5)),
        (LinearScalarization(2), FlatMTL(rho=0.5)),
        (PCGrad(2), FlatMTL(rho=0.5)),
        (PCGrad(2), FlatMTL(rho=0.5, batched=False)),
    ],
    ids=["sam-ew", "sam-mgda", "fmtl-ew", "fmtl-pcgrad", "fmtl-loop-pcgrad"],
)
def test_batchnorm_statistics_after_a_step_are_those_of_the_clean_pass_alone(method, sam):
    data = batch()
    module = make_module(method, sam)
    one_training_step(module, data)
    expected = clean_pass_statistics(data)
    for name, buffer in module.model.named_buffers():
        assert torch.equal(buffer, expected[name]), name


@pytest.mark.parametrize("name", ["uw", "mgda"])
def test_batched_and_looped_fmtl_take_the_same_step_with_batchnorm_in_train_mode(name):
    data = batch()
    looped, batched = make_module(METHODS[name](), FlatMTL(rho=0.5, batched=False)), make_module(METHODS[name](), FlatMTL(rho=0.5, batched=True))
    one_training_step(looped, data)
    one_training_step(batched, data)
    assert batched.step.sharpness.batched  # no fallback
    for (key, expected), parameter in zip(looped.named_parameters(), batched.parameters()):
        assert torch.allclose(parameter, expected, atol=1e-6), key
    for (key, expected), buffer in zip(looped.model.named_buffers(), batched.model.buffers()):
        assert torch.equal(buffer, expected), key


def test_a_methods_history_advances_once_per_sharpness_aware_step():
    module = make_module(DynamicWeightAverage(2, period_steps=5), GSAM(max_learning_rate=LR, rho_max=0.5))
    one_training_step(module, batch())
    assert int(module.method.period_length) == 1
    predictions = make_model()(batch()["input"])
    expected = torch.stack([task.loss(predictions[task.name], batch()[task.name]) for task in TASKS])
    assert torch.allclose(module.method.period_total.float(), expected.detach(), atol=1e-6)


@pytest.mark.parametrize("sam", [SAM(rho=0.5), FlatMTL(rho=0.5)], ids=["sam", "fmtl"])
def test_the_logged_training_loss_is_the_clean_loss(sam):
    data = batch()
    trainer = one_training_step(make_module(LinearScalarization(2), sam), data)
    predictions = make_model().train()(data["input"])
    clean = torch.stack([task.loss(predictions[task.name], data[task.name]) for task in TASKS]).mean()
    assert float(trainer.callback_metrics["train/mean/loss"]) == pytest.approx(clean.item(), rel=1e-6)


def test_fmtl_refuses_a_method_that_needs_independent_samples():
    with pytest.raises(ValueError, match="FlatMTL takes one Jacobian per step, but MoDo asks for 3 independent samples"):
        make_module(MoDo(2), FlatMTL())


def test_a_sam_of_neither_kind_is_refused():
    with pytest.raises(TypeError, match="sam=Identity is neither a mtl.sam.WeightPerturbation nor a mtl.sam.TaskPerturbation"):
        make_module(LinearScalarization(2), nn.Identity())


@pytest.mark.parametrize("sam", [None, FlatMTL(rho=0.5)], ids=["plain", "fmtl"])
def test_clipping_scales_the_final_update_to_the_clip_norm(sam):
    data = batch()
    free = make_module(MGDA(2), sam)
    clipped = MultiTaskModule(make_model(), TASKS, MGDA(2), optimizer=functools.partial(torch.optim.SGD, lr=LR), sam=sam, gradient_clip_val=1e-3)
    before = [parameter.detach().clone() for parameter in free.parameters()]
    one_training_step(free, data)
    one_training_step(clipped, data)
    free_update = torch.cat([(parameter.detach() - start).flatten() for parameter, start in zip(free.parameters(), before)])
    clipped_update = torch.cat([(parameter.detach() - start).flatten() for parameter, start in zip(clipped.parameters(), before)])
    assert free_update.norm() > 1e-2 * LR  # the clip below binds
    assert torch.allclose(clipped_update, free_update * (1e-3 * LR / free_update.norm()), atol=1e-7)


def test_an_unknown_clip_algorithm_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown gradient_clip_algorithm 'l1'; valid choices: \['norm', 'value'\]"):
        MultiTaskModule(make_model(), TASKS, MGDA(2), optimizer=functools.partial(torch.optim.SGD, lr=LR), gradient_clip_algorithm="l1")


def test_fmtl_runs_each_head_backward_once_per_pass():
    module, counts = make_module(MGDA(2), FlatMTL(rho=0.5)), collections.Counter()
    for name, head in module.model.heads.items():
        head.register_full_backward_hook(lambda *_, name=name: counts.update([name]))
    one_training_step(module, batch())
    # the clean gradient and the perturbed gradient of each task; 2K if each task's gradient ran every head
    assert counts == {task.name: 2 for task in TASKS}
