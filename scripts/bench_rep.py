"""``jacobian.mode=rep`` against EW, step by step in one process: the ≤ 1.2× target of the engine.

For each ``bench_setups`` setup, one EW step (``bench_steps.mtl_step``, the ``bench_step.py``
step) and one ``rep`` step of each method run in turn, ``--rounds`` times after ``--warmup``
rounds, on models with the same initial weights and the same batch. Interleaving gives every
variant the same share of the machine's drift, which separate processes (``bench_step.py``) do
not. Each ``rep`` step runs twice: as the engine runs it (for linear heads, the Gramian and the
combination from the heads' products, ``mtl.engine.linear_heads``) and with the representation
gradients formed (``products_are_cheaper`` patched to False), so the table shows what the
products save. Prints the median step time of each variant divided by EW's, as Markdown, and
writes every step's time to ``--out`` as JSON.

    python scripts/bench_rep.py --out outputs/bench_rep.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from rich.progress import track

from bench_setups import SETUPS
from bench_steps import mtl_step

import mtl.engine.linear_heads
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.methods import METHODS
from mtl.tasks import INPUT_KEY

METHOD_NAMES = ("mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "upgrad")
FORMED = "formed"


def formed_gradients() -> mock._patch:
    """The engine with the representation gradients always formed."""
    return mock.patch.object(mtl.engine.linear_heads, "products_are_cheaper", lambda representation, layers: False)


def uses_products(setup_name: str) -> bool:
    """Whether the engine takes the linear heads' products on this setup."""
    setup = SETUPS[setup_name]
    batch = setup.batch(setup.batch_size, torch.device("cpu"))
    representation, _ = JacobianEngine("rep").forward(setup.model(), batch[INPUT_KEY], [task.name for task in setup.tasks()])
    return representation.linear_heads is not None


def timed_rounds(setup_name: str, methods: list[str], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of every step of EW and of each method's rep step (and, with linear heads, its
    rep step with the gradients formed), interleaved round by round."""
    setup = SETUPS[setup_name]
    tasks, batch = setup.tasks(), setup.batch(setup.batch_size, torch.device("cpu"))
    steps = {"ew": (mtl_step(setup.model(), tasks, None, "ew", batch)[0], False)}
    products = uses_products(setup_name)
    for name in methods:
        steps[name] = (mtl_step(setup.model(), tasks, METHODS[name](len(tasks)), "rep", batch)[0], False)
        if products:
            steps[f"{name} {FORMED}"] = (mtl_step(setup.model(), tasks, METHODS[name](len(tasks)), "rep", batch)[0], True)
    timings: dict[str, list[float]] = {variant: [] for variant in steps}
    for round_index in track(range(warmup + rounds), description=setup_name):
        for variant, (step, formed) in steps.items():
            with formed_gradients() if formed else contextlib.nullcontext():
                start = time.perf_counter()
                step()
                elapsed = time.perf_counter() - start
            if round_index >= warmup:
                timings[variant].append(elapsed)
    return timings


def table(results: dict[str, dict[str, list[float]]], methods: list[str]) -> str:
    lines = ["| setup | method | EW step (ms) | rep / EW | rep with the gradients formed / EW |", "| --- | --- | --- | --- | --- |"]
    for setup_name, timings in results.items():
        ew = statistics.median(timings["ew"])
        for name in methods:
            formed = timings.get(f"{name} {FORMED}")
            formed_cell = f"{statistics.median(formed) / ew:.2f}" if formed else "(heads not linear: always formed)"
            lines.append(f"| {setup_name} | {name} | {1e3 * ew:.1f} | {statistics.median(timings[name]) / ew:.2f} | {formed_cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write every step's time (JSON)")
    parser.add_argument("--setups", nargs="+", default=["mlp-k10", "mlp-k40", "lenet-k2"], choices=sorted(SETUPS))
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=sorted(METHODS), metavar="METHOD")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    results = {setup_name: timed_rounds(setup_name, args.methods, args.warmup, args.rounds) for setup_name in args.setups}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rounds": args.rounds, "warmup": args.warmup, "seconds": results}, indent=1))
    print(f"{args.threads} threads, torch {torch.__version__}; median of {args.rounds} interleaved rounds after {args.warmup}\n")
    print(table(results, args.methods))


if __name__ == "__main__":
    main()
