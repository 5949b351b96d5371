"""Time one training step, and measure its peak memory, for every Jacobian engine mode and the peer
libraries, each as a multiple of equal weighting's step on the same model and batch.

    python scripts/bench_step.py --out outputs/bench_step.json

What is measured. For each setup (``bench_setups.py``: ``mlp-k10``, ``mlp-k40``, ``lenet-k2``,
``resnet18-k40``) and each method (``--methods``, by default MGDA, PCGrad, CAGrad, Nash-MTL,
IMTL-G, UPGrad, FAMO and ``fmtl``, F-MTL over EW), one whole training step (zero grad, forward,
losses, gradients, SGD step; ``bench_steps.py``) is run:

- by ``mtl``, for a gradient aggregator in each ``--modes`` (``reference``: K backward passes
  through the whole graph; ``loop``, ``batched``, ``rep``, ``auto``: the Jacobian engine), for
  a loss weighting (FAMO) once, as ``weighted`` (one backward pass, no Jacobian), and for F-MTL
  with its perturbed passes in a loop and batched (the ``loop`` and ``batched`` columns);
- by each peer in ``--peers`` that implements the method (``bench_peers.py``): LibMTL 1.1.5 and
  TorchJD 0.18, with their own gradient computation and aggregator, on the same model (the same
  modules and initial weights), batch, losses and optimizer.

EW (one backward pass of the mean loss) is measured first for every setup. Each measurement
(``bench_measure.py``) runs ``--warmup`` untimed steps, then ``--steps`` timed steps, and reports
their median, divided by EW's median, and its peak memory over all those steps, divided by EW's.
Peak memory on CUDA is ``torch.cuda.max_memory_allocated``; on CPU it is the peak resident set
size, which only a fresh process measures soundly. So by default (``--isolation auto``) every CPU
measurement runs in a fresh process forked from a fork server that imported everything once,
while CUDA measurements all run in this process (exact allocator statistics; a fresh process
costs about 10 s of CUDA start-up and teardown on an H100). Inputs and labels are random and
seeded. A combination that cannot run (a mode a method refuses, a method a peer lacks, a missing
optional dependency) is reported as ``n/a``, a step that raises as ``failed``, each with its
reason under the tables. Prints Markdown (and writes it to ``--markdown``), and writes every
number, each step's time and the setup to ``--out`` as JSON.

The peers are optional and never installed into the project's environment. Install them with
``mtl`` into a separate one:

    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install torch==2.13.0       # the project's torch build (a CUDA build on a GPU machine)
    /tmp/peers/bin/pip install -e .
    /tmp/peers/bin/pip install "torchjd[full]==0.18.0"
    /tmp/peers/bin/pip install --no-deps "LibMTL==1.1.5"   # its torchvision requirement would replace torch
    /tmp/peers/bin/python scripts/bench_step.py --out outputs/bench_step.json

Without them the script runs ``mtl``'s measurements alone and says which peers it skipped and why.

Duration (2 threads, defaults: 2 warm-up and 7 timed steps): on CPU, the three small setups take
about 10 minutes together, ``resnet18-k40`` about 2 to 3 hours (each exact step costs 40 backward
passes through a ResNet-18, about 20 s at batch 8): run it alone, with fewer steps
(``--setups resnet18-k40 --warmup 1 --steps 3``, about an hour). On an H100 everything takes about
10 minutes. Time on an otherwise idle machine: with more busy threads than cores, OpenMP's
spinning threads slow some steps tenfold or more (use ``--threads 1`` on a shared machine).
``--render`` prints the tables of a JSON again, also of an interrupted run (the JSON is rewritten
after every measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

import bench_peers
from bench_measure import FreshProcesses, PeakMemory, SameProcess, Spec
from bench_setups import SETUPS
from bench_steps import FLAT, FLAT_VARIANTS, MODES, WEIGHTED
from mtl.methods import METHODS, GradientAggregator, LossWeighting

DEFAULT_METHODS = ("mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "upgrad", "famo", FLAT)
BASELINE = "ew"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to write the JSON results (required unless --render)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: print the Markdown of a JSON this script wrote (also an interrupted run's)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown tables here")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), help="which setups to measure (default: all)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"registered methods to measure besides EW, and {FLAT} (F-MTL over EW) (default: {' '.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="how mtl gets the Jacobian of a gradient aggregator (default: all)")
    parser.add_argument(
        "--peers",
        nargs="*",
        default=list(bench_peers.PEER_NAMES),
        choices=list(bench_peers.PEER_NAMES),
        help="peer libraries to run side by side (default: those installed; none with an empty list)",
    )
    parser.add_argument(
        "--batch-size",
        nargs="+",
        default=[],
        metavar="[SETUP=]SIZE",
        help="batch size of every setup (64), or of one (resnet18-k40=64); default: each setup's own, see bench_setups.py",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (auto runs its trial steps in the first)")
    parser.add_argument("--steps", type=int, default=7, help="timed steps; the median is reported")
    parser.add_argument("--chunk", type=int, help="jacobian.chunk of mtl's engine modes: tasks per batched call (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every measurement")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one measurement in a fresh process may take before it is reported as failed")
    parser.add_argument(
        "--isolation",
        choices=["auto", "process", "none"],
        default="auto",
        help=(
            "process: each measurement in a fresh process (needed for CPU memory); none: all in this process (no timeouts, no CPU memory); "
            "auto (default): process on CPU, none on CUDA, where the allocator's statistics are exact in one process and a fresh process costs seconds"
        ),
    )
    arguments = parser.parse_args(argv)
    if arguments.out is None and arguments.render is None:
        parser.error("--out is required (or --render JSON to print the tables of earlier results)")
    if arguments.render is not None and not arguments.render.is_file():
        parser.error(f"--render {arguments.render}: no such file")
    check_methods(parser, arguments.methods)
    if arguments.isolation == "auto":
        arguments.isolation = "none" if torch.device(arguments.device).type == "cuda" else "process"
    if arguments.chunk is not None and arguments.chunk < 1:
        parser.error(f"--chunk must be a positive number of tasks, got {arguments.chunk}")
    if arguments.warmup < 0 or arguments.steps < 1:
        parser.error(f"--warmup must be at least 0 and --steps at least 1, got {arguments.warmup} and {arguments.steps}")
    if torch.device(arguments.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {arguments.device}: this torch ({torch.__version__}) sees no CUDA device")
    arguments.batch_sizes = batch_sizes(parser, arguments.batch_size)
    return arguments


def batch_sizes(parser: argparse.ArgumentParser, tokens: list[str]) -> dict[str, int]:
    """Each setup's batch size: its own, unless ``--batch-size`` gives one for all or for it."""
    sizes = {name: setup.batch_size for name, setup in SETUPS.items()}
    for token in tokens:
        name, _, size = token.rpartition("=")
        if name and name not in SETUPS:
            parser.error(f"--batch-size {token}: unknown setup '{name}'; setups: {list(SETUPS)}")
        if not size.isdigit() or int(size) < 1:
            parser.error(f"--batch-size {token}: the size must be a positive integer")
        sizes.update({name: int(size)} if name else dict.fromkeys(sizes, int(size)))
    return sizes


def check_methods(parser: argparse.ArgumentParser, methods: list[str]) -> None:
    """Every method must be a registered gradient aggregator or loss weighting other than EW, or F-MTL."""
    valid = sorted(name for name, cls in METHODS.items() if name != BASELINE and issubclass(cls, (GradientAggregator, LossWeighting))) + [FLAT]
    for name in methods:
        if name not in valid:
            parser.error(f"--methods: '{name}' is not a measurable method (EW is always measured as the baseline); valid methods: {valid}")


def variants(method: str, modes: Iterable[str], peers: Iterable[str]) -> list[str]:
    """The ways ``method`` is run: ``mtl``'s modes (one ``weighted`` step for a loss weighting,
    F-MTL's ``loop`` and ``batched`` among them), then the peers."""
    if method == FLAT:
        own = [mode for mode in modes if mode in FLAT_VARIANTS]
    else:
        own = list(modes) if issubclass(METHODS[method], GradientAggregator) else [WEIGHTED]
    return [*own, *peers]


def plan(arguments: argparse.Namespace, peers: dict[str, bench_peers.Peer]) -> list[Spec | dict]:
    """Every measurement to run (a Spec) or to report without running (a record: a peer lacks the method)."""
    items: list[Spec | dict] = []
    for setup in arguments.setups:
        common = dict(
            batch_size=arguments.batch_sizes[setup], warmup=arguments.warmup, steps=arguments.steps, threads=arguments.threads, device=arguments.device, chunk=arguments.chunk
        )
        items.append(Spec(setup, BASELINE, BASELINE, **common))
        for method in arguments.methods:
            for variant in variants(method, arguments.modes, peers):
                spec = Spec(setup, method, variant, **common)
                lacks = peers[variant].lacks(method) if variant in peers else None
                items.append({**vars(spec), "status": "n/a", "error": lacks} if lacks else spec)
    return items


def add_ratios(records: list[dict]) -> None:
    """``time_ratio`` and ``memory_ratio``: a record's median step and peak memory over EW's in its setup."""
    baselines = {record["setup"]: record for record in records if record["variant"] == BASELINE and record["status"] == "ok"}
    for record in records:
        baseline = baselines.get(record["setup"])
        if record["status"] != "ok" or baseline is None:
            continue
        record["time_ratio"] = record["median_seconds"] / baseline["median_seconds"]
        if record.get("peak_bytes") is not None and baseline.get("peak_bytes"):
            record["memory_ratio"] = record["peak_bytes"] / baseline["peak_bytes"]


def progress(index: int, total: int, record: dict) -> str:
    what = f"[{index}/{total}] {record['setup']} {record['method']} {record['variant']}"
    if record["status"] != "ok":
        return f"{what}: {record['status']} ({record['error']})"
    memory = f", peak {record['peak_bytes'] / 2**20:.0f} MiB" if record.get("peak_bytes") is not None else ""
    return f"{what}: {record['median_seconds'] * 1e3:.1f} ms{memory}"


def run(arguments: argparse.Namespace) -> dict:
    """Measure everything the arguments ask for; the JSON document, also written to ``--out`` after
    every measurement (with ``"complete": false`` until the last), so an interrupted run keeps its numbers."""
    all_peers = bench_peers.peers()
    usable = {name: all_peers[name] for name in arguments.peers if not all_peers[name].missing}
    skipped = {name: all_peers[name].missing for name in arguments.peers if all_peers[name].missing}
    for name, reason in skipped.items():
        print(f"skipping peer {name}: {reason}", file=sys.stderr)
    items = plan(arguments, usable)
    processes = FreshProcesses(arguments.timeout) if arguments.isolation == "process" else SameProcess()
    result = header(arguments, usable, skipped)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(items, start=1):
        record = item if isinstance(item, dict) else processes.measure(item)
        result["records"].append(record)
        result["complete"] = index == len(items)
        add_ratios(result["records"])
        arguments.out.write_text(json.dumps(result, indent=2))
        print(progress(index, len(items), record), file=sys.stderr, flush=True)
    return result


def header(arguments: argparse.Namespace, usable: dict[str, bench_peers.Peer], skipped: dict[str, str]) -> dict:
    """The JSON document without its records: the command, the machine, the settings, the peers."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "device": arguments.device,
        "device_name": device_name(torch.device(arguments.device)),
        "threads": arguments.threads,
        "isolation": arguments.isolation,
        "warmup": arguments.warmup,
        "steps": arguments.steps,
        "chunk": arguments.chunk,
        "torch": torch.__version__,
        "memory": PeakMemory.description(torch.device(arguments.device), fresh_process=arguments.isolation == "process"),
        "peers": {name: peer.label() for name, peer in usable.items()},
        "skipped_peers": skipped,
        "peer_notes": {name: peer.notes for name, peer in usable.items()},
        "columns": {"modes": arguments.modes, "peers": list(usable)},
        "complete": False,
        "records": [],
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (Linux) or architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    arguments = parse_arguments()
    if arguments.render:
        print(report(json.loads(arguments.render.read_text())))
        return
    text = report(run(arguments))
    if arguments.markdown:
        arguments.markdown.parent.mkdir(parents=True, exist_ok=True)
        arguments.markdown.write_text(text + "\n")
    print(text)


# ---------------------------------------------------------------- Markdown


class Footnotes:
    """Numbered reasons for the cells that hold no number."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def cell(self, record: dict) -> str:
        number = self.reasons.setdefault(record["error"], len(self.reasons) + 1)
        return f"{record['status']} [{number}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {reason}" for reason, number in self.reasons.items()]


def report(result: dict) -> str:
    """The step-time table, the peak-memory table, and the notes."""
    records = result["records"]
    columns = [*result["columns"]["modes"], WEIGHTED, *result["columns"]["peers"]]
    columns = [column for column in columns if any(record["variant"] == column for record in records)]
    footnotes = Footnotes()
    time_table = table(records, columns, footnotes, "time_ratio", "EW step (ms)", lambda baseline: f"{baseline['median_seconds'] * 1e3:.1f}", auto=True)
    memory_table = table(
        records, columns, footnotes, "memory_ratio", "EW peak (MiB)", lambda baseline: f"{baseline['peak_bytes'] / 2**20:.0f}" if baseline.get("peak_bytes") is not None else "n/a"
    )
    peers = ", ".join(result["peers"].values()) or "none"
    incomplete = [] if result.get("complete", True) else [f"Incomplete run: {len(records)} measurements before it stopped.", ""]
    lines = [
        *incomplete,
        f"Device {result['device']} ({result['device_name']}), {result['threads']} threads, torch {result['torch']}; "
        f"median of {result['steps']} steps after {result['warmup']} warm-up steps; "
        f"jacobian.chunk {result.get('chunk') or 'null (every task in one batched call)'}; peers: {peers}.",
        "",
        "Step time / EW step:",
        "",
        time_table,
        "",
        f"Peak memory / EW's ({result['memory']}):",
        "",
        memory_table,
    ]
    notes = [f"- peer {name} skipped: {reason}" for name, reason in result["skipped_peers"].items()]
    notes += [
        f"- {name}, {method}: {note}" for name, peer_notes in result["peer_notes"].items() for method, note in peer_notes.items() if any(r["method"] == method for r in records)
    ]
    if any(record["method"] == FLAT for record in records):
        notes.append(
            f"- {FLAT}: F-MTL (Phan et al. 2022) over EW with the paper's defaults (rho 2, adaptive): K clean task gradients "
            "(the engine's jacobian.mode=loop), then K perturbed passes, one by one (loop) or in one vmapped call (batched, sam.batched=true)"
        )
    notes += [f"- {line}" for line in footnotes.lines()]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def table(records: list[dict], columns: list[str], footnotes: Footnotes, ratio: str, baseline_header: str, baseline_cell, auto: bool = False) -> str:
    """One row per setup and method: EW's absolute figure, then each column's ratio to it."""
    header = ["setup", "method", baseline_header, *(f"{column} / EW" for column in columns)] + (["auto chose"] if auto and "auto" in columns else [])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for setup in dict.fromkeys(record["setup"] for record in records):
        rows = [record for record in records if record["setup"] == setup]
        baseline = next((record for record in rows if record["variant"] == BASELINE), None)
        first = baseline_cell(baseline) if baseline and baseline["status"] == "ok" else footnotes.cell(baseline) if baseline else "n/a"
        for method in dict.fromkeys(record["method"] for record in rows if record["variant"] != BASELINE):
            by_variant = {record["variant"]: record for record in rows if record["method"] == method}
            cells = [setup, method, first]
            for column in columns:
                record = by_variant.get(column)
                if record is None:
                    cells.append("")
                elif record["status"] != "ok":
                    cells.append(footnotes.cell(record))
                else:
                    cells.append(f"{record[ratio]:.2f}" if ratio in record else "n/a")
            if auto and "auto" in columns:
                cells.append(by_variant.get("auto", {}).get("auto_chose", ""))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
