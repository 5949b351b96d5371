"""The cost of the non-finite checks (``mtl.engine.nonfinite``) in a training step, as a ratio.

    PYTHONPATH=scripts python scripts/bench_nonfinite.py --setups mlp-k10 lenet-k2 --rounds 30

For each setup (``bench_setups.py``) and method (EW as a loss weighting, which checks its losses
and the whole update; MGDA in ``loop`` mode, whose Gramian is checked on the CPU copy its solve
reads; PCGrad in ``loop`` mode, whose Jacobian ``(K, P)`` is checked on the device), one
``MultiTaskStep`` training step (``bench_steps.training_step``) is timed with the checks and with
them replaced by no-ops (the losses' and the update's checks, the saved buffers and method state,
the aggregators' refusal of a non-finite input), in interleaved rounds (``bench_timing``), and the
median of the checked steps is divided by the median of the unchecked ones.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator

import torch

import mtl.engine.step as step_module
import mtl.methods.base as methods_base
from bench_setups import SETUPS
from bench_steps import training_step
from bench_timing import interleaved_rounds
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.step import MultiTaskStep
from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.methods.pcgrad import PCGrad

METHODS = {
    "ew": lambda tasks: (LinearScalarization(len(tasks)), None),
    "mgda": lambda tasks: (MGDA(len(tasks)), JacobianEngine("loop")),
    "pcgrad": lambda tasks: (PCGrad(len(tasks)), JacobianEngine("loop")),
}


class NothingSaved:
    """``StateBeforeStep`` without the copies."""

    def __init__(self, *_) -> None:
        pass

    def restore(self) -> None:
        pass


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """The step with every non-finite check replaced by a no-op."""
    saved = step_module.check_losses, step_module.check_update, step_module.StateBeforeStep, methods_base.refuse_nonfinite
    step_module.check_losses = step_module.check_update = methods_base.refuse_nonfinite = lambda *_, **__: None
    step_module.StateBeforeStep = NothingSaved
    try:
        yield
    finally:
        step_module.check_losses, step_module.check_update, step_module.StateBeforeStep, methods_base.refuse_nonfinite = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=["mlp-k10", "lenet-k2"], choices=sorted(SETUPS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| setup | method | unchecked step (ms) | checked / unchecked |")
    print("| --- | --- | --- | --- |")
    for setup_name in args.setups:
        setup = SETUPS[setup_name]
        for method_name in args.methods:
            model, tasks = setup.model(), setup.tasks()
            method, engine = METHODS[method_name](tasks)
            step = training_step(MultiTaskStep(model, tasks, method, engine), setup.batch(setup.batch_size, torch.device("cpu")))

            def without_checks(step=step) -> None:
                with unchecked():
                    step()

            times = interleaved_rounds({"checked": step, "unchecked": without_checks}, args.warmup, args.rounds)
            checked, plain = statistics.median(times["checked"]), statistics.median(times["unchecked"])
            print(f"| {setup_name} | {method_name} | {1e3 * plain:.1f} | {checked / plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
