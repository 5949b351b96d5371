import pytest
import torch

from mtl.methods.pcgrad import projected_coefficients
from tests.methods.conftest import conflicting_jacobian, random_jacobian


def projected_gradients(jacobian: torch.Tensor, seed: int = 0) -> torch.Tensor:
    jacobian = jacobian.double()
    return projected_coefficients(jacobian @ jacobian.T, torch.Generator().manual_seed(seed)) @ jacobian


@pytest.mark.parametrize("seed", range(20))
def test_two_projected_gradients_never_conflict(seed):
    jacobian = random_jacobian(2, 5, seed=seed)
    projected = projected_gradients(jacobian, seed)
    assert projected[0] @ projected[1] >= -1e-12
    # and each projected gradient no longer conflicts with the other original gradient
    assert projected[0] @ jacobian[1].double() >= -1e-12
    assert projected[1] @ jacobian[0].double() >= -1e-12


def test_the_conflicting_pair_is_changed():
    jacobian = conflicting_jacobian()
    assert not torch.allclose(projected_gradients(jacobian), jacobian.double())


def test_without_conflict_the_direction_is_the_mean(make_method):
    # pairwise inner products 1*1 + 0 = 1, 0.5, 2: no conflict, nothing is projected
    jacobian = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    direction = make_method("pcgrad", 3)(jacobian, torch.ones(3))
    assert torch.allclose(direction, jacobian.mean(dim=0))


def test_hand_computed_two_by_two(make_method):
    # g1 = (1, 0), g2 = (-1, 1): g1·g2 = -1, |g1|² = 1, |g2|² = 2
    # g1^PC = g1 - (-1/2) g2 = (0.5, 0.5);  g2^PC = g2 - (-1/1) g1 = (0, 1)
    # mean: (0.25, 0.75); as weights of the rows: c = ((1 + 1)/2, (1/2 + 1)/2) = (1, 0.75)
    method = make_method("pcgrad", 2)
    direction = method(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), torch.ones(2))
    assert torch.allclose(direction, torch.tensor([0.25, 0.75]))
    assert torch.allclose(method.last_weights, torch.tensor([1.0, 0.75], dtype=torch.float64))


def test_three_tasks_depend_on_the_order_drawn_from_the_seed(make_method):
    # g1 conflicts with both others, so the order of its two projections matters
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, -0.5, 1.0]])
    directions = {tuple(make_method("pcgrad", 3, seed=seed)(jacobian, torch.ones(3)).tolist()) for seed in range(8)}
    assert len(directions) > 1
    first, second = make_method("pcgrad", 3, seed=5), make_method("pcgrad", 3, seed=5)
    assert torch.equal(first(jacobian, torch.ones(3)), second(jacobian, torch.ones(3)))


def paper_projections(jacobian: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1 of the paper on the gradients themselves: task by task, one random order each."""
    projected = []
    for task, gradient in enumerate(jacobian):
        for other in torch.randperm(len(jacobian), generator=generator).tolist():
            inner_product = gradient @ jacobian[other]
            if other != task and inner_product < 0:
                gradient = gradient - inner_product / (jacobian[other] @ jacobian[other]) * jacobian[other]
        projected.append(gradient)
    return torch.stack(projected)


@pytest.mark.parametrize("seed", range(5))
def test_the_coefficients_give_the_papers_sequential_projections(seed):
    jacobian = random_jacobian(7, 5, seed=seed).double()  # 7 tasks in 5 dimensions: many conflicts
    expected = paper_projections(jacobian, torch.Generator().manual_seed(seed))
    assert torch.allclose(projected_gradients(jacobian, seed), expected, atol=1e-12)
