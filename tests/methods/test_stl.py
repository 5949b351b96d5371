import functools

import pytest
import torch

from mtl.build import build_datamodule_and_module
from mtl.engine import MultiTaskModule
from mtl.methods.stl import SingleTask
from tests.conftest import TINY, compose_config
from tests.test_module import LR, TASKS, batch, make_module, one_training_step


def test_the_named_task_has_weight_one_and_the_others_zero():
    assert torch.equal(SingleTask(num_tasks=3, task=1)(torch.tensor([5.0, 1.0, 2.0])), torch.tensor([0.0, 1.0, 0.0]))


def test_a_step_trains_the_encoder_and_head_of_the_task_alone():
    data = batch()
    reference = make_module().model
    loss = TASKS[0].loss(reference(data["input"])["left"], data["left"])
    trained = [*reference.encoder.parameters(), *reference.heads["left"].parameters()]
    expected = [p.detach() - LR * g for p, g in zip(trained, torch.autograd.grad(loss, trained))]
    untouched = [p.detach().clone() for p in reference.heads["right"].parameters()]

    module = MultiTaskModule(make_module().model, TASKS, SingleTask(len(TASKS), task=0), optimizer=functools.partial(torch.optim.SGD, lr=LR))
    one_training_step(module, data)
    for parameter, target in zip([*module.model.encoder.parameters(), *module.model.heads["left"].parameters()], expected):
        assert torch.allclose(parameter, target, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(module.model.heads["right"].parameters(), untouched))


def test_a_task_index_out_of_range_or_a_name_is_refused():
    with pytest.raises(ValueError, match=r"method.task must be a task index in \[0, 2\), got 2"):
        SingleTask(num_tasks=2, task=2)
    with pytest.raises(TypeError, match="method.task must be a task index .* got 'left'"):
        SingleTask(num_tasks=2, task="left")


def test_the_config_names_the_task_and_an_unknown_name_lists_the_tasks(tmp_path):
    _, module = build_datamodule_and_module(compose_config([*TINY, "method=stl", "method.task=right"], tmp_path / "run"))
    assert torch.equal(module.method.weights, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"method.task='middle' is not a task of this data; its tasks are \['left', 'right'\]"):
        build_datamodule_and_module(compose_config([*TINY, "method=stl", "method.task=middle"], tmp_path / "run"))
