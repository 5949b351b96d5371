"""Step time of each sharpness-aware mode as a ratio to ``sam=none``, F-MTL looped and batched.

For EW and MGDA, on two setups with random inputs and labels:

- ``multilenet``: Multi-LeNet (Sener & Koltun 2018; dropout in the encoder and the heads), K = 2
  tasks of 10 classes, MultiMNIST-shaped inputs ``1x36x36``;
- ``mlp``: an MLP 784-256-256 shared by K = 10 linear heads of 10 classes, inputs ``1x28x28``;

each with ``sam=none``, ``sam`` (rho 0.05), ``asam`` (rho 0.5, eta 0.01), ``gsam`` (rho_max 0.05,
alpha 0.2) and ``fmtl`` (the paper's defaults) with the K perturbed passes looped
(``sam.batched=false``) and batched (``sam.batched=true``, one vmapped call). Every run trains
``--warmup + --steps`` steps of a ``MultiTaskModule`` in a Lightning Trainer (Adam, lr 1e-3,
``jacobian.mode=auto``); a callback times every training step (``on_train_batch_start`` to
``on_train_batch_end``, CUDA synchronized). The table gives the median step after the warm-up as
a ratio to the median step of ``sam=none`` with the same setup and method in the same run.

    python scripts/bench_sam.py --out outputs/bench_sam.json              # CPU
    python scripts/bench_sam.py --device cuda --out outputs/bench_sam_gpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench_timing import StepTimer, timing_trainer
from mtl.engine import MultiTaskModule
from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.models import MLP, HardParameterSharing, LeNet, MLPHead
from mtl.sam import GSAM, SAM, FlatMTL
from mtl.tasks import ClassificationTask

LEARNING_RATE = 1e-3
SETUPS = {
    "multilenet": {"tasks": 2, "input_shape": (1, 36, 36), "encoder": LeNet, "head": functools.partial(MLPHead, hidden=(50,), dropout=0.5)},
    "mlp": {"tasks": 10, "input_shape": (1, 28, 28), "encoder": functools.partial(MLP, hidden=(256, 256)), "head": MLPHead},
}
METHODS = {"ew": LinearScalarization, "mgda": MGDA}
MODES: dict[str, Callable[[], object | None]] = {
    "none": lambda: None,
    "sam": lambda: SAM(rho=0.05),
    "asam": lambda: SAM(rho=0.5, adaptive=True, eta=0.01),
    "gsam": lambda: GSAM(max_learning_rate=LEARNING_RATE, rho_max=0.05, alpha=0.2),
    "fmtl-loop": lambda: FlatMTL(batched=False),
    "fmtl-batched": lambda: FlatMTL(batched=True),
}


def random_batches(setup: dict, batch_size: int, count: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        batch = {"input": torch.randn(batch_size, *setup["input_shape"], generator=generator)}
        batch.update({f"task{index}": torch.randint(0, 10, (batch_size,), generator=generator) for index in range(setup["tasks"])})
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def measure(setup_name: str, method: str, mode: str, args: argparse.Namespace) -> dict:
    """Median step seconds after the warm-up of one run, and whether F-MTL stayed batched."""
    setup = SETUPS[setup_name]
    tasks = [ClassificationTask(f"task{index}", 10) for index in range(setup["tasks"])]
    torch.manual_seed(0)
    model = HardParameterSharing(setup["encoder"], setup["head"], tasks, setup["input_shape"])
    sam = MODES[mode]()
    module = MultiTaskModule(model, tasks, METHODS[method](len(tasks)), optimizer=functools.partial(torch.optim.Adam, lr=LEARNING_RATE), sam=sam)
    device = torch.device(args.device)
    batches = random_batches(setup, args.batch_size, 4, device)
    steps = args.warmup + args.steps
    timer = StepTimer(device)
    trainer = timing_trainer(timer, steps, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    trainer.fit(module, train_dataloaders=DataLoader([batches[step % len(batches)] for step in range(steps)], batch_size=None))
    result = {"seconds": statistics.median(timer.seconds[args.warmup :])}
    if isinstance(sam, FlatMTL):
        result["batched"] = sam.batched
    return result


def table(results: dict, args: argparse.Namespace) -> str:
    modes = list(MODES)[1:]
    lines = [
        f"| setup | method | sam=none step (ms) | {' | '.join(modes)} |",
        f"| --- | --- | --- | {' | '.join('---' for _ in modes)} |",
    ]
    for setup in args.setups:
        for method in args.methods:
            runs = results[setup][method]
            base = runs["none"]["seconds"]
            ratios = [f"{runs[mode]['seconds'] / base:.2f}" + (" (fell back to the loop)" if mode == "fmtl-batched" and not runs[mode]["batched"] else "") for mode in modes]
            lines.append(f"| {setup} (K={SETUPS[setup]['tasks']}) | {method} | {base * 1e3:.1f} | {' | '.join(ratios)} |")
    lines.append(
        f"\nStep time as a ratio to sam=none (median of {args.steps} steps after {args.warmup} warm-up steps), "
        f"batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Example: python scripts/bench_sam.py --steps 30 --out outputs/bench_sam.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_sam.json"), help="JSON results; the Markdown table goes next to it (.md)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be positive and --warmup non-negative, got {args.steps} and {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    results = {setup: {method: {mode: measure(setup, method, mode, args) for mode in MODES} for method in args.methods} for setup in args.setups}
    markdown = table(results, args)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "args": {key: str(value) for key, value in vars(args).items()}, "torch": torch.__version__}, indent=2))
    args.out.with_suffix(".md").write_text(markdown + "\n")


if __name__ == "__main__":
    main()
