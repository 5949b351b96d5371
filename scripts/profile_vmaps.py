"""Where ``batched``'s encoder pass spends its time under each vmap: ``torch.profiler`` around one
pass of ``loop``, ``prototype`` and ``torch.func`` (``bench_vmap.passes``, after one untimed pass
each), with the calls and self time of the operators that tell the vmaps apart.

The prototype runs a convolution's backward once per task and stacks the results (``K + 1`` calls
of ``aten::convolution_backward`` per convolution, and ``aten::cat``); ``torch.func`` folds the
tasks into the convolution (a few calls per convolution) at the cost of copies (``aten::copy_``)
and an elementwise BatchNorm backward (``aten::mul``).

    python scripts/profile_vmaps.py --setup resnet18-k40
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from bench_setups import SETUPS
from bench_vmap import passes

OPERATORS = ("aten::convolution_backward", "aten::native_batch_norm_backward", "aten::cat", "aten::copy_", "aten::mul")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="resnet18-k40", choices=list(SETUPS))
    parser.add_argument("--batch-size", type=int, help="default: the setup's own")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = SETUPS[args.setup]
    print(f"{args.setup}, batch {args.batch_size or setup.batch_size}, K={setup.num_tasks}, {args.threads} threads; calls and self seconds of one pass\n")
    print("| way | " + " | ".join(OPERATORS) + " |")
    print("| --- " * (len(OPERATORS) + 1) + "|")
    for name, run in passes(args.setup, args.batch_size or setup.batch_size, torch.device("cpu")).items():
        run()
        with profile() as profiler:
            run()
        events = {event.key: event for event in profiler.key_averages()}
        cells = [f"{events[op].count}, {events[op].self_cpu_time_total / 1e6:.2f}" if op in events else "-" for op in OPERATORS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
