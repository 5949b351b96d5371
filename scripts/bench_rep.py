"""``jacobian.mode=rep`` against EW, step by step in one process: the ≤ 1.2× target of the engine.

For each ``bench_setups`` setup, one EW step (``bench_steps.mtl_step``, the ``bench_step.py``
step) and one ``rep`` step of each method run in turn, ``--rounds`` times after ``--warmup``
rounds, on models with the same initial weights and the same batch. Interleaving gives every
variant the same share of the machine's drift, which separate processes (``bench_step.py``) do
not. Each ``rep`` step runs twice: as the engine runs it (for linear heads, the Gramian and the
combination from the heads' products, ``mtl.engine.linear_heads``) and with the representation
gradients formed (``products_are_cheaper`` patched to False), so the table shows what the
products save. The method's own solve on the ``(K, K)`` Gramian (``gramian_weights``) is timed
inside every step, so the table also shows the step without it: what the engine costs over EW.
Prints the medians divided by EW's step, as Markdown, and writes every step's and every solve's
time to ``--out`` as JSON.

    python scripts/bench_rep.py --out outputs/bench_rep.json

``--profile`` shows where the time of one setup's ``rep`` step goes, part by part, beside EW's
step (default mlp-k40, whose heads are linear), with the host settings ``mtl-train`` applies: the
median time of

- EW's whole step, and its backward pass through the heads (one ``dL/dz``, accumulated);
- the rep step's forward (heads reading their copies of ``z``, linear heads' outputs recorded);
- its one backward pass through the heads, to the linear heads' outputs (or to every
  ``dL_k/dz``) and the heads' parameters; and the same pass to every ``dL_k/dz``, formed;
- the Gramian of the representation gradients from the linear heads' products
  (``mtl.engine.linear_heads``) and from the formed ``Z (K, B·D)``, and their combination;
- each method's weights from that Gramian; the encoder's backward of one direction;
- UPGrad's weights as the method solves them (``K`` non-negative least-squares problems,
  ``CosineQuadraticForm.minimize_above``) beside ``K`` QPs by quadprog, on the same Gramian.

    python scripts/bench_rep.py --profile --setups mlp-k40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

import mtl.engine.linear_heads
from bench_setups import SETUPS
from bench_steps import Step, mtl_step
from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.linear_heads import LinearHeadGradients
from mtl.engine.modes import dense
from mtl.methods import METHODS, GramianWeighting
from mtl.methods.dual_cone import UPGrad
from mtl.methods.solvers import CosineQuadraticForm
from mtl.tasks import INPUT_KEY, task_losses

METHOD_NAMES = ("mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "upgrad")
FORMED = "formed"


def formed_gradients() -> mock._patch:
    """The engine with the representation gradients always formed."""
    return mock.patch.object(mtl.engine.linear_heads, "products_are_cheaper", lambda representation, layers: False)


def with_formed_gradients(step: Step) -> Step:
    """``step`` run with the representation gradients formed (``formed_gradients``)."""

    def formed_step() -> None:
        with formed_gradients():
            step()

    return formed_step


def uses_products(setup_name: str) -> bool:
    """Whether the engine takes the linear heads' products on this setup."""
    setup = SETUPS[setup_name]
    batch = setup.batch(setup.batch_size, torch.device("cpu"))
    representation, _ = JacobianEngine("rep").forward(setup.model(), batch[INPUT_KEY], [task.name for task in setup.tasks()])
    return representation.linear_heads is not None


class TimedSolves:
    """A ``GramianWeighting`` whose ``gramian_weights`` calls are timed: ``seconds`` holds one
    entry per call, and a rep step makes one."""

    def __init__(self, method: GramianWeighting) -> None:
        self.seconds: list[float] = []
        self._solve = method.gramian_weights
        method.gramian_weights = self

    def __call__(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        weights = self._solve(gramian, losses)
        self.seconds.append(time.perf_counter() - start)
        return weights


def timed_rounds(setup_name: str, methods: list[str], warmup: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of every step of EW and of each method's rep step (and, with linear heads, its
    rep step with the gradients formed), interleaved round by round, and of the method's solve in
    each rep step: ``{"steps": {variant: seconds}, "solves": {variant: seconds}}``."""
    setup = SETUPS[setup_name]
    tasks, batch = setup.tasks(), setup.batch(setup.batch_size, torch.device("cpu"))
    steps = {"ew": mtl_step(setup.model(), tasks, None, "ew", batch)[0]}
    solves: dict[str, TimedSolves] = {}
    variants = [(name, False) for name in methods] + ([(f"{name} {FORMED}", True) for name in methods] if uses_products(setup_name) else [])
    for variant, formed in variants:
        method = METHODS[variant.split()[0]](len(tasks))
        solves[variant] = TimedSolves(method)
        step = mtl_step(setup.model(), tasks, method, "rep", batch)[0]
        steps[variant] = with_formed_gradients(step) if formed else step
    timings = interleaved_rounds(steps, warmup, rounds, description=setup_name)
    return {"steps": timings, "solves": {variant: solve.seconds[-rounds:] for variant, solve in solves.items()}}


def table(results: dict[str, dict[str, dict[str, list[float]]]], methods: list[str]) -> str:
    lines = [
        "| setup | method | EW step (ms) | rep / EW | the method's solve (ms) | rep without the solve / EW | rep with the gradients formed / EW |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup_name, result in results.items():
        steps, solves = result["steps"], result["solves"]
        ew = statistics.median(steps["ew"])
        for name in methods:
            formed = steps.get(f"{name} {FORMED}")
            formed_cell = f"{statistics.median(formed) / ew:.2f}" if formed else "(heads not linear: always formed)"
            without_solve = statistics.median(step - solve for step, solve in zip(steps[name], solves[name]))
            lines.append(
                f"| {setup_name} | {name} | {1e3 * ew:.1f} | {statistics.median(steps[name]) / ew:.2f} | "
                f"{1e3 * statistics.median(solves[name]):.1f} | {without_solve / ew:.2f} | {formed_cell} |"
            )
    return "\n".join(lines)


def median_ms(work, warmup: int, steps: int) -> float:
    return 1e3 * statistics.median(interleaved_rounds({"step": work}, warmup, steps)["step"])


def upgrad_weights_by_quadprog(gramian: torch.Tensor) -> torch.Tensor:
    """UPGrad's weights from K QPs solved by quadprog (its dual active-set method)."""
    form, rows = CosineQuadraticForm(gramian), torch.eye(len(gramian), dtype=gramian.dtype)
    return torch.stack([torch.maximum(form.minimize(rows, row), row) for row in rows]).mean(dim=0)


def profile_parts(setup_name: str, warmup: int, steps: int) -> dict[str, float]:
    """``--profile``: the median milliseconds of each part of the setup's ``rep`` step and of EW's."""
    setup = SETUPS[setup_name]
    model, tasks = setup.model(), setup.tasks()
    batch = setup.batch(setup.batch_size, torch.device("cpu"))
    names = [task.name for task in tasks]
    heads = [parameter for name in names for parameter in model.task_parameters(name)]
    shared = list(model.shared_parameters())
    engine = JacobianEngine("rep")
    timed = lambda work: median_ms(work, warmup, steps)  # noqa: E731

    def forward():
        representation, predictions = engine.forward(model, batch[INPUT_KEY], names)
        return representation, task_losses(tasks, predictions, batch)

    representation, losses = forward()
    stacked = torch.stack(losses)[None]
    backward = lambda: engine.backward_through_heads([losses], stacked, [representation], heads)  # noqa: E731
    [(z, gradients)], _ = backward()
    rows = dense(gradients).flatten(start_dim=1)
    leaf = z.detach().requires_grad_()
    ew_heads_loss = torch.stack(task_losses(tasks, model.decode(leaf), batch)).mean()
    ew_step, _ = mtl_step(setup.model(), tasks, None, "ew", batch)  # its own copy: its SGD steps change the weights
    products = isinstance(gradients, LinearHeadGradients)
    gramian = gradients.gramian() if products else rows @ rows.T
    task_weights = torch.full((len(tasks),), 1 / len(tasks), dtype=torch.float64)
    formed = dataclasses.replace(representation, linear_heads=None)
    parts = {
        "EW whole step": timed(ew_step),
        "rep forward (heads on copies of z)": timed(forward),
        f"rep backward through the heads (to {'their outputs' if products else 'every dL_k/dz'} and their parameters)": timed(backward),
        "rep backward through the heads to every dL_k/dz, formed": timed(lambda: engine.backward_through_heads([losses], stacked, [formed], heads)),
        "EW backward through the heads (one dL/dz and the heads)": timed(lambda: torch.autograd.grad(ew_heads_loss, [leaf, *heads], retain_graph=True)),
        f"Gramian of Z {tuple(rows.shape)}, formed": timed(lambda: rows @ rows.T),
    }
    if products:
        parts["Gramian of Z from the linear heads' products"] = timed(gradients.gramian)
        parts["combination of Z from the linear heads' products"] = timed(lambda: gradients.combination(task_weights))
    parts["combination of the formed Z"] = timed(lambda: task_weights.float() @ rows)
    parts["encoder backward of one direction"] = timed(lambda: torch.autograd.grad(z, shared, grad_outputs=rows[0].view_as(z), retain_graph=True))
    for name in METHOD_NAMES:
        method = METHODS[name](len(tasks))
        parts[f"{name} weights from the Gramian"] = timed(lambda method=method: method.gramian_weights(gramian, stacked[0]))
    gramian = gramian.double()
    parts["UPGrad weights, K non-negative least squares (the method)"] = timed(lambda: UPGrad(len(tasks)).weights(gramian, stacked[0].double()))
    parts["UPGrad weights, K QPs by quadprog"] = timed(lambda: upgrad_weights_by_quadprog(gramian))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to write every step's time (JSON); required unless --profile")
    parser.add_argument("--profile", action="store_true", help="time the parts of each setup's rep step instead (--warmup and --rounds: calls per part)")
    parser.add_argument("--setups", nargs="+", default=["mlp-k10", "mlp-k40", "lenet-k2"], choices=sorted(SETUPS))
    parser.add_argument(
        "--methods", nargs="+", default=list(METHOD_NAMES), choices=sorted(name for name, method in METHODS.items() if issubclass(method, GramianWeighting)), metavar="METHOD"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.out is None and not args.profile:
        parser.error("--out is required (or --profile)")
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    if args.profile:
        for setup_name in args.setups:
            print(f"{setup_name}, {args.threads} threads, torch {torch.__version__}; median over {args.rounds} calls after {args.warmup}\n")
            print("| part | ms |\n| --- | --- |")
            print("\n".join(f"| {part} | {milliseconds:.1f} |" for part, milliseconds in profile_parts(setup_name, args.warmup, args.rounds).items()), end="\n\n")
        return
    results = {setup_name: timed_rounds(setup_name, args.methods, args.warmup, args.rounds) for setup_name in args.setups}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rounds": args.rounds, "warmup": args.warmup, "results": results}, indent=1))
    print(f"{args.threads} threads, torch {torch.__version__}; median of {args.rounds} interleaved rounds after {args.warmup}\n")
    print(table(results, args.methods))


if __name__ == "__main__":
    main()
