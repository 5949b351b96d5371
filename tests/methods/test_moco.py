"""MoCo: the gradient tracking, the projected-gradient weights on the simplex, and the resume."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.methods.moco import MoCo
from mtl.methods.solvers import project_onto_simplex
from tests.methods.conftest import conflicting_jacobian, random_jacobian


def test_two_tasks_by_hand(make_method):
    method = make_method("moco", 2)
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # Step 1: beta_1 = 0.5, Y = 0 + 0.5 (G - 0) = diag(0.5, 1), Y Yᵀ = diag(0.25, 1).
    # gamma_1 = 0.1: lambda - 0.1 Y Yᵀ lambda = [0.5 - 0.0125, 0.5 - 0.05] = [0.4875, 0.45], which sums to 0.9375;
    # the projection adds (1 - 0.9375) / 2 = 0.03125 to both: lambda = [0.51875, 0.48125], d = lambda @ Y.
    direction = method(jacobian, torch.ones(2))
    assert torch.allclose(method.tracked_gradients, torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    assert torch.allclose(method.task_weights, torch.tensor([0.51875, 0.48125], dtype=torch.float64))
    assert torch.allclose(direction, torch.tensor([0.51875 * 0.5, 0.48125 * 1.0]))
    # Step 2, same G: beta_2 = 0.5 / sqrt(2), Y = diag(0.5, 1) + beta_2 (diag(1, 2) - diag(0.5, 1)) = (0.5 + beta_2 / 2) G.
    beta, gamma = 0.5 / math.sqrt(2), 0.1 / math.sqrt(2)
    tracked = [0.5 + beta * 0.5, 1.0 + beta * 1.0]
    stepped = [0.51875 - gamma * tracked[0] ** 2 * 0.51875, 0.48125 - gamma * tracked[1] ** 2 * 0.48125]
    shift = (1.0 - sum(stepped)) / 2  # both stay positive, so the projection shifts both equally
    weights = [stepped[0] + shift, stepped[1] + shift]
    direction = method(jacobian, torch.ones(2))
    assert torch.allclose(method.tracked_gradients, torch.diag(torch.tensor(tracked)))
    assert torch.allclose(method.task_weights, torch.tensor(weights, dtype=torch.float64))
    assert torch.allclose(direction, torch.tensor([weights[0] * tracked[0], weights[1] * tracked[1]]))


@pytest.mark.parametrize(
    "vector, projection",
    [([0.4875, 0.45], [0.51875, 0.48125]), ([2.0, 0.0], [1.0, 0.0]), ([1.0, 1.0, -3.0], [0.5, 0.5, 0.0]), ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5])],
)
def test_simplex_projection_by_hand(vector, projection):
    assert torch.allclose(project_onto_simplex(torch.tensor(vector, dtype=torch.float64)), torch.tensor(projection, dtype=torch.float64))


def test_simplex_projection_meets_its_optimality_conditions():
    # w = max(v - theta, 0) with sum(w) = 1 characterizes the Euclidean projection onto the simplex.
    for seed in range(20):
        vector = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
        projection = project_onto_simplex(vector)
        assert torch.isclose(projection.sum(), torch.tensor(1.0, dtype=torch.float64)) and (projection >= 0).all()
        positive = projection > 0
        theta = (vector - projection)[positive]
        assert torch.allclose(theta, theta[0].expand_as(theta))
        assert (vector[~positive] <= theta[0] + 1e-12).all()


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_the_weights_stay_on_the_simplex(rho, make_method):
    method = make_method("moco", 4, rho=rho)
    for seed in range(30):
        jacobian = random_jacobian(4, 9, seed=seed) * torch.tensor([[1e-3], [1.0], [1e2], [0.0]])
        method(jacobian, torch.ones(4))
        assert torch.isclose(method.task_weights.sum(), torch.tensor(1.0, dtype=torch.float64)) and (method.task_weights >= 0).all()


def test_the_weights_move_toward_the_minimum_norm_combination(make_method):
    # MGDA's min-norm weights for the conflicting pair; MoCo's weights descend toward them with constant steps.
    method = make_method("moco", 2, beta_sigma=0.0, gamma=0.5, gamma_sigma=0.0)
    jacobian = conflicting_jacobian()
    for _ in range(500):
        method(jacobian, torch.ones(2))
    first, second = jacobian.double()
    weight = float((second - first) @ second / (second - first).square().sum())
    assert torch.allclose(method.task_weights, torch.tensor([weight, 1 - weight], dtype=torch.float64), atol=1e-4)


def test_a_state_dict_round_trip_continues_identically(make_method):
    jacobians = [random_jacobian(3, 6, seed=seed) for seed in range(4)]
    losses = torch.ones(3)
    trained = make_method("moco", 3)
    for jacobian in jacobians[:2]:
        trained(jacobian, losses)
    resumed = make_method("moco", 3)
    resumed.load_state_dict(trained.state_dict())
    for jacobian in jacobians[2:]:
        assert torch.equal(trained(jacobian, losses), resumed(jacobian, losses))
    assert torch.equal(trained.task_weights, resumed.task_weights)


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="method.beta must be in"):
        MoCo(2, beta=0.0)
    with pytest.raises(ValueError, match="method.gamma must be positive"):
        MoCo(2, gamma=0.0)
    with pytest.raises(ValueError, match="method.rho must be non-negative, got -0.5"):
        MoCo(2, rho=-0.5)
