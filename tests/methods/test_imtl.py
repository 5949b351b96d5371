"""IMTL-G gives the update equal projections on the unit task gradients; IMTL-L learns loss scales."""

from __future__ import annotations

import math

import pytest
import torch

from tests.methods.conftest import conflicting_jacobian, random_jacobian


def unit_projections(jacobian: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return jacobian @ direction / jacobian.norm(dim=1)


@pytest.mark.parametrize(("num_tasks", "seed"), [(2, 0), (3, 1), (4, 2), (5, 3)])
def test_projections_on_unit_gradients_are_equal_and_weights_sum_to_one(num_tasks, seed, make_method):
    jacobian = random_jacobian(num_tasks, 8, seed=seed).double()
    jacobian *= torch.logspace(-2, 2, num_tasks, dtype=torch.float64)[:, None]  # norms 1e4 apart
    method = make_method("imtl_g", num_tasks)
    projections = unit_projections(jacobian, method(jacobian, torch.ones(num_tasks)))
    assert torch.allclose(projections, projections.mean().expand(num_tasks), rtol=1e-8)
    assert torch.isclose(method.last_weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_matches_the_papers_closed_form(make_method):
    # alpha_{2:K} = g_1 Uᵀ (D Uᵀ)^{-1}, alpha_1 = 1 - sum(alpha_{2:K}), D_k = g_1 - g_k, U_k = u_1 - u_k.
    jacobian = random_jacobian(3, 5, seed=7).double()
    units = jacobian / jacobian.norm(dim=1, keepdim=True)
    differences, unit_differences = jacobian[0] - jacobian[1:], units[0] - units[1:]
    rest = jacobian[0] @ unit_differences.T @ torch.linalg.inv(differences @ unit_differences.T)
    expected = torch.cat([1 - rest.sum(0, keepdim=True), rest])
    method = make_method("imtl_g", 3)
    method(jacobian, torch.ones(3))
    assert torch.allclose(method.last_weights, expected, atol=1e-10)


def test_hand_computed_two_tasks(make_method):
    # g1 = (1, 0), g2 = (0, 2): d = a g1 + (1 - a) g2 = (a, 2 - 2a); equal projections on (1, 0) and
    # (0, 1) need a = 2 - 2a, so a = 2/3 and d = (2/3, 2/3).
    method = make_method("imtl_g", 2)
    direction = method(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64), torch.ones(2))
    assert torch.allclose(direction, torch.full((2,), 2 / 3, dtype=torch.float64))
    assert torch.allclose(method.last_weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    # Conflicting rows: the projections still agree, and are positive.
    jacobian = conflicting_jacobian().double()
    projections = unit_projections(jacobian, method(jacobian, torch.ones(2)))
    assert projections[0] > 0 and torch.isclose(projections[0], projections[1])


def test_zero_and_duplicated_rows(make_method):
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    method = make_method("imtl_g", 4)
    method(jacobian, torch.ones(4))
    # The zero row gets 0; the duplicated rows split the weight 1/3 of the hand-computed case above.
    assert torch.allclose(method.last_weights, torch.tensor([2 / 3, 0.0, 1 / 6, 1 / 6], dtype=torch.float64), atol=1e-6)


def test_opposite_gradients_give_zero_with_weights_summing_to_one(make_method):
    # g2 = -3 g1: equal projections need <d, u1> = -<d, u1>, so d = 0: alpha = (3/4, 1/4) (alpha ∝ 1/|g_k|).
    row = torch.tensor([1.0, 2.0, -1.0])
    method = make_method("imtl_g", 2)
    direction = method(torch.stack([row, -3 * row]), torch.ones(2))
    assert torch.allclose(direction, torch.zeros(3), atol=1e-5)
    assert torch.allclose(method.last_weights, torch.tensor([0.75, 0.25], dtype=torch.float64), atol=1e-6)


def test_a_vanishing_weight_sum_keeps_projections_equal_and_positive(make_method):
    # u3 sits just off the plane of u1 = e1 and u2 = e2, and its gradient is tiny: the paper's weights,
    # beta / sum(beta), would flip d against every task (sum(beta) < 0). The floor keeps d along them.
    angle = 0.1
    third = torch.tensor([math.cos(angle) / math.sqrt(2), math.cos(angle) / math.sqrt(2), math.sin(angle)], dtype=torch.float64)
    jacobian = torch.stack([torch.tensor([1.0, 0.0, 0.0]).double(), torch.tensor([0.0, 1.0, 0.0]).double(), 0.01 * third])
    method = make_method("imtl_g", 3)
    projections = unit_projections(jacobian, method(jacobian, torch.ones(3)))
    assert (projections > 0).all()
    assert torch.allclose(projections, projections.mean().expand(3), rtol=1e-8)


def test_imtl_l_objective_gradient_in_the_scales(make_method):
    # d/ds_k (1/K) (e^{s_k} L_k - s_k) = (e^{s_k} L_k - 1) / K; d/dL_k = e^{s_k} / K, with K = 3.
    method = make_method("imtl_l", 3)
    assert method.stateful
    with torch.no_grad():
        method.log_scales.copy_(torch.tensor([0.0, -1.0, 0.5]))
    losses = torch.tensor([2.0, 0.3, 1.5], requires_grad=True)
    method.objective(losses).backward()
    scales = torch.tensor([0.0, -1.0, 0.5]).exp()
    assert torch.allclose(method.log_scales.grad, (scales * losses.detach() - 1) / 3)
    assert torch.allclose(losses.grad, scales / 3)
    assert torch.allclose(method(losses.detach()), scales / 3)


def test_imtl_l_scales_travel_in_the_state_dict(make_method):
    trained = make_method("imtl_l", 2)
    with torch.no_grad():
        trained.log_scales.add_(torch.tensor([0.3, -0.2]))
    resumed = make_method("imtl_l", 2)
    resumed.load_state_dict(trained.state_dict())
    losses = torch.tensor([1.0, 4.0])
    assert torch.equal(resumed(losses), trained(losses))
    assert torch.equal(resumed.objective(losses), trained.objective(losses))


def test_imtl_l_is_uncertainty_weighting_with_negated_log_scales(make_method):
    # (1/K) sum e^{s} L - s at s = -v is (1/K) sum e^{-v} L + v, UW's objective in its common form:
    # the same objective, so Adam (equivariant to flipping a coordinate's sign) follows one path.
    def train(method):
        theta = torch.tensor([1.0, -2.0], requires_grad=True)
        optimizer = torch.optim.Adam([theta, *method.parameters()], lr=0.1)
        for _ in range(20):
            optimizer.zero_grad()
            losses = torch.stack([(theta**2).sum(), 5 * (theta - 1).abs().sum()])
            method.objective(losses).backward()
            optimizer.step()
        return theta

    imtl_l, uw = make_method("imtl_l", 2), make_method("uw", 2)
    theta_imtl_l, theta_uw = train(imtl_l), train(uw)
    assert not torch.equal(imtl_l.log_scales, torch.zeros(2))
    assert torch.allclose(imtl_l.log_scales, -uw.log_variances, atol=1e-6)
    assert torch.allclose(theta_imtl_l, theta_uw, atol=1e-6)
