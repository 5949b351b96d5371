"""Sweeps: a multirun through the real entry point with the joblib launcher, and the Optuna searches."""

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, UniformDistribution

from mtl.train import CONFIG_DIR
from tests.conftest import TINY
from tests.test_train import run_cli


def test_a_two_seed_multirun_with_the_joblib_launcher_is_reported(tmp_path):
    sweep = tmp_path / "sweep"
    limits = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY, *limits, f"hydra.sweep.dir={sweep}"]
    finished = run_cli("mtl.train", args, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in finished.stdout
    assert sorted(json.loads((sweep / str(job) / "results.json").read_text())["seed"] for job in (0, 1)) == [0, 1]

    reported = run_cli("mtl.report", [str(sweep), "--out", str(tmp_path / "report")], tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    table = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| ew | 2 | ")


def hydra_config(overrides: list[str]):
    """The composed config with its ``hydra`` node (the sweeper), as ``mtl-train -m`` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("search", "overrides", "parameter", "distribution"),
    [
        ("cagrad_c", [], "method.c", UniformDistribution(0.0, 0.9)),
        ("sam_rho", ["method=pcgrad"], "sam.rho", CategoricalDistribution([0.01, 0.02, 0.05, 0.1, 0.2, 0.5])),
    ],
)
def test_each_hparams_search_maximizes_the_validation_accuracy_over_a_key_of_its_config(search, overrides, parameter, distribution):
    cfg = hydra_config([f"hparams_search={search}", *overrides])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.optimized_metric == "val/mean/accuracy"
    searched, fixed = create_params_from_overrides([f"{key}={value}" for key, value in sweeper.params.items()])
    assert searched == {parameter: distribution} and not fixed
    assert OmegaConf.select(cfg, parameter) is not None  # the searched key exists in the composed config
    assert cfg.method._target_ == ("mtl.methods.cagrad.CAGrad" if search == "cagrad_c" else "mtl.methods.pcgrad.PCGrad")


def test_the_slurm_launcher_composes_with_the_ddp_trainer():
    cfg = hydra_config(["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.num_nodes=2"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.nodes == 2 and cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


def test_the_runs_of_a_multirun_share_a_wandb_group_named_after_the_sweep(tmp_path):
    cfg = hydra_config(["logger=wandb", f"hydra.sweep.dir={tmp_path / 'methods_study'}"])
    HydraConfig.instance().set_config(cfg)
    assert cfg.logger.wandb.group is None  # a single run
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    assert cfg.logger.wandb.group == "methods_study"


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["basic", "joblib"])
def test_each_job_of_a_multirun_logs_its_own_wandb_run(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    limits = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    args = ["-m", *launcher, "method=ew,mgda", "logger=wandb", *TINY, *limits, f"hydra.sweep.dir={sweep}"]
    finished = run_cli("mtl.train", args, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "wandb run already in progress" not in finished.stdout + finished.stderr
    targets = {"ew": b"mtl.methods.linear.LinearScalarization", "mgda": b"mtl.methods.mgda.MGDA"}
    ids = set()
    for job, method in enumerate(targets):
        (run,) = (sweep / str(job) / "wandb").glob("offline-run-*")
        ids.add(run.name.rsplit("-", 1)[1])
        # an offline run's records (config, name) are protobuf messages in run-<id>.wandb; their strings are plain bytes
        (records,) = run.glob("run-*.wandb")
        logged = records.read_bytes()
        assert targets[method] in logged and all(target not in logged for other, target in targets.items() if other != method)
        assert f"method={method},".encode() in logged  # the run's name: the job's overrides
        assert "HandleAbandonedError" not in (run / "logs" / "debug.log").read_text()
    assert len(ids) == 2
