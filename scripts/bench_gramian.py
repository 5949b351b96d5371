"""The Gramian of a Jacobian: one product ``J @ J.T`` against ``row_inner_products`` (blocks of columns).

For ``K`` rows of ``P`` columns (by default the MLP setups' ``P = 927,232`` shared parameters, with
``K`` = 2, 10 and 40), the two ways run in turn ``--rounds`` times after ``--warmup``, on the same
float32 matrix, and the table gives their median times, their ratio and each one's largest error
against the float64 product. Writes every time to ``--out`` as JSON.

    python scripts/bench_gramian.py --out outputs/bench_gramian.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

import torch

from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.methods.base import row_inner_products

WAYS = {"J @ J.T": lambda matrix: matrix @ matrix.T, "row_inner_products": lambda matrix: row_inner_products(matrix, matrix)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write every time (JSON)")
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 10, 40])
    parser.add_argument("--columns", type=int, default=927_232)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    device = torch.device(args.device)
    results = {}
    lines = ["| K | J @ J.T (ms) | row_inner_products (ms) | ratio | error of J @ J.T | error of row_inner_products |", "| --- | --- | --- | --- | --- | --- |"]
    for tasks in args.tasks:
        matrix = torch.randn(tasks, args.columns, generator=torch.Generator().manual_seed(tasks)).to(device)
        exact = matrix.double() @ matrix.double().T
        seconds = interleaved_rounds({way: functools.partial(gramian, matrix) for way, gramian in WAYS.items()}, args.warmup, args.rounds, device)
        medians = {way: statistics.median(values) for way, values in seconds.items()}
        errors = {way: (gramian(matrix).double() - exact).abs().max().item() for way, gramian in WAYS.items()}
        results[tasks] = {"seconds": seconds, "errors": errors}
        plain, blocked = medians["J @ J.T"], medians["row_inner_products"]
        lines.append(f"| {tasks} | {1e3 * plain:.2f} | {1e3 * blocked:.2f} | {plain / blocked:.2f} | {errors['J @ J.T']:.3g} | {errors['row_inner_products']:.3g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "threads": args.threads, "torch": torch.__version__, "columns": args.columns, "results": results}, indent=1))
    print(f"{args.device}, {args.threads} threads, torch {torch.__version__}; {args.columns} columns; median of {args.rounds} rounds after {args.warmup}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
