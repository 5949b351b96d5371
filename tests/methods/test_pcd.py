import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtl.build import build_datamodule_and_module
from mtl.methods.pcd import PCD
from tests.conftest import TINY, compose_config
from tests.methods.conftest import random_jacobian


def unit_rows(jacobian: torch.Tensor) -> torch.Tensor:
    """The normalized gradients of a first step: the bias-corrected average is |g|², so s = 1/|g| (ε aside)."""
    jacobian = jacobian.double()
    return jacobian / jacobian.norm(dim=1, keepdim=True)


def test_hand_computed_two_tasks_in_conflict():
    # u1 = (1, 0), u2 = (-1, 1)/√2, u2·u1 = -√½ < τ: the constraint binds, d̃ = u1 + λ u2 with
    # u2·d̃ = -√½ + λ = τ, so λ = τ + √½; then d = |g1| d̃ / |d̃|
    jacobian = torch.tensor([[2.0, 0.0], [-3.0, 3.0]], dtype=torch.float64)
    direction = PCD(2, tau=0.1)(jacobian, torch.ones(2))
    u1, u2 = unit_rows(jacobian)
    closest = u1 + (0.1 + math.sqrt(0.5)) * u2
    assert torch.allclose(direction, 2.0 * closest / closest.norm(), atol=1e-7)


def test_without_conflict_beyond_tau_the_direction_is_the_primary_gradient():
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.0, 2.0]])
    assert torch.allclose(PCD(3)(jacobian, torch.ones(3)), jacobian[0], atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_the_direction_solves_the_papers_problem(seed):
    # min ½|d - u_p|² s.t. u_j·d >= τ, against scipy's SLSQP on d itself; p = 1 here
    jacobian = random_jacobian(4, 6, seed=seed, dtype=torch.float64)
    units = unit_rows(jacobian)
    secondary = units[[0, 2, 3]].numpy()
    constraints = {"type": "ineq", "fun": lambda d: secondary @ d - 0.3, "jac": lambda d: secondary}
    target = units[1].numpy()
    solution = minimize(lambda d: 0.5 * np.sum((d - target) ** 2), target, jac=lambda d: d - target, constraints=[constraints], method="SLSQP", options={"ftol": 1e-14})
    expected = torch.from_numpy(solution.x)
    if not solution.success:
        pytest.skip(f"SLSQP: {solution.message}")
    direction = PCD(4, primary=1, tau=0.3)(jacobian, torch.ones(4))
    assert torch.allclose(direction, jacobian[1].norm() * expected / expected.norm(), atol=1e-5)
    assert (units[[0, 2, 3]] @ direction >= 0.3 * direction.norm() / expected.norm() - 1e-6).all()


def test_constraints_that_cannot_hold_together_are_dropped():
    # two opposite secondary gradients: no d gives both a positive share
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 0.0]])
    assert torch.allclose(PCD(3)(jacobian, torch.ones(3)), jacobian[0])


def test_a_zero_primary_gradient_gives_no_step():
    jacobian = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert torch.equal(PCD(2)(jacobian, torch.ones(2)), torch.zeros(2))


def test_a_secondary_gradient_scaled_alike_every_step_changes_nothing():
    # the moving-average normalization makes τ a scale-free share (exactly with ε = 0)
    plain, scaled = PCD(3, eps=0.0), PCD(3, eps=0.0)
    for seed in range(4):
        jacobian = random_jacobian(3, 5, seed=seed, dtype=torch.float64)
        rescaled = jacobian * torch.tensor([[1.0], [1e3], [1e-3]], dtype=torch.float64)
        assert torch.allclose(plain(jacobian, torch.ones(3)), scaled(rescaled, torch.ones(3)), atol=1e-6)


def test_the_squared_norms_average_as_adam_s_second_moment():
    method = PCD(2, beta=0.5)
    method(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    method(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    # v = 0.5 (0.5 · 9) + 0.5 · 1 = 2.75 and 0.5 (0.5 · 1) + 0.5 · 1 = 0.75; bias correction 1 - 0.5² then
    assert torch.allclose(method.squared_norm_average, torch.tensor([2.75, 0.75], dtype=torch.float64))


def test_the_config_names_the_primary_task_and_an_unknown_name_lists_the_tasks(tmp_path):
    _, module = build_datamodule_and_module(compose_config([*TINY, "method=pcd", "method.primary=right"], tmp_path / "run"))
    assert module.method.primary == 1
    with pytest.raises(ValueError, match=r"method.primary='middle' is not a task of this data; its tasks are \['left', 'right'\]"):
        build_datamodule_and_module(compose_config([*TINY, "method=pcd", "method.primary=middle"], tmp_path / "run"))


@pytest.mark.parametrize(("options", "message"), [
    ({"primary": 2}, r"method.primary must be a task index in \[0, 2\), got 2"),
    ({"tau": 1.5}, r"method.tau=1.5 must be in \[0, 1\]"),
    ({"beta": 1.0}, r"method.beta=1.0 must be in \[0, 1\)"),
    ({"eps": -1.0}, r"method.eps must be non-negative"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PCD(2, **options)
