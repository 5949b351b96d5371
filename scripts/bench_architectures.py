"""Forward and backward of each architecture, side by side with LibMTL 1.1.5's class of the same
name, interleaved in one process.

    /tmp/peers/bin/python scripts/bench_architectures.py     # LibMTL installed apart, as bench_step.py says

Equal shapes: ``--features`` inputs (101: UCI Adult's encoded width), two tasks of two classes,
experts ``Linear(features, 16) → ReLU``, towers ``Linear(16, 8) → ReLU → Linear(8, 2)``, batch
``--batch-size``. MMoE and DSelect-k have 8 shared experts (DSelect-k selects 2, per example), CGC
one shared expert and one per task. Both sides get the same modules (LibMTL's experts are built by
the same factory, its towers are copies of ours), the same batch, and run in training mode. One
step is zero grad, forward, the sum of the tasks' cross-entropies, backward: the architecture's
cost alone, without a weighting method. Every variant runs once per round
(``bench_timing.interleaved_rounds``), the tabular and the ResNet-18 families in rounds of their
own (``--rounds`` after ``--warmup``; ``--image-rounds`` after ``--image-warmup``); the table gives
the medians, and ours / LibMTL's.

MTAN and cross-stitch run on a ResNet-18 (``--image-size`` RGB images, batch
``--image-batch-size``; LibMTL cuts a ResNet by torchvision's attribute names, which
``LibMTLResNet`` gives our encoder's modules), with linear heads after the global pooling.
LibMTL's MTAN is given our modules: the stage encoder, a task's own attention masks (its list
repeats one module for every task) and the paper's 3x3 shared block ``f^j`` (its residual block
needs ``LibMTL.model.resnet``, which imports torchvision's removed ``models.utils``); the script
first checks that both compute the same outputs. LibMTL's cross-stitch mixes after the first three
stages with one weight per stage and source task (every task reads the same mixture), ours after
every stage with a ``K × K`` unit: the same ResNets, a few more multiply-adds on ours.

PLE is not compared: LibMTL's PLE works only on a ResNet encoder, whose layers it splits into the
levels, and has no shared gate (its shared experts run on each task's own input), so no model of
its shape is the paper's PLE.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from bench_peers import import_libmtl
from bench_timing import interleaved_rounds
from mtl.models import MLP, MTAN, PLE, CrossStitch, DSelectK, MLPHead, MMoE, ResNet
from mtl.models.mtan import shared_block
from mtl.tasks import ClassificationTask

TASKS = [ClassificationTask("first", 2), ClassificationTask("second", 2)]
EXPERT_WIDTH, TOWER_WIDTH = 16, 8
RESNET18 = functools.partial(ResNet, widths=(64, 128, 256, 512), blocks=2, stem="imagenet")
TABULAR, CONVOLUTIONAL = ("MMoE", "CGC", "DSelect_k"), ("MTAN", "Cross_stitch")


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


class LibMTLResNet(nn.Module):
    """Our ResNet-18's modules under torchvision's names, by which LibMTL cuts a ResNet."""

    feature_dim = 512

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool, *blocks = resnet.layers[: resnet.feature_ends[-1]]
        for stage in range(4):
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks[2 * stage : 2 * stage + 2]))


def ours_convolutional(name: str, size: int) -> nn.Module:
    architecture = MTAN if name == "MTAN" else CrossStitch
    return architecture(RESNET18, MLPHead, TASKS, (3, size, size))


def theirs_convolutional(name: str, model: nn.Module) -> nn.Module:
    """LibMTL's class of the same name on copies of ``model``'s modules; its decoders pool, then
    apply copies of our heads."""
    _, architecture = import_libmtl()
    names = [task.name for task in TASKS]
    decoders = nn.ModuleDict({task: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(model.heads[task])) for task in names})
    if name == "Cross_stitch":
        encoders = iter(model.encoders.values())
        return architecture.Cross_stitch(names, lambda: LibMTLResNet(copy.deepcopy(next(encoders))), decoders, False, False, torch.device("cpu"))
    mtan_module = importlib.import_module("LibMTL.architecture.MTAN")
    mtan_module._transform_resnet_MTAN._conv_layer = lambda self, in_channels, out_channels: shared_block(in_channels, out_channels)
    theirs = architecture.MTAN(names, lambda: LibMTLResNet(copy.deepcopy(model.encoder)), decoders, False, False, torch.device("cpu"))
    theirs.encoder.encoder_block_att = copy.deepcopy(model.blocks)
    for stage in range(4):
        theirs.encoder.encoder_att[str(stage)] = nn.ModuleList(copy.deepcopy(model.attention[task][stage]) for task in names)
    return theirs


def check_same_outputs(mine: nn.Module, theirs: nn.Module, inputs: torch.Tensor) -> None:
    """Both models in eval mode give the same outputs on ``inputs`` (to float rounding)."""
    mine.eval(), theirs.eval()
    with torch.no_grad():
        ours_out, their_out = mine(inputs), theirs(inputs)
    mine.train(), theirs.train()
    for task, output in ours_out.items():
        if not torch.allclose(output, their_out[task], atol=1e-4):
            raise AssertionError(f"MTAN and LibMTL's MTAN differ on task {task} by {(output - their_out[task]).abs().max():.2e}")


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
    parser.add_argument("--image-size", type=int, default=64, help="height and width of the ResNet-18's inputs (a multiple of 32)")
    parser.add_argument("--image-batch-size", type=int, default=16)
    parser.add_argument("--image-warmup", type=int, default=5)
    parser.add_argument("--image-rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--architectures", nargs="+", default=[*TABULAR, *CONVOLUTIONAL], choices=[*TABULAR, *CONVOLUTIONAL])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, args.features, generator=generator)
    labels = {task.name: torch.randint(0, 2, (args.batch_size,), generator=generator) for task in TASKS}
    images = torch.randn(args.image_batch_size, 3, args.image_size, args.image_size, generator=generator)
    image_labels = {task.name: torch.randint(0, 2, (args.image_batch_size,), generator=generator) for task in TASKS}
    tabular, convolutional = {}, {}
    for name in (name for name in TABULAR if name in args.architectures):
        torch.manual_seed(0)
        model = ours(name, args.features).train()
        tabular[f"{name} mtl"] = step(model, inputs, labels)
        tabular[f"{name} LibMTL"] = step(theirs(name, args.features, model.heads).train(), inputs, labels)
    for name in (name for name in CONVOLUTIONAL if name in args.architectures):
        torch.manual_seed(0)
        model = ours_convolutional(name, args.image_size).train()
        peer = theirs_convolutional(name, model).train()
        if name == "MTAN":
            check_same_outputs(model, peer, images)
        convolutional[f"{name} mtl"] = step(model, images, image_labels)
        convolutional[f"{name} LibMTL"] = step(peer, images, image_labels)
    # each family interleaved apart: a millisecond step timed right after a ResNet's pays for its cold caches
    timings = interleaved_rounds(tabular, args.warmup, args.rounds, description="tabular rounds") if tabular else {}
    if convolutional:
        timings |= interleaved_rounds(convolutional, args.image_warmup, args.image_rounds, description="ResNet-18 rounds")
    print(
        f"torch {torch.__version__}, {args.threads} threads; "
        f"tabular: batch {args.batch_size}, {args.features} features, median of {args.rounds} interleaved rounds after {args.warmup}; "
        f"ResNet-18: batch {args.image_batch_size} of 3x{args.image_size}x{args.image_size}, median of {args.image_rounds} rounds after {args.image_warmup}\n"
    )
    print("| architecture | mtl (ms) | LibMTL 1.1.5 (ms) | mtl / LibMTL |")
    print("| --- | --- | --- | --- |")
    for name in args.architectures:
        mine, their = (1e3 * statistics.median(timings[f"{name} {side}"]) for side in ("mtl", "LibMTL"))
        print(f"| {name} | {mine:.3f} | {their:.3f} | {mine / their:.2f} |")


if __name__ == "__main__":
    main()
