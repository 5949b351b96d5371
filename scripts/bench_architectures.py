"""Forward and backward of each mixture-of-experts architecture, side by side with LibMTL 1.1.5's
class of the same name, interleaved in one process.

    /tmp/peers/bin/python scripts/bench_architectures.py     # LibMTL installed apart, as bench_step.py says

Equal shapes: ``--features`` inputs (101: UCI Adult's encoded width), two tasks of two classes,
experts ``Linear(features, 16) → ReLU``, towers ``Linear(16, 8) → ReLU → Linear(8, 2)``, batch
``--batch-size``. MMoE and DSelect-k have 8 shared experts (DSelect-k selects 2, per example), CGC
one shared expert and one per task. Both sides get the same modules (LibMTL's experts are built by
the same factory, its towers are copies of ours), the same batch, and run in training mode. One
step is zero grad, forward, the sum of the tasks' cross-entropies, backward: the architecture's
cost alone, without a weighting method. Every variant runs once per round
(``bench_timing.interleaved_rounds``); the table gives the median over ``--rounds`` rounds after
``--warmup``, and ours / LibMTL's.

PLE is not compared: LibMTL's PLE works only on a ResNet encoder, whose layers it splits into the
levels, and has no shared gate (its shared experts run on each task's own input), so no model of
its shape is the paper's PLE.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from bench_peers import import_libmtl
from bench_timing import interleaved_rounds
from mtl.models import MLP, PLE, DSelectK, MLPHead, MMoE
from mtl.tasks import ClassificationTask

TASKS = [ClassificationTask("first", 2), ClassificationTask("second", 2)]
EXPERT_WIDTH, TOWER_WIDTH = 16, 8


def ours(name: str, features: int) -> nn.Module:
    expert, head = functools.partial(MLP, hidden=(EXPERT_WIDTH,)), functools.partial(MLPHead, hidden=(TOWER_WIDTH,))
    if name == "MMoE":
        return MMoE(expert, head, TASKS, (features,), num_experts=8)
    if name == "CGC":
        return PLE(expert, head, TASKS, (features,), levels=1, shared_experts=1, task_experts=1)
    return DSelectK(expert, head, TASKS, (features,), num_experts=8, k=2)


def theirs(name: str, features: int, towers: nn.ModuleDict) -> nn.Module:
    """LibMTL's class of the same name with experts of our shape and copies of our towers."""
    _, architecture = import_libmtl()
    options = {"MMoE": {"num_experts": [8]}, "CGC": {"num_experts": [1, 1, 1]}, "DSelect_k": {"num_experts": [8], "num_nonzeros": 2, "kgamma": 1.0}}[name]
    names = [task.name for task in TASKS]
    expert = functools.partial(MLP, (features,), hidden=(EXPERT_WIDTH,))
    return getattr(architecture, name)(names, expert, copy.deepcopy(towers), False, False, torch.device("cpu"), img_size=[features], **options)


def step(model: nn.Module, inputs: torch.Tensor, labels: dict[str, torch.Tensor]):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        outputs = model(inputs)
        sum(F.cross_entropy(outputs[name], target) for name, target in labels.items()).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=101)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, args.features, generator=generator)
    labels = {task.name: torch.randint(0, 2, (args.batch_size,), generator=generator) for task in TASKS}
    runs = {}
    for name in ("MMoE", "CGC", "DSelect_k"):
        torch.manual_seed(0)
        model = ours(name, args.features).train()
        runs[f"{name} mtl"] = step(model, inputs, labels)
        runs[f"{name} LibMTL"] = step(theirs(name, args.features, model.heads).train(), inputs, labels)
    timings = interleaved_rounds(runs, args.warmup, args.rounds, description="rounds")
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.features} features; median of {args.rounds} interleaved rounds after {args.warmup}\n")
    print("| architecture | mtl (ms) | LibMTL 1.1.5 (ms) | mtl / LibMTL |")
    print("| --- | --- | --- | --- |")
    for name in ("MMoE", "CGC", "DSelect_k"):
        mine, their = (1e3 * statistics.median(timings[f"{name} {side}"]) for side in ("mtl", "LibMTL"))
        print(f"| {name} | {mine:.3f} | {their:.3f} | {mine / their:.2f} |")


if __name__ == "__main__":
    main()
