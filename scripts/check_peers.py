"""Agreement of ``mtl``'s methods with the peer libraries' own implementations, on the same inputs.

For every method that ``mtl`` and a peer (``bench_peers.py``: TorchJD 0.18, LibMTL 1.1.5) both
implement, both run on the same seeded inputs, each method built from its Hydra config as
training builds it (``instantiate(cfg.method, num_tasks=K)``). Per method and peer the table gives
the cosine between the two outputs (min and median over the compared cases), the median ratio of
their norms ``|mtl| / |peer|``, the ratio the libraries' documented conventions predict (``mtl``
takes the mean scale where a peer sums, divides CAGrad by ``1 + c²``, ...) and the largest relative
deviation of a case's ratio from it. Cosine 1 with no deviation is agreement; the note says what
is known to differ.

- Gradient aggregators: ``method(jacobian, losses)`` against the peer's direction for the same
  Jacobian ``(K, P)``. Eight seeded cases: K = 2, 3, 5 and P = 20 to 50; random rows, a row that
  conflicts with another (cosine about -0.9), rows whose norms are 1 to 100 apart; float64 and
  float32. A stateful method (Nash-MTL, CR-MOGM, ExcessMTL, PCD, GradVac, MoDo, SDMGrad) runs a
  sequence of 5 Jacobians per case (the case's rows, then the rows plus noise), each step compared;
  the double-sampling methods (MoDo, SDMGrad) get three such Jacobians per step, and TorchJD's
  weighting gets ``J_1 J_2ᵀ`` and its weights combine ``J_3`` (its documented usage).
- LibMTL's weightings compute the task gradients themselves and write the direction into
  ``.grad``: here their ``_compute_grad``/``_get_grads`` return the case's Jacobian and
  ``_reset_grad`` keeps the direction, with the weighting's keyword arguments set to ``mtl``'s
  defaults. LibMTL stages the gradients in float32 (``torch.zeros``' default dtype; its MGDA fails
  on float64 ones), so in the LibMTL comparisons both libraries get the float32 Jacobian.
- Loss weightings: ``method(losses)``, the weights, against the gradient of the peer's scalarized
  loss with respect to the losses (its effective weights). Five seeded loss vectors (K = 2, 3, 5;
  one set 1 to 100 apart; float64 and float32); the stateful ones (DWA, STCH, FAMO) see a sequence
  of decreasing losses, compared after their warm-up. The ``obj`` column is the largest relative
  distance between ``mtl``'s weights and the gradient of its own ``objective``.

The ``self`` column is the smallest cosine between ``mtl``'s output and its output on the same
inputs perturbed by one rounding error (each entry times ``1 + eps z``): where it is below 1 the
method itself amplifies rounding (a tie, a chaotic iteration), and a peer cannot agree better.

Methods whose output depends on random draws (GradDrop, RLW; PCGrad and GradVac beyond two tasks,
where the order of the other tasks is random) are listed as not compared, as are the peers'
methods that cannot run here, with the reason. The JSON (``--out``) holds every compared case.
About 15 s on a 2-core CPU:

    PYTHONPATH=.:scripts /tmp/peers/bin/python scripts/check_peers.py --out outputs/check_peers.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

import bench_peers
from mtl.methods import LossWeighting, Method
from mtl.task_chunks import first_line
from mtl.train import CONFIG_DIR

SEQUENCE_STEPS = 5
"""Jacobians per case for a stateful aggregator."""

JACOBIAN_CASES = (
    ("random", 2, 20, torch.float64),
    ("random", 3, 30, torch.float64),
    ("random", 5, 50, torch.float64),
    ("random", 3, 30, torch.float32),
    ("conflicting", 2, 24, torch.float64),
    ("conflicting", 3, 36, torch.float64),
    ("norms 1-100", 3, 40, torch.float64),
    ("norms 1-100", 5, 50, torch.float32),
)
"""(kind, tasks, parameters, dtype) of the aggregator cases."""

LOSS_CASES = (("random", 2, torch.float64), ("random", 3, torch.float64), ("random", 5, torch.float64), ("scales 1-100", 3, torch.float64), ("scales 1-100", 5, torch.float32))
"""(kind, tasks, dtype) of the loss-weighting cases."""

DWA_PERIOD = 4
"""Steps per DWA period here (``method.period_steps``; the peers' epochs)."""
DWA_PERIODS = 5
"""Periods of the DWA sequences: the two without ratios, then three compared."""
STCH_WARMUP, STCH_PERIOD = 4, 25
"""STCH's warm-up periods and steps per period (``mtl``'s defaults, set explicitly so the peer side uses the same)."""
FAMO_STEPS = 8
"""Steps (each with its losses after the step) of the FAMO sequences."""


@dataclass
class Inputs:
    """One step's inputs: losses ``(K,)`` (``(3, K)`` for double sampling), the Jacobian (``(K, P)``,
    ``(3, K, P)``, or None for a loss weighting), FAMO's losses after the step, a preference."""

    losses: Tensor
    jacobian: Tensor | None = None
    after: Tensor | None = None
    preference: Tensor | None = None


@dataclass
class Case:
    """A named sequence of steps, compared from step ``compared_from`` on (earlier ones warm up)."""

    name: str
    steps: list[Inputs]
    compared_from: int = 0

    @property
    def num_tasks(self) -> int:
        return self.steps[0].losses.shape[-1]


Peer = Callable[[Inputs], Tensor]
"""One step of a peer: its direction, or its effective loss weights."""


@dataclass
class Comparison:
    """``mtl``'s ``method`` (with config ``overrides``) against ``implementation`` of ``peer``.

    ``make_peer`` builds the peer's step for a case and ``cases`` gives the cases (both None: not
    compared, ``note`` says why); ``ratio`` is the documented ``|mtl| / |peer|`` for a step's inputs
    and the peer's output, ``ratio_label`` its formula."""

    method: str
    peer: str
    implementation: str
    make_peer: Callable[[Case], Peer] | None
    cases: Callable[[], list[Case]] | None
    note: str = ""
    overrides: tuple[str, ...] = ()
    ratio: Callable[[Inputs, Tensor], float] = lambda inputs, output: 1.0
    ratio_label: str = "1"


# ---------------------------------------------------------------- inputs


def base_jacobian(kind: str, num_tasks: int, num_parameters: int, generator: torch.Generator) -> Tensor:
    """Gaussian rows; ``conflicting``: row 1 is ``-0.8 g_0`` plus noise; ``norms``: row ``k`` scaled to 1..100."""
    rows = torch.randn(num_tasks, num_parameters, generator=generator, dtype=torch.float64)
    if kind == "conflicting":
        rows[1] = -0.8 * rows[0] + 0.4 * rows[1]
    elif kind.startswith("norms"):
        rows *= torch.logspace(0, 2, num_tasks, dtype=torch.float64)[:, None]
    return rows


def jacobian_case(index: int, steps: int, samples: int, dtype: torch.dtype | None) -> Case:
    """``JACOBIAN_CASES[index]`` with ``steps`` steps (the base rows, then the rows plus noise of 0.3
    times each row's scale; ``samples > 1``: that many noisy Jacobians per step), in its own dtype or ``dtype``."""
    kind, num_tasks, num_parameters, case_dtype = JACOBIAN_CASES[index]
    generator = torch.Generator().manual_seed(index)
    base = base_jacobian(kind, num_tasks, num_parameters, generator)
    scale = base.norm(dim=1, keepdim=True) / num_parameters**0.5

    def noisy() -> Tensor:
        return base + 0.3 * scale * torch.randn(base.shape, generator=generator, dtype=torch.float64)

    target = dtype or case_dtype
    inputs = []
    for step in range(steps):
        jacobian = torch.stack([noisy() for _ in range(samples)]) if samples > 1 else base if step == 0 else noisy()
        losses = 0.5 + 1.5 * torch.rand(jacobian.shape[:-1], generator=generator, dtype=torch.float64)
        inputs.append(Inputs(losses.to(target), jacobian.to(target)))
    return Case(f"{kind}, K={num_tasks}, P={num_parameters}, {str(target).removeprefix('torch.')}", inputs)


def jacobian_cases(steps: int = 1, samples: int = 1, tasks: Callable[[int], bool] = lambda k: True, dtype: torch.dtype | None = None) -> list[Case]:
    """The ``JACOBIAN_CASES`` with ``tasks(K)`` true (``jacobian_case``)."""
    return [jacobian_case(index, steps, samples, dtype) for index, (_, num_tasks, _, _) in enumerate(JACOBIAN_CASES) if tasks(num_tasks)]


def loss_case(index: int, steps: int, warmup: int, after: bool, preference: bool) -> Case:
    """``LOSS_CASES[index]``: ``warmup + steps`` losses decreasing at a per-task rate with 5% noise;
    ``after``: FAMO's losses after each step; ``preference``: equal (first case) or random
    preferences summing to one."""
    kind, num_tasks, dtype = LOSS_CASES[index]
    generator = torch.Generator().manual_seed(100 + index)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(num_tasks, generator=generator, dtype=torch.float64)

    start = uniform(0.5, 2.0) * (torch.logspace(0, 2, num_tasks, dtype=torch.float64) if kind.startswith("scales") else 1.0)
    rates = uniform(0.02, 0.12)
    weights = (torch.ones(num_tasks, dtype=torch.float64) if index == 0 else uniform(0.2, 1.0)) if preference else None
    inputs = []
    for step in range(warmup + steps):
        losses = start * torch.exp(-rates * step) * (1 + 0.05 * torch.randn(num_tasks, generator=generator, dtype=torch.float64))
        later = losses * torch.exp(-rates * uniform(0.5, 1.5)) if after else None
        inputs.append(
            Inputs(
                losses.to(dtype),
                after=None if later is None else later.to(dtype),
                preference=None if weights is None else (weights / weights.sum()).to(dtype),
            )
        )
    return Case(f"{kind}, K={num_tasks}, {str(dtype).removeprefix('torch.')}", inputs, compared_from=warmup)


def loss_cases(steps: int = 1, warmup: int = 0, after: bool = False, preference: bool = False) -> list[Case]:
    """Every one of the ``LOSS_CASES`` (``loss_case``)."""
    return [loss_case(index, steps, warmup, after, preference) for index in range(len(LOSS_CASES))]


# ---------------------------------------------------------------- mtl


@functools.cache
def method_config(name: str, overrides: tuple[str, ...]) -> DictConfig:
    """``cfg.method`` of the training config with ``method=name`` and ``overrides``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"method={name}", *overrides]).method


def build_method(comparison: Comparison, case: Case) -> Method:
    """``mtl``'s method as training builds it, with the case's preference as ``method.preference``."""
    preference = case.steps[0].preference
    overrides = comparison.overrides + ((f"method.preference=[{','.join(repr(float(value)) for value in preference)}]",) if preference is not None else ())
    return instantiate(method_config(comparison.method, overrides), num_tasks=case.num_tasks)


def mtl_output(method: Method, inputs: Inputs) -> tuple[Tensor, Tensor | None]:
    """An aggregator's direction; a loss weighting's weights and the gradient of its objective with
    respect to the losses (then ``update`` with the losses after the step, if given)."""
    if not isinstance(method, LossWeighting):
        return method(inputs.jacobian, inputs.losses), None
    weights = method(inputs.losses).detach()
    losses = inputs.losses.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(method.objective(losses), losses)
    if inputs.after is not None:
        method.update(inputs.after)
    return weights, gradient


# ---------------------------------------------------------------- peers


def effective_weights(scalarize: Callable[[Tensor], Tensor], losses: Tensor) -> Tensor:
    """The gradient of ``scalarize(losses)`` with respect to the losses."""
    leaf = losses.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(scalarize(leaf), leaf)
    return gradient


def torchjd(module: str) -> object:
    """``torchjd.<module>``, imported when a comparison first needs it."""
    return importlib.import_module(f"torchjd.{module}")


def torchjd_aggregator(build: Callable[[object, int], Callable[[Tensor], Tensor]]) -> Callable[[Case], Peer]:
    """A TorchJD aggregator ``build(torchjd.aggregation, K)`` applied to each step's Jacobian."""

    def make(case: Case) -> Peer:
        aggregator = build(torchjd("aggregation"), case.num_tasks)
        return lambda inputs: aggregator(inputs.jacobian)

    return make


def torchjd_double_sampling(build: Callable[[object], Callable[[Tensor], Tensor]]) -> Callable[[Case], Peer]:
    """A TorchJD double-sampling weighting on ``J_1 J_2ᵀ``, its weights combining ``J_3``."""

    def make(case: Case) -> Peer:
        weighting = build(torchjd("aggregation"))

        def step(inputs: Inputs) -> Tensor:
            first, second, third = inputs.jacobian
            return weighting(first @ second.T) @ third

        return step

    return make


def torchjd_scalarizer(build: Callable[[object, Case], Callable[[Tensor], Tensor]]) -> Callable[[Case], Peer]:
    """The effective weights of a TorchJD scalarizer ``build(torchjd.scalarization, case)``, ``update``d
    with the losses after the step when a step has them (FAMO)."""

    def make(case: Case) -> Peer:
        scalarizer = build(torchjd("scalarization"), case)

        def step(inputs: Inputs) -> Tensor:
            weights = effective_weights(scalarizer, inputs.losses)
            if inputs.after is not None:
                scalarizer.update(inputs.after)
            return weights

        return step

    return make


def torchjd_dwa(case: Case) -> Peer:
    """TorchJD's DWA, its ``step()`` (an epoch's end) after every ``DWA_PERIOD`` calls."""
    dwa = torchjd("scalarization").DWA(temperature=2.0)
    calls = itertools.count(1)

    def step(inputs: Inputs) -> Tensor:
        weights = effective_weights(dwa, inputs.losses)
        if next(calls) % DWA_PERIOD == 0:
            dwa.step()
        return weights

    return step


def torchjd_stch(case: Case) -> Peer:
    """TorchJD's STCH on the log losses with reference ``log n``, ``n`` the mean losses of the period
    that follows ``STCH_WARMUP`` periods (as ``mtl`` and the official code measure it), weights 1."""
    start = STCH_WARMUP * STCH_PERIOD
    measured = torch.stack([inputs.losses for inputs in case.steps[start : start + STCH_PERIOD]]).mean(dim=0)
    stch = torchjd("scalarization").STCH(mu=1.0, weights=torch.ones_like(measured), reference=measured.log())
    return lambda inputs: effective_weights(lambda losses: stch(losses.log()), inputs.losses)


def libmtl_weighting(name: str, num_tasks: int) -> torch.nn.Module:
    """LibMTL's weighting ``name`` given a Jacobian (``.jacobian``) instead of computing the task
    gradients; ``.direction`` keeps what it would write into the shared parameters' ``.grad``."""
    weighting_class = getattr(bench_peers.import_libmtl()[0], name)

    class GivenJacobian(weighting_class):
        def __init__(self) -> None:
            super().__init__()
            self.task_num, self.device, self.rep_grad = num_tasks, torch.device("cpu"), False
            self.epoch, self.train_loss_buffer = 0, None
            self.jacobian = self.direction = None
            self.init_param()

        def _compute_grad_dim(self) -> None:
            self.grad_dim = self.jacobian.shape[1]

        def _compute_grad(self, losses: Tensor, mode: str, rep_grad: bool = False) -> Tensor:
            return self.jacobian.clone()

        def _get_grads(self, losses: Tensor, mode: str = "backward") -> Tensor:
            return self.jacobian.clone()

        def _reset_grad(self, new_grads: Tensor) -> None:
            self.direction = new_grads

    return GivenJacobian()


def libmtl_aggregator(name: str, **arguments: object) -> Callable[[Case], Peer]:
    """LibMTL's ``backward(losses, **arguments)`` on each step's Jacobian; the direction it writes."""

    def make(case: Case) -> Peer:
        weighting = libmtl_weighting(name, case.num_tasks)

        def step(inputs: Inputs) -> Tensor:
            weighting.jacobian = inputs.jacobian
            weighting.backward(inputs.losses.clone().requires_grad_(True), **arguments)
            return weighting.direction

        return step

    return make


def libmtl_weights(weighting: torch.nn.Module, losses: Tensor, **arguments: object) -> Tensor:
    """The gradient LibMTL's ``backward(losses, **arguments)`` (its backward of the weighted losses) leaves on the losses."""
    leaf = losses.clone().requires_grad_(True)
    weighting.backward(leaf, **arguments)
    return leaf.grad


def libmtl_loss_weighting(name: str, **arguments: object) -> Callable[[Case], Peer]:
    """LibMTL's loss weighting ``name``: its effective weights at each step."""

    def make(case: Case) -> Peer:
        weighting = libmtl_weighting(name, case.num_tasks)
        return lambda inputs: libmtl_weights(weighting, inputs.losses, **arguments)

    return make


def libmtl_dwa(case: Case) -> Peer:
    """LibMTL's DWA with ``epoch`` the current period and ``train_loss_buffer`` the periods' mean losses, as its trainer records them."""
    weighting = libmtl_weighting("DWA", case.num_tasks)
    weighting.train_loss_buffer = torch.zeros(case.num_tasks, len(case.steps) // DWA_PERIOD + 1, dtype=torch.float64).numpy()
    period: list[Tensor] = []
    calls = itertools.count()

    def step(inputs: Inputs) -> Tensor:
        weighting.epoch = next(calls) // DWA_PERIOD
        weights = libmtl_weights(weighting, inputs.losses, T=2.0)
        period.append(inputs.losses.double())
        if len(period) == DWA_PERIOD:
            weighting.train_loss_buffer[:, weighting.epoch] = torch.stack(period).mean(dim=0).numpy()
            period.clear()
        return weights

    return step


# ---------------------------------------------------------------- comparisons


def per_task(inputs: Inputs, output: Tensor) -> float:
    """``1/K``: ``mtl`` takes the mean where the peer sums."""
    return 1.0 / inputs.losses.shape[-1]


def twice_per_task(inputs: Inputs, output: Tensor) -> float:
    """``2/K``: the peer sums halved terms (UW's ``½e^-s L``), ``mtl`` takes the mean of whole ones."""
    return 2.0 / inputs.losses.shape[-1]


def clipped_to_one(inputs: Inputs, output: Tensor) -> float:
    """``min(1, 1/|d_peer|)``: ``mtl`` clips the peer's unclipped direction to norm 1."""
    return min(1.0, 1.0 / output.double().norm().item())


def preference_norm(inputs: Inputs, output: Tensor) -> float:
    """``|r|``: ``mtl`` multiplies PBI by the norm of the preference (which sums to 1)."""
    return inputs.preference.double().norm().item()


def two_tasks(num_tasks: int) -> bool:
    """Cases where a random order of the other tasks has no effect (PCGrad, GradVac)."""
    return num_tasks == 2


def three_or_more(num_tasks: int) -> bool:
    """Cases that Krum (byzantine 0) and the trimmed mean (trim 1) accept."""
    return num_tasks >= 3


def sequences(**options: object) -> Callable[[], list[Case]]:
    """Jacobian cases of ``SEQUENCE_STEPS`` steps, for a stateful aggregator."""
    return functools.partial(jacobian_cases, steps=SEQUENCE_STEPS, **options)


def single(**options: object) -> Callable[[], list[Case]]:
    """Jacobian cases of one step."""
    return functools.partial(jacobian_cases, **options)


def libmtl_single(**options: object) -> Callable[[], list[Case]]:
    """Jacobian cases of one step in float32, as LibMTL stages the gradients."""
    return functools.partial(jacobian_cases, dtype=torch.float32, **options)


def libmtl_sequences(**options: object) -> Callable[[], list[Case]]:
    """Jacobian cases of ``SEQUENCE_STEPS`` steps in float32, as LibMTL stages the gradients."""
    return functools.partial(jacobian_cases, steps=SEQUENCE_STEPS, dtype=torch.float32, **options)


def not_compared(method: str, peer: str, implementation: str, reason: str) -> Comparison:
    """A row for a method both libraries have but that is not compared, for ``reason``."""
    return Comparison(method, peer, implementation, None, None, reason)


TORCHJD_AGGREGATORS = [
    Comparison("upgrad", "torchjd", "UPGrad()", torchjd_aggregator(lambda a, k: a.UPGrad()), single(), "TorchJD's projector adds 1e-4 I to the trace-normalized Gramian"),
    Comparison(
        "upgrad",
        "torchjd",
        "UPGrad(projector=QuadprogProjector(norm_eps=0, reg_eps=1e-13))",
        torchjd_aggregator(lambda a, k: a.UPGrad(projector=torchjd("linalg").QuadprogProjector(norm_eps=0.0, reg_eps=1e-13))),
        single(),
        "TorchJD's ridge made negligible",
    ),
    Comparison("dualproj", "torchjd", "DualProj()", torchjd_aggregator(lambda a, k: a.DualProj()), single(), "TorchJD's projector adds 1e-4 I to the trace-normalized Gramian"),
    Comparison("mgda", "torchjd", "MGDA()", torchjd_aggregator(lambda a, k: a.MGDA()), single(), "TorchJD: Frank-Wolfe, epsilon 1e-3, <= 100 iterations; mtl: exact QP"),
    Comparison(
        "mgda",
        "torchjd",
        "MGDA(epsilon=1e-12, max_iters=20000)",
        torchjd_aggregator(lambda a, k: a.MGDA(epsilon=1e-12, max_iters=20000)),
        single(),
        "Frank-Wolfe run close to convergence",
    ),
    Comparison(
        "pcgrad",
        "torchjd",
        "PCGrad()",
        torchjd_aggregator(lambda a, k: a.PCGrad()),
        single(tasks=two_tasks),
        "K = 2 only (random order beyond); TorchJD sums",
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison(
        "cagrad",
        "torchjd",
        "CAGrad(c=0.4)",
        torchjd_aggregator(lambda a, k: a.CAGrad(c=0.4)),
        single(),
        "TorchJD does not rescale (mtl: / (1 + c²)); cvxpy vs SLSQP",
        ratio=lambda inputs, output: 1 / 1.16,
        ratio_label="1/1.16",
    ),
    Comparison(
        "nash_mtl",
        "torchjd",
        "NashMTL(K, max_norm=1, update_weights_every=1, optim_niter=20)",
        torchjd_aggregator(lambda a, k: a.NashMTL(n_tasks=k, max_norm=1.0, update_weights_every=1, optim_niter=20)),
        sequences(),
        "TorchJD: official CCP (cvxpy/ECOS, stops at 1e-3); mtl: Newton to rounding; both clip |d| to 1",
    ),
    Comparison("imtl_g", "torchjd", "IMTLG()", torchjd_aggregator(lambda a, k: a.IMTLG()), single()),
    Comparison("aligned_mtl", "torchjd", "AlignedMTL()", torchjd_aggregator(lambda a, k: a.AlignedMTL()), single()),
    Comparison(
        "config_mtl", "torchjd", "ConFIG()", torchjd_aggregator(lambda a, k: a.ConFIG()), single(), "TorchJD sums the projections (paper)", ratio=per_task, ratio_label="1/K"
    ),
    Comparison(
        "fairgrad",
        "torchjd",
        "FairGrad(alpha=2)",
        torchjd_aggregator(lambda a, k: a.FairGrad(alpha=2.0)),
        single(),
        "mtl clips |d| to max_norm = 1 (official code), TorchJD does not",
        ratio=clipped_to_one,
        ratio_label="min(1, 1/|d_peer|)",
    ),
    Comparison(
        "fairgrad",
        "torchjd",
        "FairGrad(alpha=2)",
        torchjd_aggregator(lambda a, k: a.FairGrad(alpha=2.0)),
        single(),
        "mtl's clip off (method.max_norm=0)",
        overrides=("method.max_norm=0",),
    ),
    Comparison(
        "krum",
        "torchjd",
        "Krum(n_byzantine=0)",
        torchjd_aggregator(lambda a, k: a.Krum(n_byzantine=0)),
        single(tasks=three_or_more),
        "K >= 3; TorchJD scores by distances, mtl (paper) by squared ones (one neighbour at K = 3: the same ranking)",
    ),
    Comparison("trimmed_mean", "torchjd", "TrimmedMean(trim_number=1)", torchjd_aggregator(lambda a, k: a.TrimmedMean(trim_number=1)), single(tasks=three_or_more), "K >= 3"),
    Comparison(
        "cr_mogm",
        "torchjd",
        "GramianWeightedAggregator(CRMOGMWeighting(UPGradWeighting(), alpha=0.9))",
        torchjd_aggregator(lambda a, k: a.GramianWeightedAggregator(a.CRMOGMWeighting(a.UPGradWeighting(), alpha=0.9))),
        sequences(),
        "inner UPGrad",
        overrides=("method@method.inner=upgrad", "method.beta=0.9"),
    ),
    Comparison(
        "cr_mogm",
        "torchjd",
        "GramianWeightedAggregator(CRMOGMWeighting(MGDAWeighting(), alpha=0.9))",
        torchjd_aggregator(lambda a, k: a.GramianWeightedAggregator(a.CRMOGMWeighting(a.MGDAWeighting(), alpha=0.9))),
        sequences(),
        "inner MGDA (TorchJD's Frank-Wolfe tolerance)",
        overrides=("method@method.inner=mgda", "method.beta=0.9"),
    ),
    Comparison(
        "excess_mtl",
        "torchjd",
        "ExcessMTL(robust_step_size=0.01)",
        torchjd_aggregator(lambda a, k: a.ExcessMTL(robust_step_size=0.01)),
        sequences(),
        "TorchJD updates at step 1 with raw risks; mtl and the official code do not",
    ),
    Comparison("pcd", "torchjd", "PCD(tau=0.02, beta=0.999, eps=1e-8)", torchjd_aggregator(lambda a, k: a.PCD(tau=0.02, beta=0.999, eps=1e-8)), sequences()),
    Comparison(
        "gradvac",
        "torchjd",
        "GradVac(beta=0.01)",
        torchjd_aggregator(lambda a, k: a.GradVac(beta=0.01)),
        sequences(tasks=two_tasks),
        "K = 2 only (random order beyond); TorchJD sums",
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison(
        "modo",
        "torchjd",
        "MoDoWeighting(gamma=0.001, rho=0.1)",
        torchjd_double_sampling(lambda a: a.MoDoWeighting(gamma=0.001, rho=0.1)),
        sequences(samples=3),
        "weights from J1 J2ᵀ, direction w @ J3",
    ),
    Comparison(
        "sdmgrad",
        "torchjd",
        "SDMGradWeighting(lr=5, momentum=0.5, n_iter=20, lambda_=0.3)",
        torchjd_double_sampling(lambda a: a.SDMGradWeighting(lr=5.0, momentum=0.5, n_iter=20, lambda_=0.3)),
        sequences(samples=3),
        "weights from J1 J2ᵀ, direction w @ J3; lr = 5 iterations amplify rounding (self)",
    ),
    not_compared("graddrop", "torchjd", "GradDrop()", "random: per-coordinate uniform draws from each library's own generator"),
]

TORCHJD_SCALARIZERS = [
    Comparison("ew", "torchjd", "Mean()", torchjd_scalarizer(lambda s, case: s.Mean()), loss_cases),
    Comparison("gls", "torchjd", "GeometricMean()", torchjd_scalarizer(lambda s, case: s.GeometricMean()), loss_cases),
    Comparison(
        "stch",
        "torchjd",
        "STCH(mu=1, weights=1, reference=log n) of log L",
        torchjd_stch,
        functools.partial(loss_cases, steps=SEQUENCE_STEPS, warmup=(STCH_WARMUP + 1) * STCH_PERIOD),
        "after mtl's warm-up; the official form (TorchJD's default weights are 1/K)",
        overrides=(f"method.warmup_periods={STCH_WARMUP}", f"method.period_steps={STCH_PERIOD}"),
    ),
    Comparison(
        "cosmos",
        "torchjd",
        "COSMOS(lambda_=2, weights=r)",
        torchjd_scalarizer(lambda s, case: s.COSMOS(lambda_=2.0, weights=case.steps[0].preference)),
        functools.partial(loss_cases, preference=True),
        "same preference r (sum 1) and penalty",
    ),
    Comparison(
        "pbi",
        "torchjd",
        "PBI(theta=5, weights=r)",
        torchjd_scalarizer(lambda s, case: s.PBI(theta=5.0, weights=case.steps[0].preference)),
        functools.partial(loss_cases, preference=True),
        "mtl multiplies PBI by |r| (r sums to 1), TorchJD does not",
        ratio=preference_norm,
        ratio_label="|r|",
    ),
    Comparison(
        "uw",
        "torchjd",
        "UW(K) at initialization",
        torchjd_scalarizer(lambda s, case: s.UW(case.num_tasks)),
        loss_cases,
        "s = 0; TorchJD: sum of ½e^-s L + ½s; mtl: mean of e^-s L + s",
        ratio=twice_per_task,
        ratio_label="2/K",
    ),
    Comparison(
        "imtl_l",
        "torchjd",
        "IMTLL(K) at initialization",
        torchjd_scalarizer(lambda s, case: s.IMTLL(case.num_tasks)),
        loss_cases,
        "s = 0; TorchJD sums, mtl takes the mean",
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison(
        "dwa",
        "torchjd",
        "DWA(temperature=2), step() every 4 calls",
        torchjd_dwa,
        functools.partial(loss_cases, steps=(DWA_PERIODS - 2) * DWA_PERIOD, warmup=2 * DWA_PERIOD),
        "periods of 4 steps, compared from the third; TorchJD's weights sum to K",
        overrides=(f"method.period_steps={DWA_PERIOD}",),
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison(
        "famo",
        "torchjd",
        "FAMO(K, lr=0.025, weight_decay=1e-3)",
        torchjd_scalarizer(lambda s, case: s.FAMO(case.num_tasks, lr=0.025, weight_decay=1e-3)),
        functools.partial(loss_cases, steps=FAMO_STEPS, after=True),
        "8 steps, each followed by update(losses after the step)",
    ),
    not_compared("rlw", "torchjd", "Random()", "random weights"),
]

LIBMTL = [
    Comparison(
        "mgda",
        "libmtl",
        "MGDA, mgda_gn='none'",
        libmtl_aggregator("MGDA", mgda_gn="none"),
        libmtl_single(),
        "K = 2: pair weight clipped to [0.001, 0.999]; K >= 3: its iteration (stop 1e-5)",
    ),
    Comparison(
        "pcgrad",
        "libmtl",
        "PCGrad",
        libmtl_aggregator("PCGrad"),
        libmtl_single(tasks=two_tasks),
        "K = 2 only (random order beyond); LibMTL sums",
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison(
        "cagrad",
        "libmtl",
        "CAGrad, calpha=0.4, rescale=1",
        libmtl_aggregator("CAGrad", calpha=0.4, rescale=1),
        libmtl_single(tasks=lambda k: k == 3),
        "K = 3 only: LibMTL 1.1.5 reshapes the weights to (1, 3)",
    ),
    Comparison("imtl_g", "libmtl", "IMTL (loss scales at 0)", libmtl_aggregator("IMTL"), libmtl_single(), "the gradient part of LibMTL's hybrid IMTL"),
    Comparison(
        "gradvac",
        "libmtl",
        "GradVac, beta=0.01",
        libmtl_aggregator("GradVac", beta=0.01),
        libmtl_sequences(tasks=two_tasks),
        "K = 2 only; LibMTL sums, updates a target only when it adjusts",
        ratio=per_task,
        ratio_label="1/K",
    ),
    Comparison("ew", "libmtl", "EW", libmtl_loss_weighting("EW"), loss_cases, "LibMTL sums", ratio=per_task, ratio_label="1/K"),
    Comparison("gls", "libmtl", "GLS", libmtl_loss_weighting("GLS"), loss_cases),
    Comparison(
        "uw",
        "libmtl",
        "UW at initialization (s = -0.5)",
        libmtl_loss_weighting("UW"),
        loss_cases,
        "both at s = -0.5 (method.initial_log_variance); LibMTL: sum of L/2σ² + log σ",
        overrides=("method.initial_log_variance=-0.5",),
        ratio=twice_per_task,
        ratio_label="2/K",
    ),
    Comparison(
        "dwa",
        "libmtl",
        "DWA, T=2 (epoch = period of 4 steps)",
        libmtl_dwa,
        functools.partial(loss_cases, steps=(DWA_PERIODS - 2) * DWA_PERIOD, warmup=2 * DWA_PERIOD),
        "compared from the third period; LibMTL's weights sum to K",
        overrides=(f"method.period_steps={DWA_PERIOD}",),
        ratio=per_task,
        ratio_label="1/K",
    ),
    not_compared("graddrop", "libmtl", "GradDrop", "random: per-coordinate uniform draws from each library's own generator"),
    not_compared("rlw", "libmtl", "RLW", "random weights"),
    not_compared(
        "gradnorm",
        "libmtl",
        "GradNorm",
        "no common call: LibMTL's weights are K softmax(s) fit on all shared parameters from epoch 1, mtl's on the last shared layer's norms",
    ),
]

LIBMTL_ABSENT = {"nash_mtl": "Nash_MTL", "aligned_mtl": "Aligned_MTL", "db_mtl": "DB_MTL", "moco": "MoCo", "fairgrad": "FairGrad", "excess_mtl": "ExcessMTL"}
"""``mtl`` methods whose LibMTL counterparts (on LibMTL's GitHub) came after its 1.1.5 release."""

COMPARISONS = TORCHJD_AGGREGATORS + TORCHJD_SCALARIZERS + LIBMTL


def libmtl_absent(peers: dict[str, bench_peers.Peer]) -> list[Comparison]:
    """A not-compared row for each of ``LIBMTL_ABSENT`` that the installed LibMTL lacks."""
    peer = peers["libmtl"]
    weighting = None if peer.missing else bench_peers.import_libmtl()[0]
    return [
        not_compared(method, "libmtl", name, f"{peer.label()} has no LibMTL.weighting.{name}")
        for method, name in LIBMTL_ABSENT.items()
        if weighting is None or not hasattr(weighting, name)
    ]


# ---------------------------------------------------------------- running


def agreement(ours: Tensor, theirs: Tensor) -> tuple[float, float | None]:
    """Cosine and norm ratio ``|ours| / |theirs|`` (1 and 1 for two zero vectors; ratio None if only theirs is zero)."""
    ours, theirs = ours.detach().double().flatten(), theirs.detach().double().flatten()
    our_norm, their_norm = ours.norm().item(), theirs.norm().item()
    if our_norm == 0 and their_norm == 0:
        return 1.0, 1.0
    if our_norm == 0 or their_norm == 0:
        return 0.0, our_norm / their_norm if their_norm else None
    return (ours @ theirs).item() / (our_norm * their_norm), our_norm / their_norm


def perturbed(inputs: Inputs, generator: torch.Generator) -> Inputs:
    """The inputs with each entry of the Jacobian and losses multiplied by ``1 + eps z`` (``eps`` its
    dtype's machine epsilon, ``z`` standard normal): one rounding error."""

    def jitter(values: Tensor | None) -> Tensor | None:
        if values is None:
            return None
        noise = torch.randn(values.shape, generator=generator, dtype=torch.float64)
        return values * (1 + torch.finfo(values.dtype).eps * noise).to(values.dtype)

    return Inputs(jitter(inputs.losses), jitter(inputs.jacobian), jitter(inputs.after), inputs.preference)


def run_case(comparison: Comparison, case: Case) -> list[dict]:
    """Both implementations through the case's steps, fresh; a record per compared step. A second
    ``mtl`` method runs on the inputs perturbed by one rounding error (``perturbed``): the cosine
    of the two, ``rounding_cosine``, is how far rounding alone moves ``mtl``'s own output."""
    method, jittered, peer = build_method(comparison, case), build_method(comparison, case), comparison.make_peer(case)
    generator = torch.Generator().manual_seed(0)
    records = []
    for index, inputs in enumerate(case.steps):
        ours, objective_gradient = mtl_output(method, inputs)
        ours_jittered, _ = mtl_output(jittered, perturbed(inputs, generator))
        theirs = peer(inputs)
        if index < case.compared_from:
            continue
        cosine, ratio = agreement(ours, theirs)
        record = {
            "case": case.name,
            "step": index,
            "cosine": cosine,
            "ratio": ratio,
            "expected_ratio": comparison.ratio(inputs, theirs),
            "rounding_cosine": agreement(ours, ours_jittered)[0],
        }
        if objective_gradient is not None:
            record["objective_deviation"] = ((objective_gradient.double() - ours.double()).norm() / ours.double().norm()).item()
        records.append(record)
    return records


def compare(comparison: Comparison, peers: dict[str, bench_peers.Peer]) -> dict:
    """The row of one comparison: its summary, every compared step, and the cases that failed."""
    peer = peers[comparison.peer]
    row = {
        "method": comparison.method,
        "peer": peer.label(),
        "implementation": comparison.implementation,
        "overrides": list(comparison.overrides),
        "ratio_label": comparison.ratio_label,
        "note": comparison.note,
    }
    if peer.missing or comparison.cases is None:
        return row | {"status": "not compared", "note": peer.missing or comparison.note}
    records, failures = [], []
    for case in comparison.cases():
        try:
            records += run_case(comparison, case)
        except Exception as error:  # a failure of either side is reported, not raised
            failures.append(f"{case.name}: {type(error).__name__}: {first_line(error)}")
    row |= {"status": "compared", "records": records, "failures": failures}
    if records:
        ratios = [r for r in records if r["ratio"] is not None]  # None: the peer's output is zero, ours not (cosine 0)
        objective = [r["objective_deviation"] for r in records if "objective_deviation" in r]
        row |= {
            "cases": len(records),
            "min_cosine": min(r["cosine"] for r in records),
            "median_cosine": statistics.median(r["cosine"] for r in records),
            "median_ratio": statistics.median(r["ratio"] for r in ratios) if ratios else None,
            "max_ratio_deviation": max((abs(r["ratio"] / r["expected_ratio"] - 1) for r in ratios), default=None),
            "min_rounding_cosine": min(r["rounding_cosine"] for r in records),
            "max_objective_deviation": max(objective) if objective else None,
        }
    return row


def number(value: float | None, spec: str) -> str:
    """``value`` in format ``spec``, ``-`` for None."""
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows, then the failed cases."""
    header = ["method", "peer", "peer's implementation", "cases", "min cos", "median cos", "median ratio", "documented", "max dev", "obj", "self", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    failures = []
    for row in rows:
        cells = [" ".join([row["method"], *row["overrides"]]), row["peer"], row["implementation"]]
        if "cases" in row:
            cells += [
                str(row["cases"]),
                number(row["min_cosine"], ".7f"),
                number(row["median_cosine"], ".7f"),
                number(row["median_ratio"], ".4f"),
                row["ratio_label"],
                number(row["max_ratio_deviation"], ".0e"),
                number(row["max_objective_deviation"], ".0e"),
                number(row["min_rounding_cosine"], ".7f"),
            ]
        else:
            cells += ["0", *["-"] * 7]
        note = row["note"]
        if row.get("failures"):
            note += f" ({len(row['failures'])} cases failed, below)"
            failures += [f"- {row['method']} / {row['implementation']}: {failure}" for failure in row["failures"]]
        lines.append("| " + " | ".join([*cells, note if row["status"] == "compared" else f"not compared: {note}"]) + " |")
    return "\n".join(lines + ([""] + failures if failures else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/check_peers.json"), help="where to write every compared case (JSON)")
    parser.add_argument(
        "--methods", nargs="+", choices=sorted({c.method for c in COMPARISONS} | set(LIBMTL_ABSENT)), metavar="METHOD", help="only these mtl methods (default: all)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # TorchJD's PCGrad and GradVac draw their orders from it (no effect with two tasks)
    peers = bench_peers.peers()
    comparisons = [c for c in COMPARISONS + libmtl_absent(peers) if args.methods is None or c.method in args.methods]
    rows = [compare(comparison, peers) for comparison in comparisons]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    versions = {name: peer.label() for name, peer in peers.items() if not peer.missing}
    args.out.write_text(json.dumps({"torch": torch.__version__, "peers": versions, "threads": args.threads, "rows": rows}, indent=1))
    print(
        f"torch {torch.__version__}, {', '.join(versions.values()) or 'no peers'}; ratio = |mtl| / |peer|, max dev = max |ratio / documented - 1|, "
        "obj = max |grad objective - weights| / |weights|, self = min cosine of mtl with itself on inputs perturbed by one rounding\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
