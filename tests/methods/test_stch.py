import math

import pytest
import torch

from mtl.methods.stch import SmoothTchebycheff


def objective_gradient(method, losses):
    losses = losses.clone().requires_grad_()
    method.objective(losses).backward()
    return losses.grad


def warmed_up(mu=1.0, reference=(1.0, 2.0, 4.0)):
    """An STCH past a one-step warm-up whose measured mean losses are ``reference``."""
    method = SmoothTchebycheff(num_tasks=len(reference), mu=mu, warmup_periods=1, period_steps=1)
    method.objective(torch.tensor([9.0, 9.0, 9.0]))  # period 0: warm-up, not measured
    method.objective(torch.tensor(reference))  # period 1: measured
    return method


def test_warm_up_uses_the_mean_log_loss_and_measures_the_last_period(make_method):
    method = make_method("stch", 2, warmup_periods=1, period_steps=2)
    losses = torch.tensor([0.5, 4.0], dtype=torch.float64)
    for step_losses in ([1.0, 1.0], [3.0, 3.0], [2.0, 4.0], [4.0, 8.0]):
        # warm-up weights 1 / (K L_k), objective (1/2)(log 0.5 + log 4)
        assert torch.allclose(method(losses), torch.tensor([1.0, 0.125], dtype=torch.float64))
        assert math.isclose(method.objective(torch.tensor(step_losses)).item(), sum(map(math.log, step_losses)) / 2, rel_tol=1e-6)
    # measured over the last period: n = mean([2, 4], [4, 8]) = [3, 6]; at L = n all normalized log losses are 0
    assert torch.allclose(method.reference.mean(), torch.tensor([3.0, 6.0], dtype=torch.float64))
    assert math.isclose(method.objective(torch.tensor([3.0, 6.0])).item(), math.log(2.0), rel_tol=1e-6)


def test_objective_and_its_gradient_in_closed_form():
    method = warmed_up(mu=0.5)
    losses = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    # log(L / n) = log [2, 1, 1/2] = [0.693, 0, -0.693]; / mu = [1.386, 0, -1.386]
    scores = torch.log(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)) / 0.5
    assert math.isclose(method.objective(losses).item(), 0.5 * torch.logsumexp(scores, 0).item(), rel_tol=1e-9)
    # d/dL_k = softmax(scores)_k / L_k
    expected = torch.softmax(scores, 0) / losses
    assert torch.allclose(objective_gradient(method, losses), expected)
    assert torch.allclose(method(losses), expected)


def test_small_mu_approaches_the_tchebycheff_maximum():
    losses = torch.tensor([3.0, 2.0, 4.5], dtype=torch.float64)
    # log(L / n) = log [3, 1, 1.125]: the max is log 3
    for mu, tolerance in [(1.0, 1.1), (0.1, 0.11), (0.001, 0.0011)]:
        value = warmed_up(mu=mu).objective(losses).item()
        # the smooth value lies in [max, max + mu log K]
        assert math.log(3.0) <= value <= math.log(3.0) + mu * math.log(3) + 1e-12
        assert value - math.log(3.0) <= tolerance
    weights = warmed_up(mu=0.001)(losses)
    assert torch.allclose(weights, torch.tensor([1 / 3.0, 0.0, 0.0], dtype=torch.float64))


def test_equal_normalized_losses_give_the_scale_invariant_weights():
    method = warmed_up()
    losses = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(method(losses), 1 / (3 * losses))


def test_zero_losses_give_finite_weights_and_objective():
    method = warmed_up(reference=(0.0, 1.0, 2.0))
    losses = torch.tensor([0.0, 1.0, 1e6])
    assert torch.isfinite(method(losses)).all() and torch.isfinite(method.objective(losses))


def test_state_dict_round_trip_continues_identically():
    method = SmoothTchebycheff(num_tasks=2, warmup_periods=1, period_steps=2)
    for losses in ([1.0, 2.0], [1.5, 2.5], [0.8, 1.9]):
        method.objective(torch.tensor(losses))
    restored = SmoothTchebycheff(num_tasks=2, warmup_periods=1, period_steps=2)
    restored.load_state_dict(method.state_dict())
    for losses in ([0.6, 1.7], [0.5, 1.6]):
        assert torch.equal(method.objective(torch.tensor(losses)), restored.objective(torch.tensor(losses)))
        assert torch.equal(method(torch.tensor(losses)), restored(torch.tensor(losses)))


@pytest.mark.parametrize("arguments", [{"mu": 0.0}, {"period_steps": 0}, {"warmup_periods": -1}])
def test_invalid_hyperparameters_are_rejected(arguments):
    with pytest.raises(ValueError, match="STCH"):
        SmoothTchebycheff(num_tasks=2, **arguments)
