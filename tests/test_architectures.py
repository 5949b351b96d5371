"""MMoE, CGC and PLE: output shapes, gates on the simplex, the declared shared/task split against
which losses reach each parameter, and training runs with a loss weighting, an aggregator and F-MTL."""

import functools
import math

import pytest
import torch

from mtl.models import MLP, PLE, MLPHead, MMoE
from mtl.tasks import ClassificationTask, RegressionTask
from mtl.train import train
from tests.conftest import compose_config

TASKS = [ClassificationTask("a", 3), RegressionTask("b", 2), ClassificationTask("c", 2)]
INPUT_SHAPE = (1, 2, 3)
BATCH = 64

ARCHITECTURES = {
    "mmoe": functools.partial(MMoE, num_experts=3),
    "cgc": functools.partial(PLE, levels=1, shared_experts=2, task_experts=1),
    "ple": functools.partial(PLE, levels=2, shared_experts=1, task_experts=2),
    "ple3": functools.partial(PLE, levels=3, shared_experts=1, task_experts=1),
}


def build(name):
    torch.manual_seed(0)
    return ARCHITECTURES[name](functools.partial(MLP, hidden=(8,)), functools.partial(MLPHead, hidden=(8,)), TASKS, INPUT_SHAPE)


def inputs():
    return torch.randn(BATCH, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


def reached_by(model, task):
    """The ids of the parameters that the loss of ``task`` alone gives a nonzero gradient."""
    output = model(inputs())[task.name]
    parameters = list(model.parameters())
    gradients = torch.autograd.grad((output**2).sum(), parameters, allow_unused=True)
    return {id(parameter) for parameter, gradient in zip(parameters, gradients) if gradient is not None and gradient.abs().sum() > 0}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_task_gets_an_output_of_its_width(name):
    outputs = build(name)(inputs())
    assert {task: tuple(output.shape) for task, output in outputs.items()} == {task.name: (BATCH, task.num_outputs) for task in TASKS}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_gates_weigh_the_experts_on_the_simplex(name):
    for weights in build(name).gate_weights(inputs()).values():
        assert torch.all(weights >= 0) and torch.allclose(weights.sum(dim=-1), torch.ones(BATCH))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shared_and_task_parameters_split_the_model_by_the_losses_that_reach_them(name):
    model = build(name)
    shared = {id(parameter) for parameter in model.shared_parameters()}
    own = {task.name: {id(parameter) for parameter in model.task_parameters(task.name)} for task in TASKS}
    every = [id(parameter) for parameter in model.parameters()]
    assert sorted([*shared, *(i for ids in own.values() for i in ids)]) == sorted(every)  # a partition
    reached = {task.name: reached_by(model, task) for task in TASKS}
    for task in TASKS:
        others = set().union(*(reached[other.name] for other in TASKS if other is not task))
        assert own[task.name] <= reached[task.name] and not own[task.name] & others
    assert all(sum(i in reached[task.name] for task in TASKS) >= 2 for i in shared)


def test_ple_declares_shared_what_its_shared_gate_mixes_into_every_task():
    model = build("ple")
    first, last = model.levels
    shared = {id(parameter) for parameter in model.shared_parameters()}
    assert {id(parameter) for parameter in first.task_experts["a"].parameters()} <= shared
    assert not {id(parameter) for parameter in last.task_experts["a"].parameters()} & shared


def test_an_mmoe_output_is_its_tower_on_the_gate_weighted_sum_of_the_experts():
    model, x = build("mmoe"), inputs()
    weights = torch.softmax(x.flatten(start_dim=1) @ model.gates["a"].weight.T, dim=-1)
    mixed = sum(weights[:, [index]] * expert(x) for index, expert in enumerate(model.experts))
    assert torch.allclose(model(x)["a"], model.heads["a"](mixed), atol=1e-6)


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("mmoe", ["method=ew"]),
        ("cgc", ["method=ew"]),
        ("ple", ["method=ew"]),
        ("mmoe", ["method=mgda"]),
        ("ple", ["method=pcgrad"]),
        ("mmoe", ["sam=fmtl"]),
        ("ple", ["sam=fmtl", "method=mgda"]),
    ],
)
def test_each_architecture_trains_with_weightings_aggregators_and_fmtl(model, options, tmp_path):
    overrides = [
        "experiment=synthetic_mmoe",
        f"model={model}",
        *options,
        "data.samples={train: 64, val: 32, test: 32}",
        "data.dimension=8",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
        "~callbacks.rich_progress_bar",
    ]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert results["global_step"] == 2
    assert all(math.isfinite(value) for metrics in results["test"].values() for value in metrics.values())
