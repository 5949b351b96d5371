"""The two kinds of multi-task optimization method, and the registry of method names.

- ``LossWeighting``: task losses ``L (K,)`` in, weights ``w (K,)`` out; the step backpropagates
  the objective ``sum(w * L)`` once (a method with a regularizer, such as uncertainty weighting,
  adds it in ``objective``).
- ``GradientAggregator``: the Jacobian ``G (K, P)`` of the task losses with respect to the shared
  parameters in, one update direction ``d (P,)`` out. Convention: for ``K`` identical rows ``g``
  the direction is ``g`` (mean scale); a method that deviates says so in its docstring.
- ``GramianWeighting``: the common case of an aggregator whose direction is a combination of the
  rows, ``d = w @ G``, with weights computed from the Gramian ``G Gᵀ (K, K)`` alone.

Methods are pure: tensors in, tensors out. An aggregator refuses a Jacobian (or Gramian) with a
non-finite entry, or non-finite losses, before computing anything (``NonFiniteRows``), so no solver
fails on them and no state takes them in; what to do then is the training step's policy. Learnable weights are parameters, history is buffers,
and a stochastic method's random generator travels in its state dict, so a checkpoint carries a
method's whole state. Each class states what it needs (``requires``) and whether it is
``stochastic`` or ``stateful``, so the engine can reject an impossible combination at start-up.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

import torch
from threadpoolctl import ThreadpoolController
from torch import Tensor, nn

REQUIREMENTS = frozenset({"losses", "jacobian", "gramian", "losses_after_step", "last_shared_layer_gradient_norms"})
"""What a method may ask the engine for: the task losses, the Jacobian of the shared parameters,
only its Gramian, the task losses recomputed on the same batch after the optimizer step, or the
norms of the task gradients on the last shared layer (GradNorm)."""


class Method(nn.Module, ABC):
    """What every method declares: its inputs, and whether it draws random numbers or keeps state.

    A stochastic method draws only from ``self.generator``, seeded by ``seed`` (the run's seed),
    so every process of a run draws the same numbers and a resumed run continues the sequence.
    """

    requires: ClassVar[frozenset[str]]
    stochastic: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        unknown = self.requires - REQUIREMENTS
        if unknown:
            raise TypeError(f"{type(self).__name__}.requires names {sorted(unknown)}; known requirements: {sorted(REQUIREMENTS)}")
        self.num_tasks = num_tasks
        self.generator = torch.Generator().manual_seed(seed) if self.stochastic else None

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()} if self.generator is not None else {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


class LossWeighting(Method):
    """Task losses ``(K,)`` in, task weights ``(K,)`` out."""

    requires = frozenset({"losses"})

    @abstractmethod
    def forward(self, losses: Tensor) -> Tensor:
        """Weights ``(K,)`` for the detached task ``losses (K,)``; they may depend on the method's parameters."""

    def objective(self, losses: Tensor, gradient_norms: Tensor | None = None) -> Tensor:
        """The scalar the step backpropagates: ``weights @ losses`` (methods with a regularizer add
        it here). ``gradient_norms`` ``(K,)`` is given to methods that require
        ``last_shared_layer_gradient_norms``."""
        return self(losses.detach()) @ losses

    def update(self, losses_after_step: Tensor) -> None:
        """Called with the losses recomputed after the step, for methods that require ``losses_after_step``."""
        raise NotImplementedError(f"{type(self).__name__} does not use the losses after the step")


class NonFiniteRows(FloatingPointError):
    """An aggregator's input has non-finite ``rows`` (task indices, or task-group indices when the
    engine groups tasks): of its ``what`` (``gradient`` or ``loss``)."""

    def __init__(self, what: str, rows: Sequence[int]) -> None:
        super().__init__(f"the {what} of rows {list(rows)} is not finite")
        self.what, self.rows = what, list(rows)


def refuse_nonfinite(what: str, values: Tensor, row_dim: int = -1) -> None:
    """Raise ``NonFiniteRows`` naming the rows (indices along ``row_dim``: one per task) of
    ``values`` that hold a non-finite entry, in any sample of a double-sampling method's ``N``."""
    finite = torch.isfinite(values.detach())
    if bool(finite.all()):
        return
    rows = finite.movedim(row_dim, 0).reshape(values.shape[row_dim], -1).all(dim=1)
    raise NonFiniteRows(what, (~rows).nonzero().flatten().tolist())


NORMALIZATIONS = ("none", "l2", "loss", "loss+")
"""``method.normalization`` of every aggregator: each task gradient divided by 1, ``|g_k|``, ``L_k``
or ``L_k |g_k|`` before it aggregates (MGDA's ``normalization_type``; Sener & Koltun 2018)."""


def row_normalizers(normalization: str, squared_norms: Tensor, losses: Tensor) -> Tensor:
    """The divisors ``c_k`` of ``normalization`` for rows of ``squared_norms`` ``|g_k|²`` and ``losses``
    (any leading dimensions); one that is not positive (a zero row, a zero loss) is replaced by 1."""
    norms = squared_norms.clamp(min=0).sqrt()
    ones = torch.ones_like(norms)
    normalizers = {"none": ones, "l2": norms, "loss": losses.to(norms), "loss+": losses.to(norms) * norms}[normalization]
    return torch.where(normalizers > 0, normalizers, ones)


class GradientAggregator(Method):
    """Jacobian ``(K, P)`` and losses ``(K,)`` in, one direction ``(P,)`` out.

    ``last_weights`` holds the weights of the last call where the direction is a combination of
    the rows (``None`` otherwise), for diagnostics.

    Two facts the shared tests check, true unless a method's paper defines it otherwise (its
    docstring then says why): ``mean_scale``, for ``K`` identical rows ``g`` the direction is
    ``g``; ``permutation_equivariant``, reordering the tasks does not change the direction.

    ``independent_samples = N > 1`` asks for ``N`` independent stochastic Jacobians per step
    (double-sampling methods): the engine splits the batch into ``N`` disjoint parts, runs each
    through the model, and calls ``forward`` with ``jacobian (N, K, P)`` and ``losses (N, K)``.

    ``normalization`` (``method.normalization``, one of ``NORMALIZATIONS``; an option of every
    aggregator, which subclasses pass on in ``**options``) divides each row by ``c_k`` before the
    method sees it: the method then aggregates the normalized gradients. The default ``none``
    leaves the rows as they are.
    """

    requires = frozenset({"jacobian"})
    mean_scale: ClassVar[bool] = True
    permutation_equivariant: ClassVar[bool] = True
    independent_samples: ClassVar[int] = 1

    def __init__(self, num_tasks: int, seed: int = 0, normalization: str = "none") -> None:
        super().__init__(num_tasks, seed)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"method.normalization is '{normalization}'; valid choices: {list(NORMALIZATIONS)}")
        self.normalization = normalization
        self.last_weights: Tensor | None = None
        if "gramian" not in self.requires:  # a Gramian weighting checks and normalizes the Gramian it solves on
            self.register_forward_pre_hook(prepare_rows)

    @abstractmethod
    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        """The update direction ``(P,)`` for the rows of ``jacobian``, one per task."""


def prepare_rows(method: GradientAggregator, inputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor] | None:
    """A forward pre-hook: an aggregator's Jacobian ``(K, P)`` and losses ``(K,)`` must be finite; the
    rows are then divided by the method's ``row_normalizers``."""
    jacobian, losses = inputs
    refuse_nonfinite("loss", losses)
    refuse_nonfinite("gradient", jacobian, row_dim=-2)
    if method.normalization == "none":
        return None
    normalizers = row_normalizers(method.normalization, jacobian.float().square().sum(dim=-1), losses.to(jacobian.device))
    return jacobian / normalizers.unsqueeze(-1).to(jacobian.dtype), losses


class GramianWeighting(GradientAggregator):
    """``d = w @ G`` with ``w = weights(G Gᵀ, losses)`` (TorchJD's weighting/aggregator split).

    The Gramian is formed on the Jacobian's device in float32 (float16 and bfloat16 Jacobians are
    upcast first) and handed to ``weights`` on the CPU in float64, where the small ``(K, K)``
    solves (numpy, scipy, quadprog) are cheap and accurate. They run on one BLAS thread
    (``single_threaded_blas``). The direction has the Jacobian's device and dtype.

    ``update_every = T > 1`` (``method.update_every``, any Gramian weighting) solves for new weights
    every ``T`` steps and reuses the last solved ones in between (``WeightReuse``; PSMGD, "Periodic
    Stochastic Multi-Gradient Descent for Fast Multi-Objective Optimization", arXiv:2412.10961).
    A method whose weights depend on the step's Gramian after the solve (the norm clip of
    Nash-MTL and FairGrad) does that in ``scaled``, every step.
    """

    requires = frozenset({"gramian"})

    def __init__(self, num_tasks: int, seed: int = 0, update_every: int = 1, normalization: str = "none") -> None:
        super().__init__(num_tasks, seed, normalization)
        if update_every < 1:
            raise ValueError(f"method.update_every must be a positive integer (1 solves every step), got {update_every}")
        self.reuse = WeightReuse(num_tasks, update_every) if update_every > 1 else None
        if self.reuse is not None:
            self.stateful = True

    @abstractmethod
    def weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """Weights ``(K,)`` (float64) from the Gramian ``(K, K)`` and losses ``(K,)``, both float64."""

    def scaled(self, weights: Tensor, gramian: Tensor) -> Tensor:
        """The step's weights from solved (or reused) ``weights`` and the step's ``gramian``: the same
        weights unless a method rescales them each step."""
        return weights

    def step_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """This step's weights, float64 on the CPU: ``weights`` solved (or reused), then ``scaled``."""
        solved = self.weights(gramian, losses) if self.reuse is None else self.reuse(lambda: self.weights(gramian, losses))
        return self.scaled(solved, gramian)

    def forward(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        (direction,) = self.combine_blocks([jacobian], losses)
        return direction

    def combine_blocks(self, blocks: Sequence[Tensor], losses: Tensor) -> list[Tensor]:
        """``forward`` for a Jacobian given as blocks of its columns, ``[G[:, columns] (K, P_i)]``
        (one per parameter, as a batched backward pass returns them): the direction's blocks. The
        Gramian is the sum of the blocks' Gramians, and the Jacobian is never put together."""
        matrices = [block if block.dtype in (torch.float32, torch.float64) else block.float() for block in blocks]
        weights = self.gramian_weights(sum(row_inner_products(matrix, matrix) for matrix in matrices), losses)
        # one copy of the weights to each device and dtype, not one per block
        placed = {place: weights.to(*place) for place in {(matrix.device, matrix.dtype) for matrix in matrices}}
        return [(placed[matrix.device, matrix.dtype] @ matrix).to(block.dtype) for matrix, block in zip(matrices, blocks)]

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """``step_weights`` for a Gramian and losses of any device and dtype, solved in float64 on the
        CPU on one BLAS thread for the normalized rows, as weights of the rows given; kept as
        ``last_weights``. For an engine that forms the Gramian
        without the Jacobian (``mtl.engine.linear_heads``). Row ``k`` of the Jacobian is finite
        where ``G_kk = |g_k|²`` is, which is checked on the CPU copy (no wait on the device)."""
        gramian, losses = gramian.double().cpu(), losses.detach().double().cpu()
        gramian = (gramian + gramian.T) / 2  # products of float32 blocks can leave G_ij and G_ji a rounding apart
        refuse_nonfinite("loss", losses)
        refuse_nonfinite("gradient", gramian.diagonal())
        normalizers = row_normalizers(self.normalization, gramian.diagonal(), losses)
        with single_threaded_blas():
            weights = self.step_weights(gramian / torch.outer(normalizers, normalizers), losses) / normalizers
        self.last_weights = weights
        return weights


class WeightReuse(nn.Module):
    """Weights solved on every ``period``-th call and reused on the calls in between (its buffers
    ``solved`` and ``calls`` travel in the method's state dict)."""

    def __init__(self, num_tasks: int, period: int) -> None:
        super().__init__()
        self.period = period
        self.register_buffer("solved", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, solve: Callable[[], Tensor]) -> Tensor:
        if self.calls % self.period == 0:
            self.solved.copy_(solve())
        self.calls += 1
        return self.solved.cpu().clone()


INNER_PRODUCT_BLOCK = 4096
"""Columns per block in ``row_inner_products``."""


def row_inner_products(left: Tensor, right: Tensor) -> Tensor:
    """``left @ right.T`` for wide matrices ``(K, P)`` and ``(M, P)`` (rows of Jacobians): the
    products of blocks of ``INNER_PRODUCT_BLOCK`` columns in one batched product, then summed. On
    the CPU, one product of such wide matrices runs a slow BLAS kernel (``scripts/bench_gramian.py``
    measures both; the figures are in BENCHMARKS.md). The two-level sum is also more accurate in float32."""
    blocked = left.shape[1] - left.shape[1] % INNER_PRODUCT_BLOCK

    def blocks(matrix: Tensor) -> Tensor:  # (P // block, rows, block)
        return matrix[:, :blocked].reshape(len(matrix), -1, INNER_PRODUCT_BLOCK).transpose(0, 1)

    products = torch.bmm(blocks(left), blocks(right).transpose(1, 2)).sum(dim=0)
    return products + left[:, blocked:] @ right[:, blocked:].T


def single_threaded_blas() -> AbstractContextManager:
    """NumPy's and SciPy's BLAS on one thread while it is entered. Their OpenBLAS threads keep
    spinning after a call, on the cores that torch's own threads need next, which slowed CAGrad's and
    Nash-MTL's steps around their solves (``BENCHMARKS.md``), and a ``K x K`` problem gains nothing
    from a second thread. The BLAS
    libraries are those loaded at the first call (``import mtl.methods`` loads every method's)."""
    return blas_threads().limit(limits=1, user_api="blas")


@functools.cache
def blas_threads() -> ThreadpoolController:
    """The thread pools of the loaded BLAS libraries, found once (a search costs milliseconds)."""
    return ThreadpoolController()


METHODS: dict[str, type[Method]] = {}
"""Config name -> method class; configs still name classes by ``_target_``, so a user's own class needs no entry."""

M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a method to ``METHODS`` under ``name`` (its ``conf/method/<name>.yaml``)."""

    def add(cls: M) -> M:
        if name in METHODS:
            raise ValueError(f"method name '{name}' is already registered to {METHODS[name].__name__}")
        METHODS[name] = cls
        return cls

    return add


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``, or an error listing every known name."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}'; known methods: {sorted(METHODS)}") from None
