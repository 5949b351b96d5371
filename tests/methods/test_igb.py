import math

import pytest
import torch

from mtl.methods.igb import ImprovableGapBalancing


def measured(reference=(1.0, 2.0, 4.0)) -> ImprovableGapBalancing:
    """An IGB past a one-step warm-up whose measured mean losses are ``reference``."""
    method = ImprovableGapBalancing(num_tasks=len(reference), warmup_periods=1, period_steps=1)
    method.objective(torch.tensor([9.0] * len(reference)))  # period 0: warm-up, not measured
    method.objective(torch.tensor(reference))  # period 1: measured
    return method


def test_warm_up_is_the_mean_log_loss_and_measures_the_period_after_it(make_method):
    method = make_method("igb", 2, period_steps=2)
    for step_losses in ([1.0, 1.0], [3.0, 3.0], [2.0, 4.0], [4.0, 8.0]):
        assert torch.allclose(method(torch.tensor([0.5, 4.0])), torch.tensor([1.0, 0.125]))  # 1 / (K L_k)
        assert math.isclose(method.objective(torch.tensor(step_losses)).item(), sum(map(math.log, step_losses)) / 2, rel_tol=1e-6)
    assert torch.allclose(method.reference.mean(), torch.tensor([3.0, 6.0], dtype=torch.float64))


def test_hand_computed_weights_and_objective_after_the_warm_up():
    method = measured()
    losses = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    # gaps L / n = (2, 1, 0.5); w = 3 softmax(gaps); objective mean(w log 2) = log 2 (w sums to 3)
    softmax = torch.softmax(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64), dim=0)
    assert torch.allclose(method(losses), softmax / losses)
    assert math.isclose(method.objective(losses).item(), math.log(2.0), rel_tol=1e-9)


def test_the_task_with_the_most_left_to_improve_weighs_most_and_the_weights_are_detached():
    method = measured(reference=(1.0, 1.0))
    losses = torch.tensor([0.9, 0.2], requires_grad=True)  # task 0 improved least
    method.objective(losses).backward()
    softmax = torch.softmax(torch.tensor([0.9, 0.2]), dim=0)
    assert softmax[0] > softmax[1]
    assert torch.allclose(losses.grad, softmax / losses.detach())  # the weights' own gradient is not taken


def test_state_dict_round_trip_continues_identically():
    method = ImprovableGapBalancing(num_tasks=2, warmup_periods=1, period_steps=2)
    for losses in ([1.0, 2.0], [1.5, 2.5], [0.8, 1.9]):
        method.objective(torch.tensor(losses))
    restored = ImprovableGapBalancing(num_tasks=2, warmup_periods=1, period_steps=2)
    restored.load_state_dict(method.state_dict())
    for losses in ([0.6, 1.7], [0.5, 1.6]):
        assert torch.equal(method.objective(torch.tensor(losses)), restored.objective(torch.tensor(losses)))
        assert torch.equal(method(torch.tensor(losses)), restored(torch.tensor(losses)))


@pytest.mark.parametrize("arguments", [{"period_steps": 0}, {"warmup_periods": -1}])
def test_invalid_periods_are_rejected(arguments):
    with pytest.raises(ValueError, match="IGB needs warmup_periods >= 0 and period_steps >= 1"):
        ImprovableGapBalancing(num_tasks=2, **arguments)
