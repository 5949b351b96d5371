"""The encoder pass of ``jacobian.mode=batched`` by each vmap, against ``loop``'s ``K`` passes,
interleaved in one process: the measurement behind ``batched_vector_jacobian_products``' choice of
vmap per device (``mtl/engine/jacobian.py``).

For each ``bench_setups`` setup, the model's encoder runs forward once on the setup's batch.
Then, round by round, the ``K`` vector-Jacobian products of the shared parameters run three ways:
``loop`` (``K`` ``torch.autograd.grad`` calls), ``prototype`` (``is_grads_batched=True``) and
``torch.func`` (``torch.func.vmap``). The cotangents are random, of the representation's shape;
the time does not depend on their values. Each way's products are checked against ``loop``'s
once, without TF32; the timed passes run with PyTorch's defaults. Prints the medians and their
ratios to ``loop`` as Markdown, and on CUDA the peak memory of one pass above the forward graph;
writes every timing to ``--out`` as JSON.

    python scripts/bench_vmap.py --out outputs/bench_vmap.json
    python scripts/bench_vmap.py --device cuda --batch-size resnet18-k40=8 --out outputs/bench_vmap_gpu.json

``--profile`` times nothing: it runs ``torch.profiler`` around one pass of each way (after one
untimed pass) and prints the calls and self time of the operators that tell the vmaps apart. The
prototype runs a convolution's backward once per task and stacks the results (``K + 1`` calls of
``aten::convolution_backward`` per convolution, and ``aten::cat``); ``torch.func`` folds the tasks
into the convolution (a few calls per convolution) at the cost of copies (``aten::copy_``) and an
elementwise BatchNorm backward (``aten::mul``).

    python scripts/bench_vmap.py --profile --setups resnet18-k40
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import profile as profiled

from bench_measure import PeakMemory
from bench_setups import SETUPS
from bench_step import batch_sizes
from bench_timing import interleaved_rounds
from mtl.engine.jacobian import prototype_batched_products, vmapped_products
from mtl.tasks import INPUT_KEY

Pass = Callable[[], object]
PROFILED_OPERATORS = ("aten::convolution_backward", "aten::native_batch_norm_backward", "aten::cat", "aten::copy_", "aten::mul")


def passes(setup_name: str, batch_size: int, device: torch.device) -> dict[str, Pass]:
    """The three ways to the products on the setup's encoder, each checked against ``loop``."""
    setup = SETUPS[setup_name]
    model = setup.model().to(device)
    shared = list(model.shared_parameters())
    representation = model.encode(setup.batch(batch_size, device)[INPUT_KEY])
    cotangents = torch.randn(setup.num_tasks, *representation.shape, device=device)

    def loop() -> list[tuple[torch.Tensor | None, ...]]:
        return [torch.autograd.grad(representation, shared, grad_outputs=cotangent, retain_graph=True, allow_unused=True) for cotangent in cotangents]

    ways: dict[str, Pass] = {
        "loop": loop,
        "prototype": lambda: prototype_batched_products(representation, cotangents, shared),
        "torch.func": lambda: vmapped_products(representation, cotangents, shared),
    }
    check_against_loop(ways, setup_name)
    return ways


def check_against_loop(ways: dict[str, Pass], setup_name: str) -> None:
    """Raise unless every way's products are ``loop``'s, computed without TF32: cuDNN's default
    TF32 convolutions round the folded convolutions of ``torch.func`` otherwise than ``loop``'s."""
    convolutions = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        expected = [None if gradients[0] is None else torch.stack(gradients) for gradients in zip(*ways["loop"]())]
        for name in ("prototype", "torch.func"):
            for gradient, reference in zip(ways[name](), expected):
                same = gradient is None if reference is None else torch.allclose(gradient, reference, rtol=1e-3, atol=1e-5 * reference.abs().max().item())
                if not same:
                    raise AssertionError(f"{setup_name}: the {name} products differ from loop's")
    finally:
        torch.backends.cudnn.allow_tf32 = convolutions


def peak_bytes(run: Pass, device: torch.device) -> int | None:
    """CUDA: the peak allocation of one ``run`` above the allocation before it (``PeakMemory``).
    None on the CPU, whose peak resident size only a fresh process measures soundly."""
    if device.type != "cuda":
        return None
    memory = PeakMemory(device)
    memory.mark()
    run()
    return memory.peak_bytes()


def table(results: dict[str, dict]) -> str:
    """Median times as ratios to ``loop``; the peaks where measured (CUDA)."""
    ways = list(next(iter(results.values()))["seconds"])
    measured = any(peak is not None for result in results.values() for peak in result["peak_bytes"].values())
    columns = ["setup", "batch", "K", "loop (ms)", *(f"{name} / loop" for name in ways[1:])] + ([f"peak MiB ({', '.join(ways)})"] if measured else [])
    lines = ["| " + " | ".join(columns) + " |", "| --- " * len(columns) + "|"]
    for setup_name, result in results.items():
        medians = {name: statistics.median(seconds) for name, seconds in result["seconds"].items()}
        cells = [setup_name, str(result["batch_size"]), str(SETUPS[setup_name].num_tasks), f"{medians['loop'] * 1e3:.1f}"]
        cells += [f"{medians[name] / medians['loop']:.2f}" for name in ways[1:]]
        if measured:
            cells.append(", ".join(f"{result['peak_bytes'][name] / 2**20:.0f}" for name in ways))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_table(ways: dict[str, Pass], setup_name: str) -> str:
    """Per way, the calls and self seconds of ``PROFILED_OPERATORS`` in one pass (after one untimed)."""
    lines = [f"{setup_name}: calls and self seconds of one pass", "", "| way | " + " | ".join(PROFILED_OPERATORS) + " |", "| --- " * (len(PROFILED_OPERATORS) + 1) + "|"]
    for name, run in ways.items():
        run()
        with profiled() as profiler:
            run()
        events = {event.key: event for event in profiler.key_averages()}
        cells = [f"{events[op].count}, {events[op].self_cpu_time_total / 1e6:.2f}" if op in events else "-" for op in PROFILED_OPERATORS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to write every pass's time (JSON); required unless --profile")
    parser.add_argument("--profile", action="store_true", help="time nothing: profile one pass of each way and print its operators")
    parser.add_argument("--setups", nargs="+", default=["mlp-k40", "resnet18-k40"], choices=list(SETUPS))
    parser.add_argument("--batch-size", nargs="+", default=[], metavar="[SETUP=]SIZE", help="as bench_step.py's: of every setup, or of one (resnet18-k40=64)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    if args.out is None and not args.profile:
        parser.error("--out is required (or --profile)")
    sizes = batch_sizes(parser, args.batch_size)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile:
        print("\n\n".join(profile_table(passes(setup_name, sizes[setup_name], device), setup_name) for setup_name in args.setups))
        return
    results: dict[str, dict] = {}
    for setup_name in args.setups:
        ways = passes(setup_name, sizes[setup_name], device)
        seconds = interleaved_rounds(ways, args.warmup, args.rounds, device, setup_name)
        results[setup_name] = {"batch_size": sizes[setup_name], "seconds": seconds, "peak_bytes": {name: peak_bytes(run, device) for name, run in ways.items()}}
        del ways  # the graph, before the next setup's
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = {"device": device_name, "threads": args.threads, "torch": torch.__version__, "warmup": args.warmup, "rounds": args.rounds}
    args.out.write_text(json.dumps({**header, "results": results}, indent=1))
    print(f"{device_name}, {args.threads} threads, torch {torch.__version__}; median of {args.rounds} interleaved rounds after {args.warmup}\n")
    print(table(results))


if __name__ == "__main__":
    main()
