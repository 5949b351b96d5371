import math

import pytest
import torch

from mtl.methods.uw_so import SoftOptimalUncertaintyWeighting


def test_hand_computed_weights_favour_the_smallest_loss(make_method):
    # 1/L = (2, 1, 0.5) at T = 1: softmax gives e² : e : e^0.5
    weights = make_method("uw_so", 3)(torch.tensor([0.5, 1.0, 2.0]))
    expected = torch.tensor([math.e**2, math.e, math.e**0.5])
    assert torch.allclose(weights, expected / expected.sum())


def test_the_temperature_spreads_the_weights_towards_the_mean(make_method):
    losses = torch.tensor([0.5, 1.0, 2.0])
    hot, cold = make_method("uw_so", 3, temperature=1e6)(losses), make_method("uw_so", 3, temperature=1e-3)(losses)
    assert torch.allclose(hot, torch.full((3,), 1 / 3), atol=1e-6)
    assert torch.allclose(cold, torch.tensor([1.0, 0.0, 0.0]))


def test_the_objective_is_the_weighted_sum_and_its_gradient_uses_detached_weights(make_method):
    method = make_method("uw_so", 2, temperature=2.0)
    losses = torch.tensor([1.0, 4.0], requires_grad=True)
    method.objective(losses).backward()
    # weights softmax((0.5, 0.125)): the gradient is the weights themselves, not their derivative
    expected = torch.softmax(torch.tensor([0.5, 0.125]), dim=0)
    assert torch.allclose(losses.grad, expected)


def test_equal_losses_give_equal_weighting(make_method):
    assert torch.allclose(make_method("uw_so", 4)(torch.full((4,), 0.7)), torch.full((4,), 0.25))


def test_a_temperature_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="method.temperature must be positive, got 0"):
        SoftOptimalUncertaintyWeighting(2, temperature=0)
