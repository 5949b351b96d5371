import pytest
import torch

from mtl.methods.fairgrad import FairGrad, fair_weights
from mtl.methods.nash_mtl import nash_weights
from tests.methods.conftest import random_jacobian


def gramian_of(jacobian: torch.Tensor) -> torch.Tensor:
    return jacobian.double() @ jacobian.double().T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize(("num_tasks", "num_parameters", "seed"), [(2, 6, 0), (3, 10, 1), (5, 20, 2)])
def test_weights_solve_the_fixed_point_equation(alpha, num_tasks, num_parameters, seed):
    gramian = gramian_of(random_jacobian(num_tasks, num_parameters, seed=seed) * torch.logspace(-1, 1, num_tasks)[:, None])
    weights = fair_weights(gramian, alpha)
    assert (weights > 0).all()
    assert torch.allclose(gramian @ weights, weights ** (-1 / alpha), rtol=1e-6)


def test_alpha_one_is_the_nash_mtl_equation():
    # α = 1: G Gᵀ w = 1/w, i.e. w ⊙ (G Gᵀ w) = 1, the Nash bargaining weights
    gramian = gramian_of(random_jacobian(4, 12, seed=7))
    fair = fair_weights(gramian, 1.0)
    nash = nash_weights(gramian, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(fair, nash, rtol=1e-6)


def test_hand_computed_orthogonal_case(make_method):
    # orthogonal rows with |g_1|² = 4, |g_2|² = 1 and α = 2: 4 w_1 = w_1^{-1/2} so w_1 = 4^{-2/3};
    # w_2 = 1. d = (2 · 4^{-2/3}, 1) = (2^{-1/3}, 1), norm ≈ 1.2755 > 1 so the clip scales it to norm 1
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    method = make_method("fairgrad", 2, max_norm=0)
    direction = method(jacobian, torch.ones(2))
    assert torch.allclose(method.last_weights, torch.tensor([4 ** (-2 / 3), 1.0], dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(direction, torch.tensor([2 ** (-1 / 3), 1.0]), rtol=1e-6)
    clipped = make_method("fairgrad", 2)(jacobian, torch.ones(2))
    assert torch.allclose(clipped, direction / direction.norm(), rtol=1e-6)


def test_larger_alpha_favours_the_task_with_the_smaller_gradient():
    # w_k = |g_k|^{-2α/(α+1)} for orthogonal rows: the weight ratio grows with α
    gramian = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    ratios = [(lambda w: (w[1] / w[0]).item())(fair_weights(gramian, alpha)) for alpha in (0.5, 1.0, 2.0, 5.0)]
    assert ratios == sorted(ratios) and ratios[0] > 1


def test_zero_gradient_gets_zero_weight():
    weights = fair_weights(gramian_of(torch.tensor([[1.0, 0.0], [0.0, 0.0]])), 2.0)
    assert torch.allclose(weights, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_non_positive_alpha_is_rejected():
    with pytest.raises(ValueError, match="method.alpha must be positive .* got 0"):
        FairGrad(2, alpha=0)
