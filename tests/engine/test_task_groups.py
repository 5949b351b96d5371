"""Task grouping (jacobian.groups): the aggregator sees the mean rows of groups of tasks."""

import functools

import pytest
import torch

from mtl.engine import MultiTaskModule
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.task_groups import TaskGroups, cluster_by_cosine
from mtl.methods import GradientAggregator
from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.sam import FlatMTL
from mtl.tasks import stack_losses
from tests.engine.test_jacobian import MODELS, TASKS, batch, make, reference_jacobian, shared

NAMES = [task.name for task in TASKS]


class Recorder(GradientAggregator):
    """Returns the first row, keeps the Jacobian and losses it was given."""

    def forward(self, jacobian, losses):
        self.seen = (jacobian.clone(), losses.clone())
        return jacobian[0]


def engine_step(engine, model_name, rows):
    """One ``write_gradients`` of ``engine`` on a fresh model; the recorder and the model."""
    model, data = make(model_name), batch(model_name)
    recorder = Recorder(rows)
    torch.manual_seed(2)
    representation, predictions = engine.forward(model, data["input"], NAMES)
    losses = stack_losses(TASKS, predictions, data)
    heads = [p for name in NAMES for p in model.task_parameters(name)]
    engine.write_gradients(recorder, losses[None], [representation], shared(model), heads)
    return recorder, model, data


@pytest.mark.parametrize(("model_name", "mode"), [("dropout", "loop"), ("dropout", "batched"), ("dropout", "rep"), ("general", "loop"), ("general", "batched")])
def test_fixed_groups_give_the_mean_rows_and_mean_losses_of_their_tasks(model_name, mode):
    engine = JacobianEngine(mode, groups=[["a", "c"], ["b"]])
    assert engine.bind(NAMES) == 2
    recorder, model, data = engine_step(engine, model_name, 2)
    jacobian, losses = recorder.seen
    if mode == "rep":
        assert jacobian.shape[0] == 2  # rows of the representation gradients, grouped
        return
    reference, reference_losses = reference_jacobian(make(model_name), data)
    assert torch.allclose(jacobian, torch.stack([(reference[0] + reference[2]) / 2, reference[1]]), atol=1e-6)
    assert torch.allclose(losses, torch.stack([(reference_losses[0] + reference_losses[2]) / 2, reference_losses[1]]).detach(), atol=1e-6)


@pytest.mark.parametrize("model_name", MODELS)
def test_as_many_groups_as_tasks_is_no_grouping(model_name):
    grouped_engine, plain_engine = JacobianEngine("loop", groups=len(TASKS)), JacobianEngine("loop")
    assert grouped_engine.bind(NAMES) == plain_engine.bind(NAMES) == len(TASKS)
    _, grouped_model, _ = engine_step(grouped_engine, model_name, len(TASKS))
    _, plain_model, _ = engine_step(plain_engine, model_name, len(TASKS))
    for grouped_parameter, plain_parameter in zip(grouped_model.parameters(), plain_model.parameters()):
        assert torch.equal(grouped_parameter.grad, plain_parameter.grad)


def test_clustering_puts_tasks_with_aligned_gradients_together():
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.1], [2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, -1.0]])
    assert cluster_by_cosine(jacobian, 3) == [[0, 2], [1, 3], [4]]
    assert cluster_by_cosine(jacobian, 5) == [[0], [1], [2], [3], [4]]


def test_clustered_groups_regroup_on_the_first_step_and_every_n_calls():
    groups = TaskGroups(2, regroup_every=3)
    assert groups.bind(["a", "b", "c", "d"]) == 2 and groups.groups == [[0, 1], [2, 3]]
    assert [groups.due() for _ in range(7)] == [True, False, False, True, False, False, True]
    groups.regroup(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]))
    assert groups.groups == [[0, 2], [1, 3]]
    restored = TaskGroups(2, regroup_every=3)
    restored.bind(["a", "b", "c", "d"])
    restored.load_state_dict(groups.state_dict())
    assert restored.groups == groups.groups and restored.steps == groups.steps


def test_a_clustered_engine_aggregates_the_clusters_of_the_first_step():
    engine = JacobianEngine("loop", groups=2)
    engine.bind(NAMES)
    recorder, _, data = engine_step(engine, "dropout", 2)
    reference, _ = reference_jacobian(make("dropout"), data)
    expected = cluster_by_cosine(reference, 2)
    assert engine.groups.groups == expected
    assert torch.allclose(recorder.seen[0], torch.stack([reference[group].mean(0) for group in expected]), atol=1e-6)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["a", "z"], ["b", "c"]], r"jacobian.groups names \['z'\], which are not tasks; the tasks are \['a', 'b', 'c'\]"),
        ([["a", "b"], ["b"]], r"exactly one non-empty group; repeated: \['b'\], missing: \['c'\]"),
        (4, r"jacobian.groups=4 asks for more groups than the 3 tasks"),
    ],
)
def test_bad_groups_are_named(groups, message):
    with pytest.raises(ValueError, match=message):
        JacobianEngine("loop", groups=groups).bind(NAMES)


def module_with(method, groups, sam=None):
    return MultiTaskModule(make("dropout"), TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=0.1), sam=sam, jacobian=JacobianEngine("loop", groups=groups))


def test_groups_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match="the loss weighting LinearScalarization never builds"):
        module_with(LinearScalarization(3), 2)
    with pytest.raises(ValueError, match="cannot be used with sam=FlatMTL"):
        module_with(MGDA(2), 2, FlatMTL())
    with pytest.raises(ValueError, match="MGDA was built for 3 tasks, but jacobian.groups gives it 2 rows"):
        module_with(MGDA(3), 2)
    assert module_with(MGDA(2), 2).step.engine.groups.groups == [[0, 1], [2]]
