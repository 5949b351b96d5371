"""Step time and communication of gradient methods on several CPU processes (gloo).

For each method and ``distributed.sync`` mode, the default experiment (MultiDigits, MLP 256-256,
two tasks) trains ``--steps`` steps through the real configs and a Lightning Trainer, on one
process and on ``--processes`` processes holding ``1/processes`` of each global batch. A callback
times every training step (``on_train_batch_start`` to ``on_train_batch_end``); the table gives
the median after ``--warmup`` steps as a ratio to EW's median with the same number of processes,
and the numbers each process sends per step:

- EW (a loss weighting): DDP's own all-reduce of the gradients, ``P + H``;
- ``exact``: ``[Jacobian | head gradients | losses | batch size]``, ``K·P + H + K + 1``;
- ``local``: ``[direction | head gradients | batch size]``, ``P + H + 1``;

with ``P`` shared and ``H`` head parameters and ``K`` tasks. Every process uses one thread.

    python scripts/bench_distributed.py --out outputs/bench_distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from bench_timing import StepTimer, timing_trainer
from mtl.build import build_datamodule_and_module
from mtl.methods.base import GradientAggregator
from mtl.train import CONFIG_DIR

RUNS = [("ew", "exact"), ("mgda", "exact"), ("mgda", "local"), ("pcgrad", "exact"), ("pcgrad", "local"), ("upgrad", "exact"), ("upgrad", "local")]


def measure(method: str, sync: str, processes: int, args: argparse.Namespace, root: Path) -> dict:
    """Median step seconds and the numbers sent per step by one process, for one run."""
    GlobalHydra.instance().clear()
    overrides = [
        f"method={method}",
        f"distributed.sync={sync}",
        f"data.batch_size={args.batch_size // processes}",
        "data.pairs_per_digit={train: 20, val: 1, test: 1}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / f"{method}-{sync}-{processes}")
        cfg.paths.data_dir = str(root / "data")
        del cfg.hydra
    pl.seed_everything(cfg.seed)
    datamodule, module = build_datamodule_and_module(cfg)
    timer = StepTimer()
    trainer = timing_trainer(timer, args.warmup + args.steps, accelerator="cpu", devices=processes, strategy="ddp" if processes > 1 else "auto")
    trainer.fit(module, datamodule=datamodule)
    shared = sum(p.numel() for p in module.model.shared_parameters())
    heads = sum(p.numel() for task in module.tasks for p in module.model.task_parameters(task.name))
    tasks = len(module.tasks)
    if not isinstance(module.method, GradientAggregator):
        sent = shared + heads
    elif sync == "exact":
        sent = tasks * shared + heads + tasks + 1
    else:
        sent = shared + heads + 1
    return {"seconds": statistics.median(timer.seconds[args.warmup :]), "numbers_sent": sent if processes > 1 else 0}


def process(rank: int, port: int, args: argparse.Namespace, root: Path) -> None:
    """One of the processes of the multi-process runs; rank 0 writes the measurements."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(args.processes), NODE_RANK="0", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results = {f"{method}/{sync}": measure(method, sync, args.processes, args, root) for method, sync in RUNS}
    if rank == 0:
        (root / "distributed.json").write_text(json.dumps(results))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def table(single: dict, distributed: dict, processes: int) -> str:
    lines = [
        f"| method | sync | 1 process: step / EW | {processes} processes: step / EW | numbers sent per step | bytes (float32) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in single:
        method, sync = key.split("/")
        one = single[key]["seconds"] / single["ew/exact"]["seconds"]
        many = distributed[key]["seconds"] / distributed["ew/exact"]["seconds"]
        sent = distributed[key]["numbers_sent"]
        lines.append(f"| {method} | {'DDP' if method == 'ew' else sync} | {one:.2f} | {many:.2f} | {sent:,} | {4 * sent:,} |")
    lines.append(f"\nEW step: {single['ew/exact']['seconds'] * 1e3:.1f} ms on 1 process, {distributed['ew/exact']['seconds'] * 1e3:.1f} ms on {processes}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_distributed.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        torch.set_num_threads(1)
        single = {f"{method}/{sync}": measure(method, sync, 1, args, root) for method, sync in RUNS}
        mp.spawn(process, args=(free_port(), args, root), nprocs=args.processes, join=True)
        distributed = json.loads((root / "distributed.json").read_text())
    markdown = table(single, distributed, args.processes)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"single": single, "distributed": distributed, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    args.out.with_suffix(".md").write_text(markdown + "\n")


if __name__ == "__main__":
    main()
