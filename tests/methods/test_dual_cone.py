"""UPGrad and DualProj return non-conflicting directions, projections onto the dual cone of the rows."""

from __future__ import annotations

import pytest
import torch

from mtl.methods.dual_cone import dual_cone_projections
from mtl.methods.solvers import CosineQuadraticForm
from tests.methods.conftest import conflicting_jacobian, random_jacobian

JACOBIANS = {
    "random": random_jacobian(4, 9, seed=3).double(),
    "conflicting": conflicting_jacobian().double(),
    "more tasks than parameters": random_jacobian(5, 3, seed=4).double(),
    "opposite rows": torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0], [0.5, -1.0, 1.0]], dtype=torch.float64),
    "norms 1e3 apart": torch.tensor([[30.0, 10.0, 0.0], [-0.01, 0.02, 0.01], [0.0, -0.03, 0.02]], dtype=torch.float64),
    "norms 1e6 apart": random_jacobian(3, 5, seed=6).double() * torch.tensor([[1e3], [1e-3], [1.0]], dtype=torch.float64),
}
METHODS = ["upgrad", "dualproj"]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", JACOBIANS)
def test_direction_conflicts_with_no_task(name, case, make_method):
    jacobian = JACOBIANS[case]
    direction = make_method(name, len(jacobian))(jacobian, torch.ones(len(jacobian)))
    cosines = jacobian @ direction / (jacobian.norm(dim=1) * direction.norm())
    assert (cosines >= -1e-7).all()


@pytest.mark.parametrize("case", JACOBIANS)
def test_projections_satisfy_their_optimality_conditions(case):
    # w = argmin_{v >= u} vᵀ J Jᵀ v has, with d = Jᵀ w, the KKT conditions (necessary and sufficient):
    # w >= u, J d >= 0, and (w - u) · J d = 0 (a row's weight rises above u only where d is orthogonal to it).
    jacobian = JACOBIANS[case]
    size = len(jacobian)
    gramian = jacobian @ jacobian.T
    norms = gramian.diagonal().sqrt()
    preferences = torch.cat([torch.eye(size, dtype=torch.float64), torch.full((1, size), 1.0 / size, dtype=torch.float64)])
    for preference, weights in zip(preferences, dual_cone_projections(CosineQuadraticForm(gramian), preferences)):
        # <d, g_k> relative to |g_k| and to the length of the projected vector Jᵀu (d itself may be 0)
        products = gramian @ weights / (norms * (preference @ gramian @ preference).sqrt())
        assert (weights >= preference).all()
        assert (products >= -1e-7).all()
        assert abs((weights - preference) @ (products * norms)) < 1e-7 * (weights * norms).sum()


@pytest.mark.parametrize("name", METHODS)
def test_rows_without_conflict_give_the_mean(name, make_method):
    jacobian = random_jacobian(4, 6, seed=5).double().abs()  # all inner products positive
    direction = make_method(name, 4)(jacobian, torch.ones(4))
    assert torch.allclose(direction, jacobian.mean(dim=0), atol=1e-8)


def test_hand_computed_two_by_two(make_method):
    # g1 = (1, 0), g2 = (-2, 1): <g1, g2> = -2 < 0.
    # proj(g1) = g1 - <g1, g2>/|g2|^2 g2 = (1, 0) + 0.4 (-2, 1) = (0.2, 0.4)   (<., g1> = 0.2 >= 0)
    # proj(g2) = g2 - <g2, g1>/|g1|^2 g1 = (-2, 1) + 2 (1, 0) = (0, 1)          (<., g2> = 1 >= 0)
    # UPGrad = mean = (0.1, 0.7).
    # mean = (-0.5, 0.5) has <mean, g1> = -0.5: DualProj = mean + 0.5 g1 = (0, 0.5)  (<., g2> = 0.5).
    jacobian = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    upgrad = make_method("upgrad", 2)
    assert torch.allclose(upgrad(jacobian, torch.ones(2)), torch.tensor([0.1, 0.7], dtype=torch.float64), atol=1e-8)
    # weights: proj(g1) = g1 + 0.4 g2, proj(g2) = 2 g1 + g2, averaged: (1.5, 0.7).
    assert torch.allclose(upgrad.last_weights, torch.tensor([1.5, 0.7], dtype=torch.float64), atol=1e-8)
    dualproj = make_method("dualproj", 2)
    assert torch.allclose(dualproj(jacobian, torch.ones(2)), torch.tensor([0.0, 0.5], dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("name", METHODS)
def test_a_zero_row_changes_nothing_else(name, make_method):
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    without_zero = make_method(name, 2)(jacobian[[0, 2]], torch.ones(2))
    with_zero = make_method(name, 3)(jacobian, torch.ones(3))
    # UPGrad averages over 3 projections, one of them 0; DualProj projects the mean over 3 rows.
    assert torch.allclose(with_zero, without_zero * 2 / 3, atol=1e-8)


@pytest.mark.parametrize("case", JACOBIANS)
def test_least_squares_solution_is_the_quadratic_programs(case):
    # minimize_above (non-negative least squares in the Cholesky factor) against quadprog's dual
    # active-set method on the same QP, min wᵀ J Jᵀ w subject to w >= u.
    jacobian = JACOBIANS[case]
    size = len(jacobian)
    form = CosineQuadraticForm(jacobian @ jacobian.T)
    preferences = torch.cat([torch.eye(size, dtype=torch.float64), torch.rand(2, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    identity = torch.eye(size, dtype=torch.float64)
    expected = torch.stack([form.minimize(identity, preference) for preference in preferences])
    assert torch.allclose(form.minimize_above(preferences), expected, atol=1e-9, rtol=1e-7)
