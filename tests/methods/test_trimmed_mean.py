import pytest
import torch
from scipy import stats

from mtl.methods.trimmed_mean import TrimmedMean
from tests.methods.conftest import random_jacobian


def test_three_tasks_trimmed_by_one_give_the_coordinate_wise_median(make_method):
    jacobian = torch.tensor([[1.0, 5.0, -3.0], [2.0, -1.0, 0.0], [10.0, 0.0, 4.0]])
    direction = make_method("trimmed_mean", 3)(jacobian, torch.ones(3))
    assert torch.equal(direction, torch.tensor([2.0, 0.0, 0.0]))


@pytest.mark.parametrize(("tasks", "trim"), [(5, 1), (5, 2), (8, 3), (6, 0)])
def test_it_is_scipys_trimmed_mean_of_each_coordinate(tasks, trim, make_method):
    jacobian = random_jacobian(tasks, 11, seed=tasks + trim, dtype=torch.float64)
    direction = make_method("trimmed_mean", tasks, trim=trim)(jacobian, torch.ones(tasks))
    expected = stats.trim_mean(jacobian.numpy(), trim / tasks, axis=0)
    assert torch.allclose(direction, torch.from_numpy(expected))


def test_no_trim_is_the_mean(make_method):
    jacobian = random_jacobian(4, 9)
    assert torch.allclose(make_method("trimmed_mean", 4, trim=0)(jacobian, torch.ones(4)), jacobian.mean(dim=0))


def test_one_huge_value_per_coordinate_is_dropped(make_method):
    jacobian = random_jacobian(5, 6, seed=3)
    corrupted = jacobian.clone()
    corrupted[torch.arange(6) % 5, torch.arange(6)] = 1e9  # a different task's value in each coordinate
    direction = make_method("trimmed_mean", 5)(corrupted, torch.ones(5))
    assert direction.abs().max() < 10
    assert not torch.allclose(direction, make_method("trimmed_mean", 5)(jacobian, torch.ones(5)))


def test_too_few_tasks_are_refused():
    with pytest.raises(ValueError, match=r"trimming method.trim=1 values of each side needs at least 3 task gradients; this run has 2"):
        TrimmedMean(2)
    with pytest.raises(ValueError, match=r"method.trim must be a non-negative"):
        TrimmedMean(3, trim=-1)
