"""The exact Jacobian (``jacobian.mode`` loop, batched, auto) against the peers, step by step in one process.

For each ``bench_setups`` setup and each method, EW's step, ``mtl``'s step in each exact mode and
the step of each peer that has the method (``bench_peers.py``: LibMTL, TorchJD) run in turn,
``--rounds`` times after ``--warmup`` rounds, each on its own copy of the same model (same initial
weights) and the same batch. Interleaving gives every variant the same share of the machine's
drift, which ``bench_step.py``'s separate processes do not: there, repeated measurements of one
computation differ by up to 30%, here the ratios between the libraries hold. Peak memory stays
``bench_step.py``'s, which needs a fresh process per measurement. ``auto`` runs its trial
(``ModeTrial``: a few steps in each exact mode) in its first step; the table names its choice. A
peer that cannot run a combination (LibMTL's CAGrad takes exactly 3 tasks) is left out with its
reason. Prints the medians divided by EW's, as Markdown, and writes every step's time to ``--out``
as JSON. Install the peers as ``bench_step.py --help`` says, then (about 10 minutes on the 2-core
machine):

    /tmp/peers/bin/python scripts/bench_exact.py --out outputs/bench_exact.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import bench_peers
from bench_setups import SETUPS
from bench_steps import Step, mtl_step
from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.methods import METHODS, GradientAggregator
from mtl.task_chunks import first_line

METHOD_NAMES = ("mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "upgrad")
EXACT_MODES = ("loop", "batched", "auto")


def steps_to_time(setup_name: str, method: str, peers: dict[str, bench_peers.Peer]) -> tuple[dict[str, Step], str, dict[str, str]]:
    """The steps of every variant of ``method`` on ``setup_name``; what ``auto`` chose (in its first
    step, run here); why a peer's variant is left out (each peer's first step runs here, and one
    that raises is left out)."""
    setup = SETUPS[setup_name]
    tasks, batch = setup.tasks(), setup.batch(setup.batch_size, torch.device("cpu"))
    steps = {"ew": mtl_step(setup.model(), tasks, None, "ew", batch)[0]}
    for mode in ("loop", "batched"):
        steps[mode] = mtl_step(setup.model(), tasks, METHODS[method](len(tasks)), mode, batch)[0]
    steps["auto"], auto_details = mtl_step(setup.model(), tasks, METHODS[method](len(tasks)), "auto", batch)
    left_out = {}
    for name, peer in peers.items():
        reason = peer.lacks(method)
        if reason is None:
            try:
                steps[name] = bench_peers.STEPS[name](setup.model(), tasks, method, batch)
                steps[name]()
            except Exception as error:  # a peer's own failure is reported, not raised
                steps.pop(name, None)
                reason = f"failed: {first_line(error)}"
        if reason is not None:
            left_out[name] = reason
    steps["auto"]()
    return steps, auto_details()["auto_chose"], left_out


def table(results: dict[str, dict[str, dict]], peer_names: list[str]) -> str:
    peer_columns = [f"{name} / EW" for name in peer_names]
    header = ["setup", "method", "EW step (ms)", *(f"{mode} / EW" for mode in EXACT_MODES), "auto chose", *peer_columns, "auto / fastest peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for setup_name, methods in results.items():
        for method, result in methods.items():
            medians = {variant: statistics.median(seconds) for variant, seconds in result["seconds"].items()}
            ew = medians["ew"]
            peers = [medians[name] for name in peer_names if name in medians]
            cells = [setup_name, method, f"{1e3 * ew:.1f}", *(f"{medians[mode] / ew:.2f}" for mode in EXACT_MODES), result["auto_chose"]]
            cells += [f"{medians[name] / ew:.2f}" if name in medians else "n/a" for name in peer_names]
            cells.append(f"{medians['auto'] / min(peers):.2f}" if peers else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({f"- {name}, {method}: {reason}" for methods in results.values() for method, result in methods.items() for name, reason in result["left_out"].items()})
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write every step's time (JSON)")
    parser.add_argument("--setups", nargs="+", default=["mlp-k10", "mlp-k40"], choices=sorted(SETUPS))
    aggregators = sorted(name for name, method in METHODS.items() if issubclass(method, GradientAggregator))
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=aggregators, metavar="METHOD")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after each variant's first step")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    peers = bench_peers.peers()
    results: dict[str, dict[str, dict]] = {}
    for setup_name in args.setups:
        results[setup_name] = {}
        for method in args.methods:
            steps, auto_chose, left_out = steps_to_time(setup_name, method, peers)
            seconds = interleaved_rounds(steps, args.warmup, args.rounds, description=f"{setup_name} {method}")
            results[setup_name][method] = {"seconds": seconds, "auto_chose": auto_chose, "left_out": left_out}
            del steps  # before the next method's models and buffers
    args.out.parent.mkdir(parents=True, exist_ok=True)
    versions = {name: peer.label() for name, peer in peers.items() if not peer.missing}
    args.out.write_text(
        json.dumps({"threads": args.threads, "torch": torch.__version__, "peers": versions, "rounds": args.rounds, "warmup": args.warmup, "results": results}, indent=1)
    )
    print(f"{args.threads} threads, torch {torch.__version__}, {', '.join(versions.values()) or 'no peers'}; median of {args.rounds} interleaved rounds after {args.warmup}\n")
    print(table(results, list(peers)))


if __name__ == "__main__":
    main()
