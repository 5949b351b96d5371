import math

import pytest
import torch

from mtl.methods.preference import COSMOS, PBI

ROOT_HALF = math.sqrt(0.5)


def test_cosmos_hand_computed_two_tasks(make_method):
    # r = (½, ½), L = (1, 0): rᵀL = ½, cos(r, L) = ½ / (|r| |L|) = √½, objective ½ - 2√½.
    # ∂cos/∂L = r / (|r||L|) - (rᵀL) L / (|r||L|³) = (√½, √½) - (√½, 0) = (0, √½), so w = r - 2 (0, √½)
    method, losses = make_method("cosmos", 2), torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert method.objective(losses).item() == pytest.approx(0.5 - 2 * ROOT_HALF)
    assert torch.allclose(method(losses), torch.tensor([0.5, 0.5 - 2 * ROOT_HALF], dtype=torch.float64))


def test_pbi_hand_computed_two_tasks(make_method):
    # u = (√½, √½), L = (1, 0): d1 = √½, perpendicular (½, -½), d2 = √½; objective |r| (d1 + 5 d2) = √½ · 6√½ = 3.
    # w = |r| (u + 5 perpendicular / d2) = (½, ½) + 5 (½, -½) = (3, -2)
    method, losses = make_method("pbi", 2), torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert method.objective(losses).item() == pytest.approx(3.0)
    assert torch.allclose(method(losses), torch.tensor([3.0, -2.0], dtype=torch.float64))


@pytest.mark.parametrize("name", ["cosmos", "pbi"])
@pytest.mark.parametrize("preference", [None, [1.0, 2.0, 5.0]])
def test_losses_on_the_preference_direction_get_the_preference_as_weights(name, preference, make_method):
    method = make_method(name, 3, **({} if preference is None else {"preference": preference}))
    r = torch.tensor(preference or [1.0, 1.0, 1.0], dtype=torch.float64)
    r = r / r.sum()
    assert torch.allclose(method(0.8 * r), r)  # no pull towards the direction, no distance from it


@pytest.mark.parametrize(("name", "option"), [("cosmos", "penalty"), ("pbi", "theta")])
def test_without_the_penalty_it_is_the_linear_scalarization_of_the_preference(name, option, make_method):
    method = make_method(name, 3, preference=[1.0, 2.0, 1.0], **{option: 0})
    losses = torch.tensor([0.3, 2.0, 1.1], dtype=torch.float64)
    assert torch.allclose(method(losses), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    assert method.objective(losses).item() == pytest.approx(0.25 * 0.3 + 0.5 * 2.0 + 0.25 * 1.1)


def test_pbi_measures_from_the_reference_point(make_method):
    # L = z + t r lies on the preference direction from z: weights r, objective |r| t |r| = t |r|²
    method = make_method("pbi", 2, reference=[0.5, 0.25])
    losses = torch.tensor([0.5 + 0.2 * 0.5, 0.25 + 0.2 * 0.5], dtype=torch.float64)
    assert torch.allclose(method(losses), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert method.objective(losses).item() == pytest.approx(0.2 * 0.5, abs=1e-5)  # the smoothing: 5e-6 |r|


@pytest.mark.parametrize("name", ["cosmos", "pbi"])
def test_the_weights_are_the_gradient_of_the_objective(name, make_method):
    method = make_method(name, 3, preference=[3.0, 1.0, 2.0])
    losses = torch.tensor([0.4, 1.5, 0.9], requires_grad=True)
    method.objective(losses).backward()
    assert torch.allclose(losses.grad, method(losses.detach()), atol=1e-6)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"method.preference has 2 entries but there are 3 tasks"):
        COSMOS(3, preference=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"method.preference must be positive numbers, one per task; got \[1.0, 0.0\]"):
        PBI(2, preference=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"method.penalty must be non-negative"):
        COSMOS(2, penalty=-1)
    with pytest.raises(ValueError, match=r"method.theta must be non-negative"):
        PBI(2, theta=-1)
    with pytest.raises(ValueError, match=r"method.reference has 1 entries but there are 2 tasks"):
        PBI(2, reference=[0.0])
