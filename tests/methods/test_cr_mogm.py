from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from mtl.methods import Method
from tests.conftest import compose_config
from tests.methods.conftest import random_jacobian

JACOBIANS = [random_jacobian(3, 6, seed=seed) for seed in range(6)]
LOSSES = torch.tensor([0.5, 1.0, 2.0])


def build(tmp_path: Path, *overrides: str, num_tasks: int = 3) -> Method:
    """A method from the real configs: ``method=cr_mogm`` with ``overrides`` (``method@method.inner=...``)."""
    return instantiate(compose_config(["method=cr_mogm", *overrides], tmp_path / "run").method, num_tasks=num_tasks)


@pytest.mark.parametrize("inner", ["mgda", "pcgrad", "cagrad", "nash_mtl", "gradvac"])
def test_beta_zero_is_the_inner_weighting_step_for_step(inner, tmp_path, make_method):
    wrapped, alone = build(tmp_path, f"method@method.inner={inner}", "method.beta=0"), make_method(inner, 3)
    for jacobian in JACOBIANS:
        assert torch.allclose(wrapped(jacobian, LOSSES), alone(jacobian, LOSSES), atol=1e-6)


def test_the_weights_are_the_moving_average_of_the_inner_weights(tmp_path, make_method):
    wrapped, inner = build(tmp_path, "method.beta=0.75"), make_method("mgda", 3)
    averaged = None
    for jacobian in JACOBIANS:
        direction = wrapped(jacobian, LOSSES)
        inner(jacobian, LOSSES)
        averaged = inner.last_weights if averaged is None else 0.75 * averaged + 0.25 * inner.last_weights
        assert torch.allclose(wrapped.last_weights, averaged)
        assert torch.allclose(direction, averaged.float() @ jacobian, atol=1e-6)


def test_beta_one_keeps_the_first_weights(tmp_path, make_method):
    wrapped = build(tmp_path, "method.beta=1")
    wrapped(JACOBIANS[0], LOSSES)
    first = wrapped.last_weights.clone()
    for jacobian in JACOBIANS[1:]:
        assert torch.allclose(wrapped(jacobian, LOSSES), first.float() @ jacobian, atol=1e-6)


def test_the_inner_weightings_options_and_state_travel_with_it(tmp_path):
    wrapped = build(tmp_path, "method@method.inner=cagrad", "method.inner.c=0.2")
    assert wrapped.inner.c == 0.2
    first, second = build(tmp_path, "method@method.inner=pcgrad"), build(tmp_path, "method@method.inner=pcgrad")
    assert first.stochastic
    for jacobian in JACOBIANS[:3]:
        first(jacobian, LOSSES)
    second.load_state_dict(first.state_dict())  # the average, the step count and PCGrad's generator
    assert all(torch.equal(first(jacobian, LOSSES), second(jacobian, LOSSES)) for jacobian in JACOBIANS[3:])


@pytest.mark.parametrize("inner", ["graddrop", "ew"])
def test_an_inner_method_that_is_not_a_gramian_weighting_is_refused_with_the_valid_ones(inner, tmp_path):
    with pytest.raises(InstantiationException, match=r"averages the weights of a Gramian weighting; method.inner is a .*'mgda'"):
        build(tmp_path, f"method@method.inner={inner}")


def test_beta_outside_the_unit_interval_is_refused(tmp_path):
    with pytest.raises(InstantiationException, match=r"method.beta=1.5 must be in \[0, 1\]"):
        build(tmp_path, "method.beta=1.5")


def test_an_inner_normalization_is_refused_for_cr_mogms_own(tmp_path):
    with pytest.raises(InstantiationException, match=r"method.inner.normalization='l2'.*set method.normalization='l2' instead"):
        build(tmp_path, "method.inner.normalization=l2")
