"""What every Gramian weighting shares: the solve runs on one BLAS thread, the direction is ``w @ G``."""

import torch
from threadpoolctl import threadpool_info

from mtl.methods import GramianWeighting


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
