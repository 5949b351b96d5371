import numpy as np
import pytest
import torch

from mtl.methods.nash_mtl import NashMTL, convex_solution, nash_weights
from tests.methods.conftest import random_jacobian


def solve(jacobian: torch.Tensor, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    gramian = jacobian.double() @ jacobian.double().T
    return nash_weights(gramian, torch.zeros(len(gramian), dtype=torch.float64) if start is None else start), gramian


def equation_residual(gramian: np.ndarray, weights: np.ndarray) -> float:
    """``max_k |α_k (M α)_k - 1|``."""
    return float(np.abs(weights * (gramian @ weights) - 1).max())


@pytest.mark.parametrize(("num_tasks", "num_parameters", "seed"), [(2, 6, 0), (3, 10, 1), (4, 12, 2), (5, 30, 3), (6, 40, 4)])
def test_weights_solve_the_bargaining_equation(num_tasks, num_parameters, seed):
    scales = torch.logspace(-2, 2, num_tasks)[:, None]
    weights, gramian = solve(random_jacobian(num_tasks, num_parameters, seed=seed) * scales)
    assert (weights > 0).all()
    assert torch.allclose(weights * (gramian @ weights), torch.ones(num_tasks, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_any_positive_start_reaches_the_same_solution(seed):
    jacobian = random_jacobian(5, 12, seed=seed)
    cold, gramian = solve(jacobian)
    for start in (cold * 1.1, torch.full((5,), 1e-3, dtype=torch.float64), torch.logspace(-3, 3, 5, dtype=torch.float64)):
        warm, _ = solve(jacobian, start)
        assert torch.allclose(warm, cold, rtol=1e-8)
    assert equation_residual(gramian.numpy(), cold.numpy()) < 1e-9


def test_a_strongly_conflicting_case_is_solved():
    # task 2 conflicts with the sum of the others: the paper's concave-convex procedure cannot start
    # at α = 1 there (M·1 has a negative entry); Newton's method can
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.9, -0.9, 0.4]], dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    assert (gramian.sum(dim=1) < 0).any()
    weights = convex_solution(gramian.numpy(), np.ones(3))
    assert equation_residual(gramian.numpy(), weights) < 1e-8
    solved, _ = solve(jacobian)
    assert torch.allclose(solved * (gramian @ solved), torch.ones(3, dtype=torch.float64), atol=1e-8)


def test_hand_computed_orthogonal_case(make_method):
    # orthogonal rows: (G Gᵀ α)_k = |g_k|² α_k, so α_k² |g_k|² = 1 and α_k = 1/|g_k| = (1/2, 1/4, 1)
    # d = (1/2)(2, 0, 0) + (1/4)(0, 4, 0) + 1·(0, 0, 1) = (1, 1, 1): norm √3, without the clip
    jacobian = torch.tensor([[2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    method = make_method("nash_mtl", 3, max_norm=0)
    assert torch.allclose(method(jacobian, torch.ones(3)), torch.ones(3))
    assert torch.allclose(method.last_weights, torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64))
    # with the default max_norm = 1 the same direction is scaled to unit norm
    clipped = make_method("nash_mtl", 3)(jacobian, torch.ones(3))
    assert torch.allclose(clipped, torch.ones(3) / 3**0.5)


def test_weights_are_reused_between_updates(make_method):
    method = make_method("nash_mtl", 2, update_every=3, max_norm=0)
    first, second = random_jacobian(2, 5, seed=1), random_jacobian(2, 5, seed=2)
    method(first, torch.ones(2))
    solved = method.last_weights.clone()
    for _ in range(2):
        direction = method(second, torch.ones(2))
        assert torch.equal(method.last_weights, solved)
        assert torch.allclose(direction, solved.float() @ second)
    method(second, torch.ones(2))  # the fourth step solves again, for the new Jacobian
    assert torch.allclose(method.last_weights, solve(second)[0], atol=1e-6)


def test_reused_weights_are_clipped_with_each_steps_gradients(make_method):
    # as the official code clips each step's shared gradient: the reused α, then the norm of α @ G_t
    first, second = random_jacobian(2, 5, seed=1), random_jacobian(2, 5, seed=2)
    solved = solve(first)[0].float()
    assert (solved @ first).norm() > 1  # so the first step is clipped
    for scale in (10.0, 0.01):  # the second step's direction clipped, then not
        method = make_method("nash_mtl", 2, update_every=2)
        method(first, torch.ones(2))
        direction, unclipped = method(scale * second, torch.ones(2)), solved @ (scale * second)
        assert torch.allclose(direction, unclipped / unclipped.norm().clamp(min=1), atol=1e-6)


def test_state_dict_round_trip_keeps_the_weights_and_the_step(make_method):
    first = make_method("nash_mtl", 2, update_every=2)
    first(random_jacobian(2, 5, seed=1), torch.ones(2))
    second = make_method("nash_mtl", 2, update_every=2)
    second.load_state_dict(first.state_dict())
    jacobian = random_jacobian(2, 5, seed=3)
    assert torch.equal(first(jacobian, torch.ones(2)), second(jacobian, torch.ones(2)))
    assert second.reuse.calls.item() == 2


def test_zero_gradient_gets_zero_weight():
    weights, gramian = solve(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(weights, torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match=r"method.update_every must be a positive integer \(1 solves every step\), got 0"):
        NashMTL(2, update_every=0)
