"""The peer libraries' training steps, for ``bench_step.py`` (a helper module, not a script).

Each peer runs its own implementation of a method on ``mtl``'s model (the same modules, so the
same weights), batch, losses and optimizer (SGD, learning rate 1e-3), through the code path its
documentation and trainer use. The peers are optional: install them into the benchmark's
environment, never into the project's (see ``bench_step.py``). A peer that cannot be imported is
reported with the reason, and its columns are left empty.

- ``libmtl`` (LibMTL 1.1.5, the release on PyPI): the method is a subclass of
  ``LibMTL.weighting.AbsWeighting`` mixed with ``LibMTL.architecture.HPS``, exactly as
  ``LibMTL.Trainer`` builds its model, with ``rep_grad=False``. A step is the trainer's:
  ``optimizer.zero_grad()``, forward, losses, ``model.backward(losses, **weight_args)`` (which
  computes the ``K`` task gradients by ``K`` backward passes through the whole model, staging each
  through a CPU vector, and writes the combination into ``.grad``), ``optimizer.step()``. Two
  adaptations to a current PyTorch, neither in the measured computation: the package is imported
  without its top-level ``__init__`` when that fails (it imports ``torchvision.models.utils``,
  which torchvision removed, for its model zoo), and ``zero_grad_share_params`` keeps zeroed
  gradient tensors (``zero_grad(set_to_none=False)``, the behaviour of the PyTorch 1.x it was
  written for; with PyTorch 2's default ``set_to_none=True`` its ``_reset_grad`` fails on ``None``).
- ``torchjd`` (TorchJD 0.18): ``torchjd.autojac.mtl_backward(losses, features=z, ...)`` (the
  heads' gradients, and the Jacobian of the shared parameters by one vmapped backward pass of the
  ``K`` rows of ``dL_k/dz`` through the encoder), then ``torchjd.autojac.jac_to_grad(shared,
  aggregator)`` with its aggregator, then ``optimizer.step()``: the usage of its MTL example. For
  FAMO, a loss weighting, its ``torchjd.scalarization.FAMO``: backward of the scalarized losses,
  ``optimizer.step()``, then ``update`` with the losses recomputed on the batch.

Hyperparameters are ``mtl``'s defaults where the peer exposes them (CAGrad ``c = 0.4``, rescale 1;
MGDA without normalization; Nash-MTL ``max_norm = 1``, 20 iterations, new weights every step), so
the methods solve the same problem; the peers' own defaults are noted where they differ.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import random
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bench_steps import Step, sgd, trained
from mtl.tasks import INPUT_KEY, Task, stack_losses

PEER_NAMES = ("libmtl", "torchjd")


@dataclass
class Peer:
    """A peer library: its version or why it cannot be used, and its name for each of ``mtl``'s methods."""

    name: str
    distribution: str
    methods: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    missing: str | None = None

    def label(self) -> str:
        return f"{self.distribution} {self.version}" if self.version else self.distribution

    def lacks(self, method: str) -> str | None:
        """Why this peer cannot run ``method`` (None when it can)."""
        if self.missing:
            return self.missing
        if method not in self.methods:
            return f"{self.label()} has no {method} (it has {', '.join(sorted(self.methods))})"
        return None


# ---------------------------------------------------------------- LibMTL

LIBMTL_METHODS = {"mgda": "MGDA", "pcgrad": "PCGrad", "cagrad": "CAGrad", "imtl_g": "IMTL"}
LIBMTL_ARGUMENTS = {"mgda": {"mgda_gn": "none"}, "cagrad": {"calpha": 0.4, "rescale": 1}}
"""``weight_args`` of ``model.backward``; LibMTL's own CAGrad default is ``calpha = 0.5``."""
LIBMTL_NOTES = {
    "imtl_g": "LibMTL's IMTL is the hybrid IMTL (IMTL-G on the task gradients of learnable loss scales e^s L - s, IMTL-L)",
    "pcgrad": "LibMTL's PCGrad sums the projected gradients (mtl's takes their mean); the cost is the same",
    "cagrad": "LibMTL 1.1.5's CAGrad reshapes the task weights to (1, 3) in its objective, so it runs with exactly 3 tasks",
}


def import_libmtl() -> tuple[types.ModuleType, types.ModuleType]:
    """``LibMTL.weighting`` and ``LibMTL.architecture``. When the package's ``__init__`` fails (its
    model zoo imports ``torchvision.models.utils``), the two subpackages are loaded without it."""
    try:
        import LibMTL  # noqa: F401
    except ImportError as error:
        if importlib.util.find_spec("LibMTL") is None:
            raise
        for name in [name for name in sys.modules if name == "LibMTL" or name.startswith("LibMTL.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("LibMTL")
        package = types.ModuleType("LibMTL", f"LibMTL without its __init__ ({error})")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["LibMTL"] = package
    return importlib.import_module("LibMTL.weighting"), importlib.import_module("LibMTL.architecture")


def libmtl_step(model: nn.Module, tasks: list[Task], method: str, batch: Mapping[str, Tensor]) -> Step:
    """LibMTL's trainer step around ``mtl``'s encoder and heads."""
    weighting, architecture = import_libmtl()
    weighting_class = getattr(weighting, LIBMTL_METHODS[method])
    device = batch[INPUT_KEY].device

    class Model(architecture.HPS, weighting_class):  # the class LibMTL.Trainer._prepare_model builds
        def __init__(self) -> None:
            super().__init__(
                task_name=[task.name for task in tasks],
                encoder_class=lambda: model.encoder,
                decoders=model.heads,
                rep_grad=False,
                multi_input=False,
                device=device,
            )
            self.init_param()

        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    peer_model = Model().to(device)
    optimizer = sgd(peer_model.parameters())
    arguments = LIBMTL_ARGUMENTS.get(method, {})
    random.seed(0)  # LibMTL's PCGrad shuffles with Python's random module

    def step() -> None:
        optimizer.zero_grad()
        losses = stack_losses(tasks, peer_model(batch[INPUT_KEY]), batch)
        peer_model.backward(losses, **arguments)
        optimizer.step()

    return step


# ---------------------------------------------------------------- TorchJD

TORCHJD_AGGREGATORS = {"mgda": "MGDA", "pcgrad": "PCGrad", "cagrad": "CAGrad", "nash_mtl": "NashMTL", "imtl_g": "IMTLG", "upgrad": "UPGrad"}
TORCHJD_SCALARIZERS = {"famo": "FAMO"}
"""Loss weightings (TorchJD's ``torchjd.scalarization``): one backward pass of the scalarized losses."""
TORCHJD_METHODS = {**TORCHJD_AGGREGATORS, **TORCHJD_SCALARIZERS}
TORCHJD_NOTES = {
    "pcgrad": "TorchJD's PCGrad sums the projected gradients (mtl's takes their mean); the cost is the same",
    "cagrad": "TorchJD's CAGrad solves the dual with cvxpy (Clarabel) and does not rescale (mtl: rescale 1, divide by 1 + c^2)",
    "nash_mtl": "TorchJD's Nash-MTL is the official code (cvxpy/ECOS); mtl's solves the same equation with scipy",
    "mgda": "TorchJD's MGDA is Frank-Wolfe with epsilon 1e-3, at most 100 iterations; mtl's solves the QP with quadprog",
}


def torchjd_aggregator(method: str, num_tasks: int) -> nn.Module:
    """The TorchJD aggregator for ``method`` (an ImportError names a missing optional dependency)."""
    aggregation = importlib.import_module("torchjd.aggregation")
    arguments = {"cagrad": {"c": 0.4}, "nash_mtl": {"n_tasks": num_tasks, "max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20}}
    return getattr(aggregation, TORCHJD_AGGREGATORS[method])(**arguments.get(method, {}))


def torchjd_step(model: nn.Module, tasks: list[Task], method: str, batch: Mapping[str, Tensor]) -> Step:
    """``mtl_backward`` then ``jac_to_grad`` with TorchJD's aggregator, or for a loss weighting one
    backward pass of TorchJD's scalarizer (then its ``update`` with the losses after the step)."""
    if method in TORCHJD_SCALARIZERS:
        return torchjd_scalarizer_step(model, tasks, method, batch)
    autojac = importlib.import_module("torchjd.autojac")
    aggregator = torchjd_aggregator(method, len(tasks))
    optimizer = sgd(model.parameters())
    shared = trained(model.shared_parameters())
    heads = [trained(model.task_parameters(task.name)) for task in tasks]
    torch.manual_seed(0)  # TorchJD's PCGrad draws its permutations from torch's global generator

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        features = model.encode(batch[INPUT_KEY])
        predictions = model.decode(features)
        losses = [task.loss(predictions[task.name], task.target_of(batch)) for task in tasks]
        autojac.mtl_backward(losses, features=features, tasks_params=heads, shared_params=shared)
        autojac.jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def torchjd_scalarizer_step(model: nn.Module, tasks: list[Task], method: str, batch: Mapping[str, Tensor]) -> Step:
    """The usage of TorchJD's FAMO example: backward of ``scalarizer(losses)``, the optimizer step,
    then ``scalarizer.update`` with the losses recomputed on the same batch."""
    scalarization = importlib.import_module("torchjd.scalarization")
    scalarizer = getattr(scalarization, TORCHJD_SCALARIZERS[method])(len(tasks)).to(batch[INPUT_KEY].device)
    optimizer = sgd(model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        scalarizer(stack_losses(tasks, model(batch[INPUT_KEY]), batch)).backward()
        optimizer.step()
        with torch.no_grad():
            scalarizer.update(stack_losses(tasks, model(batch[INPUT_KEY]), batch))

    return step


# ---------------------------------------------------------------- registry

STEPS: dict[str, Callable[[nn.Module, list[Task], str, Mapping[str, Tensor]], Step]] = {"libmtl": libmtl_step, "torchjd": torchjd_step}


def _probe_libmtl(peer: Peer) -> None:
    import_libmtl()


def _probe_torchjd(peer: Peer) -> None:
    autojac = importlib.import_module("torchjd.autojac")
    if not hasattr(autojac, "jac_to_grad"):
        raise ImportError(f"torchjd {peer.version} predates torchjd.autojac.jac_to_grad; install torchjd==0.18.0")


def peers() -> dict[str, Peer]:
    """Every peer, with its installed version or why it cannot be used."""
    found = {
        "libmtl": (Peer("libmtl", "LibMTL", LIBMTL_METHODS, LIBMTL_NOTES), _probe_libmtl),
        "torchjd": (Peer("torchjd", "TorchJD", TORCHJD_METHODS, TORCHJD_NOTES), _probe_torchjd),
    }
    for peer, probe in found.values():
        try:
            peer.version = importlib.metadata.version(peer.distribution)
            probe(peer)
        except (ImportError, importlib.metadata.PackageNotFoundError) as error:
            reason = "not installed" if isinstance(error, importlib.metadata.PackageNotFoundError) else f"{type(error).__name__}: {error}"
            peer.missing = f"{peer.distribution} is not usable here ({reason}); see bench_step.py --help to install it"
    return {name: peer for name, (peer, _) in found.items()}
