"""Side by side in one run: the two host-side settings ``mtl`` applies on the CPU, each on and off.

- ``retain_freed_host_memory`` (``mtl.engine.host_memory``, applied by ``mtl-train``): glibc keeps
  freed memory for the next step instead of returning it to the system. A process cannot go back
  to glibc's dynamic defaults once the thresholds are set, so each measurement of this setting
  runs in a fresh process, the two settings alternating.
- ``single_threaded_blas`` (``mtl.methods.base``, around every Gramian weighting's solve): NumPy's
  and SciPy's BLAS on one thread, so that their spinning threads leave the cores to torch. It is
  switched inside one process, the two settings alternating.

Each measurement is the median of ``--steps`` whole training steps (``bench_steps.mtl_step``,
the ``bench_step.py`` step) after ``--warmup``, on a ``bench_setups`` setup, for EW and a few
gradient aggregators in ``loop`` and ``rep`` mode. The table gives the median over ``--repeats``
alternations of each pair, and the ratio off/on (above 1: the setting makes the step faster).

    python scripts/bench_host.py --out outputs/bench_host.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from unittest import mock

import torch

import mtl.methods.base
from bench_setups import SETUPS
from bench_steps import mtl_step
from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.methods import METHODS

CASES = [("ew", None), ("mgda", "loop"), ("mgda", "rep"), ("cagrad", "rep"), ("nash_mtl", "rep"), ("upgrad", "rep")]


def median_step_ms(setup_name: str, method_name: str, mode: str | None, warmup: int, steps: int) -> float:
    """The median time of one whole training step, in milliseconds."""
    setup = SETUPS[setup_name]
    model, tasks = setup.model(), setup.tasks()
    batch = setup.batch(setup.batch_size, torch.device("cpu"))
    method = None if method_name == "ew" else METHODS[method_name](len(tasks))
    step, _ = mtl_step(model, tasks, method, mode or "ew", batch)
    return 1e3 * statistics.median(interleaved_rounds({"step": step}, warmup, steps)["step"])


def blas_pair(args: argparse.Namespace, method_name: str, mode: str | None) -> tuple[float, float]:
    """(off, on) of the one-thread BLAS, measured one after the other in this process."""
    on = median_step_ms(args.setup, method_name, mode, args.warmup, args.steps)
    with mock.patch.object(mtl.methods.base, "single_threaded_blas", contextlib.nullcontext):
        off = median_step_ms(args.setup, method_name, mode, args.warmup, args.steps)
    return off, on


def memory_pair(args: argparse.Namespace, method_name: str, mode: str | None) -> tuple[float, float]:
    """(off, on) of the retained host memory, each in a fresh process."""
    timings = []
    for retain in ("default", "retain"):
        options = ["--setup", args.setup, "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
        command = [sys.executable, __file__, "--child", retain, method_name, mode or "ew", *options]
        timings.append(float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1]))
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="mlp-k40", choices=sorted(SETUPS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3, help="alternations of each on/off pair")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("MEMORY", "METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory, method_name, mode = args.child
        if memory == "retain":
            retain_freed_host_memory()
        print(median_step_ms(args.setup, method_name, None if mode == "ew" else mode, args.warmup, args.steps))
        return
    retain_freed_host_memory()  # the in-process BLAS comparison runs as mtl-train would
    rows = []
    for method_name, mode in CASES:
        for setting, pair in (("retained host memory", memory_pair), ("one-thread BLAS", blas_pair)):
            if setting == "one-thread BLAS" and method_name == "ew":
                continue  # EW solves nothing
            offs, ons = zip(*(pair(args, method_name, mode) for _ in range(args.repeats)))
            off, on = statistics.median(offs), statistics.median(ons)
            rows.append({"method": method_name, "mode": mode or "", "setting": setting, "off_ms": off, "on_ms": on, "off_over_on": off / on})
    print(f"{args.setup}, {args.threads} threads, torch {torch.__version__}; median step over {args.steps} after {args.warmup}, median of {args.repeats} alternations\n")
    print("| method | mode | setting | off (ms) | on (ms) | off / on |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['method']} | {row['mode']} | {row['setting']} | {row['off_ms']:.1f} | {row['on_ms']:.1f} | {row['off_over_on']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
