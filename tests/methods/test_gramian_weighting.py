"""What every Gramian weighting shares: the solve runs on one BLAS thread, the direction is ``w @ G``,
the Gramian is summed over blocks of columns."""

import pytest
import torch
from threadpoolctl import threadpool_info

from mtl.methods import GramianWeighting
from mtl.methods.base import INNER_PRODUCT_BLOCK, row_inner_products


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
