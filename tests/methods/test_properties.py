"""Properties every registered method must have, checked once and parametrized over the registry.

Per-method tests (the paper's defining property, hand-computed cases) live beside this file.
"""

from __future__ import annotations

import pytest
import torch

import mtl.methods  # noqa: F401  (registers every method)
from mtl.methods import METHODS, GradientAggregator, GramianWeighting, LossWeighting
from tests.methods.conftest import random_jacobian

AGGREGATORS = sorted(name for name, cls in METHODS.items() if issubclass(cls, GradientAggregator))
WEIGHTINGS = sorted(name for name, cls in METHODS.items() if issubclass(cls, LossWeighting))
REQUIRED_OPTIONS = {"stl": {"task": 1}}
"""Options a method's config leaves mandatory (``???``); ``stl``'s task is an index here, as
``mtl.build`` passes it after resolving the task's name."""

MINIMUM_TASKS = {"krum": 3, "trimmed_mean": 3}
"""Methods that need more than one task with their default options; they refuse fewer when built
(their own tests check the message)."""

ROBUSTNESS_CASES = {
    "zero row": torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.5, -1.0, 1.0, 0.0]]),
    "duplicated rows": torch.tensor([[1.0, 2.0, 0.0, -1.0], [1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 1.0, 0.0]]),
    "more tasks than parameters": random_jacobian(5, 3),
    "norms 1e6 apart": torch.stack([random_jacobian(1, 8, seed=1)[0] * 1e3, random_jacobian(1, 8, seed=2)[0] * 1e-3]),
    "one task": random_jacobian(1, 6),
    "float16": random_jacobian(3, 16, dtype=torch.float16),
    "bfloat16": random_jacobian(3, 16, dtype=torch.bfloat16),
}


def losses_for(jacobian: torch.Tensor) -> torch.Tensor:
    return torch.linspace(0.5, 2.0, len(jacobian))


def aggregate(method: GradientAggregator, jacobian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """``method``'s direction, giving a double-sampling method the same Jacobian for every sample."""
    samples = method.independent_samples
    if samples == 1:
        return method(jacobian, losses)
    return method(jacobian.expand(samples, *jacobian.shape), losses.expand(samples, *losses.shape))


@pytest.mark.parametrize("name", AGGREGATORS)
@pytest.mark.parametrize("case", ROBUSTNESS_CASES)
def test_aggregators_return_a_finite_direction_on_hard_jacobians(name, case, make_method):
    jacobian = ROBUSTNESS_CASES[case]
    if len(jacobian) < MINIMUM_TASKS.get(name, 1):
        pytest.skip(f"{name} needs at least {MINIMUM_TASKS[name]} tasks with its default options")
    direction = aggregate(make_method(name, len(jacobian)), jacobian, losses_for(jacobian))
    assert direction.shape == jacobian.shape[1:] and direction.dtype == jacobian.dtype
    assert torch.isfinite(direction.float()).all()


@pytest.mark.parametrize("name", AGGREGATORS)
def test_identical_rows_give_that_row(name, make_method):
    if not METHODS[name].mean_scale:
        pytest.skip("its paper scales the direction otherwise (see its docstring)")
    row = random_jacobian(1, 7)[0]
    direction = aggregate(make_method(name, 3), row.repeat(3, 1), torch.ones(3))
    assert torch.allclose(direction, row, atol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_reordering_the_tasks_does_not_change_the_direction(name, make_method):
    if METHODS[name].stochastic or not METHODS[name].permutation_equivariant:
        pytest.skip("stochastic, or order-dependent by its paper's definition (see its docstring)")
    jacobian, losses = random_jacobian(4, 9), torch.tensor([0.3, 1.0, 2.0, 0.7])
    order = torch.tensor([2, 0, 3, 1])
    direct = aggregate(make_method(name, 4), jacobian, losses)
    permuted = aggregate(make_method(name, 4), jacobian[order], losses[order])
    assert torch.allclose(direct, permuted, atol=1e-5)


@pytest.mark.parametrize("name", sorted(name for name in AGGREGATORS if issubclass(METHODS[name], GramianWeighting)))
def test_a_gramian_weighting_of_column_blocks_gives_the_blocks_of_the_whole_direction(name, make_method):
    jacobian, losses = random_jacobian(4, 9), torch.tensor([0.3, 1.0, 2.0, 0.7])
    torch.manual_seed(0)
    whole = make_method(name, 4)(jacobian, losses)
    torch.manual_seed(0)
    blocks = make_method(name, 4).combine_blocks(list(jacobian.split([3, 1, 5], dim=1)), losses)
    assert [block.shape for block in blocks] == [(3,), (1,), (5,)]
    assert torch.allclose(torch.cat(blocks), whole, atol=1e-6)


@pytest.mark.parametrize("name", WEIGHTINGS)
@pytest.mark.parametrize("losses", [[0.5, 2.0, 1.0], [0.0, 1.0, 1e6], [1e-8, 1e-8, 1e-8]], ids=["plain", "zero and huge", "tiny"])
def test_loss_weightings_return_finite_weights_and_objective(name, losses, make_method):
    method = make_method(name, 3, **REQUIRED_OPTIONS.get(name, {}))
    losses = torch.tensor(losses, requires_grad=True)
    weights = method(losses.detach())
    assert weights.shape == (3,) and torch.isfinite(weights).all()
    norms = torch.tensor([1.0, 0.5, 2.0]) if "last_shared_layer_gradient_norms" in method.requires else None
    objective = method.objective(losses, norms)
    assert objective.shape == () and torch.isfinite(objective)


ROUND_TRIP = sorted(name for name, cls in METHODS.items() if cls.stochastic or (cls.stateful and issubclass(cls, GradientAggregator)))
"""Methods whose calls can be replayed from the state dict alone: the stochastic ones and the stateful
aggregators (stateful loss weightings need their own protocol of objective and update; their tests
check it)."""


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_methods_continue_identically_after_a_state_dict_round_trip(name, make_method):
    jacobians = [random_jacobian(3, 5, seed=seed) for seed in range(5)]
    losses = losses_for(jacobians[0])

    def call(method, jacobian):
        return aggregate(method, jacobian, losses) if isinstance(method, GradientAggregator) else method(losses)

    first = make_method(name, 3)
    for jacobian in jacobians[:2]:
        call(first, jacobian)
    second = make_method(name, 3)
    second.load_state_dict(first.state_dict())
    assert all(torch.equal(call(first, jacobian), call(second, jacobian)) for jacobian in jacobians[2:])


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("name", AGGREGATORS)
def test_a_normalization_is_the_method_on_the_divided_rows(name, normalization, make_method):
    jacobian, losses = random_jacobian(3, 7, seed=4), torch.tensor([0.5, 2.0, 1.5])
    norms = jacobian.norm(dim=1)
    divisors = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    normalized = aggregate(make_method(name, 3, normalization=f"'{normalization}'"), jacobian, losses)
    assert torch.allclose(normalized, aggregate(make_method(name, 3), jacobian / divisors[:, None], losses), atol=1e-5)


def test_an_unknown_normalization_lists_the_valid_ones(make_method):
    with pytest.raises(Exception, match=r"method.normalization is 'l1'; valid choices: \['none', 'l2', 'loss', 'loss\+'\]"):
        make_method("pcgrad", 2, normalization="l1")
