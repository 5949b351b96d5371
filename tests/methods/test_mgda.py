"""MGDA returns the min-norm point of the hull of the (normalized) task gradients."""

from __future__ import annotations

import pytest
import torch

from mtl.methods.dual_cone import UPGrad
from mtl.methods.mgda import MGDA
from tests.methods.conftest import conflicting_jacobian, random_jacobian

JACOBIANS = {
    "random": random_jacobian(4, 9, seed=3).double(),
    "conflicting": conflicting_jacobian().double(),
    "more tasks than parameters": random_jacobian(5, 3, seed=4).double(),
    "duplicated rows": torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [-1.0, 0.5, 1.0]], dtype=torch.float64),
    "norms 1e3 apart": torch.tensor([[30.0, 10.0, 0.0], [-0.01, 0.02, 0.01], [0.0, -0.03, 0.02]], dtype=torch.float64),
    "norms 1e6 apart": random_jacobian(3, 5, seed=6).double() * torch.tensor([[1e3], [1e-3], [1.0]], dtype=torch.float64),
}


@pytest.mark.parametrize("case", JACOBIANS)
def test_direction_is_the_min_norm_point_of_the_hull(case, make_method):
    # d = w @ G with w on the simplex is the min-norm point of the hull iff <d, g_k> >= |d|^2 for all k.
    jacobian = JACOBIANS[case]
    method = make_method("mgda", len(jacobian))
    direction = method(jacobian, torch.ones(len(jacobian)))
    weights = method.last_weights
    assert (weights >= 0).all() and torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(weights @ jacobian, direction)
    slack = (jacobian @ direction - direction @ direction) / (jacobian.norm(dim=1) * direction.norm())
    assert (slack >= -1e-7).all()


def two_task_min_norm(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The paper's closed form: gamma = clip(<g2 - g1, g2> / |g1 - g2|^2, 0, 1), d = gamma g1 + (1 - gamma) g2."""
    gamma = ((second - first) @ second / (first - second).pow(2).sum()).clamp(0, 1)
    return gamma * first + (1 - gamma) * second


@pytest.mark.parametrize("seed", range(5))
def test_two_tasks_match_the_closed_form(seed, make_method):
    jacobian = random_jacobian(2, 6, seed=seed).double()
    jacobian[1] *= seed + 0.5
    direction = make_method("mgda", 2)(jacobian, torch.ones(2))
    assert torch.allclose(direction, two_task_min_norm(*jacobian), atol=1e-8)


def test_hand_computed_two_task_cases(make_method):
    # g1 = (1, 0), g2 = (0, 2): gamma = <(-1, 2), (0, 2)> / |(1, -2)|^2 = 4 / 5, d = 0.8 g1 + 0.2 g2 = (0.8, 0.4).
    method = make_method("mgda", 2)
    direction = method(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64), torch.ones(2))
    assert torch.allclose(direction, torch.tensor([0.8, 0.4], dtype=torch.float64), atol=1e-8)
    # g1 = (1, 0), g2 = (2, 0): gamma = <(1, 0), (2, 0)> / 1 = 2, clipped to 1: d = g1.
    direction = method(torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64), torch.ones(2))
    assert torch.allclose(direction, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-8)
    assert torch.allclose(method.last_weights, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-8)


def test_normalizations_divide_the_rows_before_the_min_norm(make_method):
    # g1 = (2, 0), g2 = (0, 1). l2: unit rows (1, 0), (0, 1), min-norm (0.5, 0.5), weights (0.5/2, 0.5/1).
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([4.0, 0.5])
    l2 = make_method("mgda", 2, normalization="l2")
    assert torch.allclose(l2(jacobian, losses), torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-8)
    assert torch.allclose(l2.last_weights, torch.tensor([0.25, 0.5], dtype=torch.float64), atol=1e-8)
    # loss: rows g1/4 = (0.5, 0), g2/0.5 = (0, 2); gamma = 4 / 4.25, d = (2/4.25, 0.5/4.25).
    loss = make_method("mgda", 2, normalization="loss")
    assert torch.allclose(loss(jacobian, losses), torch.tensor([2 / 4.25, 0.5 / 4.25], dtype=torch.float64), atol=1e-8)
    # loss+: rows g1/(4*2) = (0.25, 0), g2/(0.5*1) = (0, 2); gamma = 4 / 4.0625, d = (1/4.0625, 0.125/4.0625).
    plus = make_method("mgda", 2, **{"normalization": "'loss+'"})
    assert torch.allclose(plus(jacobian, losses), torch.tensor([1 / 4.0625, 0.125 / 4.0625], dtype=torch.float64), atol=1e-8)


def test_a_zero_gradient_is_the_min_norm_point(make_method):
    jacobian = torch.tensor([[1.0, 2.0], [0.0, 0.0], [-1.0, 3.0]])
    method = make_method("mgda", 3)
    assert torch.allclose(method(jacobian, torch.ones(3)), torch.zeros(2), atol=1e-6)
    assert method.last_weights[1] > 0.99


def test_unknown_normalization_names_the_choices():
    with pytest.raises(ValueError, match=r"'l1'; valid choices: \['none', 'l2', 'loss', 'loss\+'\]"):
        MGDA(2, normalization="l1")


@pytest.mark.parametrize("method", [MGDA(3), UPGrad(3)], ids=["mgda", "upgrad"])
def test_the_weights_do_not_depend_on_the_gradients_scale(method):
    # quadprog called MGDA's equality constraint "inconsistent" for gradients of norm about 1e19
    gramian = JACOBIANS["random"][:3] @ JACOBIANS["random"][:3].T
    small = method.gramian_weights(gramian, torch.ones(3))
    torch.testing.assert_close(method.gramian_weights(1e38 * gramian, torch.ones(3)), small)
