"""Exact gradient aggregation across processes: two gloo processes on half batches take the
same steps as one process on the whole batch (``distributed.sync=exact``), and ``local`` does not."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

from mtl.build import build_datamodule_and_module
from mtl.engine.checks import check_sharpness, check_strategy
from mtl.engine.distributed import GradientSync
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.sam import GSAM
from mtl.train import train
from tests.conftest import TINY, compose_config
from tests.office_fixtures import write_office
from tests.test_train import run_cli

STEPS = 3
GLOBAL_BATCH = 64
PROCESSES = 2

OFFICE = [
    "experiment=office31_libmtl",
    "data.root={office31}",
    "data.splits={office31}/data_txt",
    "data.image_size=[16,16]",
    "model.encoder.widths=[4,8]",
    "model.encoder.features=8",
    "model.encoder.dropout=0",
    "optimizer.lr=0.1",
]
"""Office-31's fixture, a batch per task (``{office31}``: its root), the batch size each task's;
without dropout, whose masks depend on how a batch is split across processes, and at a learning
rate at which a wrong step shows (the experiment's is 1e-4)."""

CASES = {
    "ew": ["method=ew"],
    "uw": ["method=uw"],
    "stch": ["method=stch"],
    "gradnorm": ["method=gradnorm"],
    "famo": ["method=famo"],
    "mgda": ["method=mgda"],
    "pcgrad": ["method=pcgrad"],
    "cagrad": ["method=cagrad"],
    "nash_mtl": ["method=nash_mtl"],
    "upgrad": ["method=upgrad"],
    "fmtl_mgda": ["method=mgda", "sam=fmtl", "sam.rho=0.05"],
    "mmoe_mgda": ["model=mmoe", "method=mgda"],
    "ple_pcgrad": ["model=ple", "method=pcgrad"],
    "dselect_k_ew": ["model=dselect_k", "method=ew"],
    "cross_stitch_pcgrad": ["model=cross_stitch", "method=pcgrad"],
    "mmoe_fmtl": ["model=mmoe", "method=ew", "sam=fmtl", "sam.rho=0.05"],
    "mtan_mgda": ["model=mtan", "model.encoder.widths=[4,8]", "method=mgda"],
    "sam_pcgrad": ["method=pcgrad", "sam=sam"],
    "gsam_uw": ["method=uw", "sam=gsam"],
    "office_mgda": [*OFFICE, "method=mgda"],
    "office_fmtl_pcgrad": [*OFFICE, "method=pcgrad", "sam=fmtl", "sam.rho=0.05"],
    "mgda_local": ["method=mgda", "distributed.sync=local"],
    "sam_pcgrad_own": ["method=pcgrad", "sam=sam", "sam.sync=local"],
    "sam_ew_own": ["method=ew", "sam=sam", "sam.sync=local"],
}
"""Runs compared between two processes and one; SGD so that tiny float differences stay tiny.
The mixture-of-experts models take the engine's general path (no single representation), the
Office cases its graphs of one task each.
STCH weights the losses nonlinearly, GradNorm needs gradient norms and FAMO the losses after the
step: each sees the global values only if they are shared."""

WITHOUT_BATCH_STATISTICS = {"mtan_mgda", "office_mgda", "office_fmtl_pcgrad"}
"""Cases whose BatchNorm layers keep only their affine part: under DDP each process normalizes over
its own samples unless ``trainer.sync_batchnorm`` (GPUs only), so what these cases check is the
engine's exact path through the architecture's graph."""


def affine_part(layer: torch.nn.modules.batchnorm._BatchNorm):
    """``layer``'s per-channel scale and shift alone, which treat each sample on its own."""

    def forward(features: torch.Tensor) -> torch.Tensor:
        shape = (-1, *[1] * (features.dim() - 2))
        return features * layer.weight.view(shape) + layer.bias.view(shape)

    return forward


def train_steps(overrides: list[str], root: Path, name: str, devices: int) -> dict[str, torch.Tensor]:
    """The model's parameters after ``STEPS`` steps of the tiny default experiment on ``devices``
    CPU processes, each holding ``GLOBAL_BATCH / devices`` samples of every global batch. A case
    that names its experiment brings its own data in place of TINY's."""
    own_data = any(override.startswith("experiment=") for override in overrides)
    tiny = [override for override in TINY if not (own_data and override.startswith("data."))]
    cfg = compose_config([*tiny, "optimizer=sgd", f"data.batch_size={GLOBAL_BATCH // devices}", *overrides], root / f"{name}-{devices}")
    pl.seed_everything(cfg.seed)
    datamodule, module = build_datamodule_and_module(cfg)
    if name in WITHOUT_BATCH_STATISTICS:
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.forward = affine_part(layer)  # on the layer objects, wherever the model holds them
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return {name: parameter.detach().clone() for name, parameter in module.model.named_parameters()}


def process(rank: int, port: int, root: Path, cases: dict[str, list[str]]) -> None:
    """One of the ``PROCESSES`` processes, launched as torchrun would: Lightning finds the rank in
    the environment. Each saves each case's parameters."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(PROCESSES), NODE_RANK="0", RANK=str(rank), LOCAL_RANK=str(rank))
    for name, overrides in cases.items():
        parameters = train_steps(overrides, root, name, PROCESSES)
        torch.save(parameters, root / (f"{name}.pt" if rank == 0 else f"{name}.rank{rank}.pt"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{case: (parameters on two processes, parameters on one)}``."""
    root = tmp_path_factory.mktemp("distributed")
    office31, _ = write_office(root / "office31")
    cases = {name: [override.replace("{office31}", str(office31)) for override in overrides] for name, overrides in CASES.items()}
    single = {name: train_steps(overrides, root, name, 1) for name, overrides in cases.items()}
    mp.spawn(process, args=(free_port(), root, cases), nprocs=PROCESSES, join=True)
    return {name: (torch.load(root / f"{name}.pt"), single[name], torch.load(root / f"{name}.rank1.pt")) for name in cases}


def largest_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.mark.parametrize("case", [name for name in CASES if not name.endswith(("_local", "_own"))])
def test_exact_sync_on_two_processes_takes_the_single_process_steps(runs, case):
    distributed, single, other_rank = runs[case]
    assert largest_difference(distributed, single) < 1e-6
    assert largest_difference(distributed, other_rank) == 0


def test_local_sync_differs_from_the_single_process_mgda(runs):
    distributed, single, _ = runs["mgda_local"]
    exact, _, _ = runs["mgda"]
    # Averaging two half-batch MGDA directions is not MGDA of the whole batch.
    assert largest_difference(distributed, single) > 100 * max(largest_difference(exact, single), 1e-7)


@pytest.mark.parametrize("case", ["sam_pcgrad_own", "sam_ew_own"])
def test_sam_along_each_process_own_gradient_keeps_the_processes_in_step(runs, case):
    distributed, single, other_rank = runs[case]
    # the perturbation is each process's own, the update at the perturbed weights is shared
    assert largest_difference(distributed, other_rank) == 0
    assert largest_difference(distributed, single) > 1e-5


def test_sam_sync_local_is_refused_where_the_update_needs_the_clean_gradient():
    with pytest.raises(ValueError, match=r"sam.sync=local perturbs along each process's own gradient, but GSAM's update"):
        check_sharpness(GSAM(max_learning_rate=0.1), None, MGDA(2), "local")
    with pytest.raises(ValueError, match=r"unknown sam.sync 'mine'; valid choices: \['global', 'local'\]"):
        check_sharpness(None, None, MGDA(2), "mine")


def test_one_process_averages_nothing():
    tensor = torch.arange(4.0)
    sync = GradientSync()
    assert not sync.active
    assert sync.average([tensor], weight=3)[0] is tensor
    assert sync.global_values(tensor, weight=3) is tensor


def test_an_unknown_sync_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown distributed.sync 'global'; valid choices: \['exact', 'local'\]"):
        GradientSync("global")


def key_tree(value):
    """The nested keys of a results.json, values left out."""
    return {key: key_tree(item) for key, item in value.items()} if isinstance(value, dict) else None


def test_mtl_train_on_two_cpu_processes_matches_the_single_process_run(tmp_path):
    # TINY's batch of 64 on one process; 32 per process on two: the same global batches. SGD and a
    # fixed engine mode: Adam would magnify the float rounding of two timed `auto` choices.
    common = [*TINY, "method=mgda", "optimizer=sgd", "jacobian.mode=loop"]
    single = train(compose_config(common, tmp_path / "single"))
    run_dir = tmp_path / "ddp"
    overrides = [*common, "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=32", f"hydra.run.dir={run_dir}"]
    finished = run_cli("mtl.train", overrides, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    distributed = json.loads((run_dir / "results.json").read_text())
    assert key_tree(distributed) == key_tree(single)
    for task, metrics in single["test"].items():
        assert distributed["test"][task] == pytest.approx(metrics, abs=1e-4)
    assert distributed["global_step"] == single["global_step"]


def test_a_strategy_that_cannot_run_an_aggregator_is_refused_with_what_works():
    with pytest.raises(ValueError, match=r"MGDA writes the gradients itself, which strategy FSDPStrategy does not support; use a single device or trainer=ddp"):
        check_strategy(FSDPStrategy(), MGDA(2), None, JacobianEngine(), GradientSync())
    check_strategy(FSDPStrategy(), LinearScalarization(2), None, JacobianEngine(), GradientSync())  # a loss weighting is fine


def test_rep_mode_cannot_be_exact_on_several_processes():
    environment = LightningEnvironment()
    environment.set_world_size(2)
    two_processes = DDPStrategy(cluster_environment=environment)
    with pytest.raises(ValueError, match=r"jacobian.mode=rep .* cannot be exact on 2 processes; use distributed.sync=local"):
        check_strategy(two_processes, MGDA(2), None, JacobianEngine("rep"), GradientSync())
    check_strategy(two_processes, MGDA(2), None, JacobianEngine("rep"), GradientSync("local"))
