"""What every Gramian weighting shares: the solve runs on one BLAS thread, the direction is ``w @ G``,
the Gramian is summed over blocks of columns, ``method.update_every`` reuses the weights."""

import pytest
import torch
from threadpoolctl import threadpool_info

from mtl.methods import METHODS, GramianWeighting
from mtl.methods.base import INNER_PRODUCT_BLOCK, row_inner_products
from tests.methods.conftest import random_jacobian


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


class RecordsBlasThreads(GramianWeighting):
    """Equal weights; remembers the BLAS thread counts seen while computing them."""

    def weights(self, gramian, losses):
        self.seen = blas_threads()
        return torch.full((len(gramian),), 1.0 / len(gramian), dtype=gramian.dtype)


def test_the_weights_are_solved_on_one_blas_thread_and_the_threads_come_back():
    before = blas_threads()
    method = RecordsBlasThreads(3)
    jacobian = torch.randn(3, 5)
    direction = method(jacobian, torch.ones(3))
    assert method.seen and all(threads == 1 for threads in method.seen)
    assert blas_threads() == before
    assert torch.allclose(direction, jacobian.mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("width", [5, INNER_PRODUCT_BLOCK, 3 * INNER_PRODUCT_BLOCK + 7])
def test_row_inner_products_in_blocks_equal_the_float64_product(width):
    # below one block, exactly one block, and blocks with a remainder of columns
    generator = torch.Generator().manual_seed(width)
    left, right = torch.randn(4, width, generator=generator), torch.randn(3, width, generator=generator)
    expected = left.double() @ right.double().T
    products = row_inner_products(left, right)
    assert products.shape == (4, 3) and products.dtype == torch.float32
    assert torch.allclose(products.double(), expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(row_inner_products(left.T.contiguous().T, right).double(), expected, rtol=1e-5, atol=1e-4)  # strided rows too


GRAMIAN_WEIGHTINGS = sorted(name for name, cls in METHODS.items() if issubclass(cls, GramianWeighting))
UNCLIPPED = {"nash_mtl": {"max_norm": 0}, "fairgrad": {"max_norm": 0}}
"""Options that make a method's step weights its solved weights (no per-step norm clip)."""
JACOBIANS = [random_jacobian(3, 6, seed=seed) for seed in range(7)]
LOSSES = torch.tensor([0.5, 1.0, 2.0])


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("name", GRAMIAN_WEIGHTINGS)
def test_update_every_solves_every_t_th_step_and_reuses_those_weights_in_between(name, every, make_method):
    periodic = make_method(name, 3, update_every=every, **UNCLIPPED.get(name, {}))
    plain = make_method(name, 3, **UNCLIPPED.get(name, {}))  # called on the solving steps only
    for step, jacobian in enumerate(JACOBIANS):
        direction = periodic(jacobian, LOSSES)
        if step % every == 0:
            plain(jacobian, LOSSES)
            solved = plain.last_weights
        assert torch.allclose(periodic.last_weights, solved)
        assert torch.allclose(direction, solved.float() @ jacobian, atol=1e-5)


@pytest.mark.parametrize("name", GRAMIAN_WEIGHTINGS)
def test_the_reused_weights_and_the_step_count_travel_in_the_state_dict(name, make_method):
    first = make_method(name, 3, update_every=3)
    first(JACOBIANS[0], LOSSES)
    second = make_method(name, 3, update_every=3)
    second.load_state_dict(first.state_dict())
    assert first.stateful and second.stateful
    assert all(torch.equal(first(jacobian, LOSSES), second(jacobian, LOSSES)) for jacobian in JACOBIANS[1:])


def test_a_period_below_one_is_refused():
    with pytest.raises(ValueError, match=r"method.update_every must be a positive integer \(1 solves every step\), got 0"):
        RecordsBlasThreads(3, update_every=0)
