"""DB-MTL: the log transform, the EMA of log-loss gradients, and the balancing to the largest norm."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.methods.db_mtl import DualBalancing, balance_to_max_norm
from tests.methods.conftest import random_jacobian


def test_two_tasks_by_hand(make_method):
    method = make_method("db_mtl", 2, sigma=0.5)
    # Step 1, beta_1 = 0.9 / 1**0.5 = 0.9. Log-loss gradients G_k / L_k: [3, 4] / 2 = [1.5, 2], [1, 0] / 0.5 = [2, 0].
    # m = 0.1 * those = [0.15, 0.2] (norm 0.25), [0.2, 0] (norm 0.2); the largest norm is 0.25,
    # so the balanced rows are [0.15, 0.2] and [0.25, 0], and their mean is [0.2, 0.1].
    first = method(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([2.0, 0.5]))
    assert torch.allclose(first, torch.tensor([0.2, 0.1]), atol=1e-6)
    # Step 2, beta_2 = 0.9 / sqrt(2); losses 1 so the log-loss gradients are the rows [0, 2] and [0, -1].
    beta = 0.9 / math.sqrt(2)
    first_average = [beta * 0.15, beta * 0.2 + (1 - beta) * 2.0]
    second_average = [beta * 0.2, -(1 - beta)]
    first_norm, second_norm = math.hypot(*first_average), math.hypot(*second_average)
    largest = max(first_norm, second_norm)
    expected = [(a / first_norm + b / second_norm) * largest / 2 for a, b in zip(first_average, second_average)]
    second = method(torch.tensor([[0.0, 2.0], [0.0, -1.0]]), torch.tensor([1.0, 1.0]))
    assert torch.allclose(method.gradient_average, torch.tensor([first_average, second_average]), atol=1e-6)
    assert torch.allclose(second, torch.tensor(expected), atol=1e-6)


def test_balanced_rows_keep_their_directions_and_share_the_largest_norm():
    rows = random_jacobian(4, 10) * torch.tensor([[1e-3], [1.0], [30.0], [2.0]])
    balanced = balance_to_max_norm(rows)
    largest = rows.norm(dim=1).max()
    assert torch.allclose(balanced.norm(dim=1), largest.expand(4), rtol=1e-5)
    assert torch.allclose(torch.cosine_similarity(balanced, rows, dim=1), torch.ones(4), atol=1e-5)


def test_a_zero_row_stays_zero_and_all_zero_rows_give_zero():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.equal(balance_to_max_norm(rows), rows)
    assert torch.equal(balance_to_max_norm(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_the_direction_ignores_each_task_loss_scale(make_method):
    # Scaling task k's loss by c scales its gradient by c: the log-loss gradient G_k / L_k is unchanged.
    jacobian, losses = random_jacobian(3, 8), torch.tensor([0.5, 2.0, 1.0])
    scales = torch.tensor([1e3, 1.0, 1e-2])
    plain = make_method("db_mtl", 3)(jacobian, losses)
    scaled = make_method("db_mtl", 3)(jacobian * scales[:, None], losses * scales)
    assert torch.allclose(plain, scaled, rtol=1e-4, atol=1e-6)


def test_the_loss_part_minimizes_the_mean_log_loss(make_method):
    method = make_method("db_mtl_loss", 2)
    losses = torch.tensor([2.0, 0.5], requires_grad=True)
    # d/dL_k mean_k log L_k = 1 / (K L_k) = [1/4, 1]
    assert torch.allclose(method(losses.detach()), torch.tensor([0.25, 1.0]))
    method.objective(losses).backward()
    assert torch.allclose(losses.grad, torch.tensor([0.25, 1.0]))
    assert torch.isclose(method.objective(losses.detach()), torch.tensor((math.log(2.0) + math.log(0.5)) / 2), atol=1e-6)



def test_the_loss_part_is_the_scale_invariant_loss_with_eps_in_the_log(make_method):
    losses = torch.tensor([1e-7, 2.0], dtype=torch.float64)
    scale_invariant = make_method("si", 2)(losses)
    # 1 / (K (L + eps)) = 1 / (K L) * L / (L + eps): 1/1.1 of SI's weight at L = 1e-7, SI's at L = 2
    assert torch.allclose(make_method("db_mtl_loss", 2)(losses), scale_invariant * losses / (losses + 1e-8))

def test_a_state_dict_round_trip_continues_identically(make_method):
    jacobians = [random_jacobian(3, 6, seed=seed) for seed in range(4)]
    losses = torch.tensor([0.5, 1.0, 2.0])
    trained = make_method("db_mtl", 3, sigma=0.5)
    for jacobian in jacobians[:2]:
        trained(jacobian, losses)
    resumed = make_method("db_mtl", 3, sigma=0.5)
    resumed.load_state_dict(trained.state_dict())
    for jacobian in jacobians[2:]:
        assert torch.equal(trained(jacobian, losses), resumed(jacobian, losses))
    assert int(resumed.steps) == 4


def test_a_jacobian_of_another_shape_is_rejected():
    method = DualBalancing(2)
    method(random_jacobian(2, 5), torch.ones(2))
    with pytest.raises(ValueError, match=r"state of shape \(2, 5\).*Jacobian of shape \(2, 6\)"):
        method(random_jacobian(2, 6), torch.ones(2))


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="method.beta must be in"):
        DualBalancing(2, beta=1.0)
    with pytest.raises(ValueError, match="method.sigma must be non-negative, got -1"):
        DualBalancing(2, sigma=-1.0)
