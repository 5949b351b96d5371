"""``mtl-train``: compose the config, build data, model and method, fit, test, write ``results.json``.

    mtl-train                                   # the default experiment (MultiDigits, MLP, EW)
    mtl-train data=multimnist model=lenet trainer.max_epochs=5 seed=3
    mtl-train experiment=multimnist
    mtl-train ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt   # resume
    mtl-train method=mgda init_from=outputs/train/runs/<run>/checkpoints/last.ckpt   # its weights, a new run
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from mtl.build import build_datamodule_and_module, build_trainer, logger_runs
from mtl.callbacks import LastEpochsMean
from mtl.checkpoints import WEIGHTS_ONLY, CheckpointError, check_resumable, load_model_weights, read_checkpoint
from mtl.console import print_config_tree, print_results_table
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.engine.nonfinite import NonFiniteStep
from mtl.metrics.delta_m import delta_m
from mtl.run_files import git_state, nest_metrics, tested_metrics, write_json, write_run_files

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns what it writes to ``results.json``."""
    print_config_tree(cfg)
    initial = starting_checkpoint(cfg)
    if cfg.get("retain_freed_host_memory", True):
        retain_freed_host_memory()
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, module = build_datamodule_and_module(cfg)
    if initial is not None:
        load_model_weights(module.model, initial, cfg.init_from)
    higher_is_better, baselines = module.higher_is_better, module.baselines  # checked by the module
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        write_run_files(output_dir, cfg)
    with logger_runs(trainer.loggers):
        results = fit_and_test(cfg, trainer, datamodule, module)
    results["higher_is_better"] = higher_is_better
    if baselines is not None:
        stages = [stage for stage in ("validation", "test", "last_epochs") if stage in results]
        results["delta_m"] = {stage: delta_m(results[stage], baselines, higher_is_better) for stage in stages}
    if trainer.is_global_zero:
        write_json(output_dir / "results.json", results)
        print_results_table("test metrics", results["test"])
        log.info("Results written to %s", output_dir / "results.json")
    return results


def starting_checkpoint(cfg: DictConfig) -> dict[str, Any] | None:
    """Check what the run starts from before anything is built: a ``ckpt_path`` to resume must be
    one of ours, written by a run with the same ``RUN_DEFINING`` choices; an ``init_from`` must be
    one of ours, and is returned for its model weights."""
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} resumes a run and init_from={cfg.init_from} starts a new one from its weights; give one of them")
    if cfg.get("ckpt_path"):
        check_resumable(read_checkpoint(cfg.ckpt_path), OmegaConf.to_container(cfg, resolve=True), cfg.ckpt_path)
    return read_checkpoint(cfg.init_from, "init_from") if cfg.get("init_from") else None


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, module: pl.LightningModule) -> dict[str, Any]:
    """Fit (or resume), then test the best checkpoint; what ``results.json`` says of the run."""
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=WEIGHTS_ONLY)
    fit_seconds = time.perf_counter() - started
    last_validation = nest_metrics({key: float(value) for key, value in trainer.callback_metrics.items()}, "val")
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best is None:
        log.warning("No checkpoint was saved; testing the weights at the end of training")
    test_metrics = tested_metrics(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=WEIGHTS_ONLY))
    averaged = [callback.mean() for callback in trainer.callbacks if isinstance(callback, LastEpochsMean)]
    return {
        "test": nest_metrics(test_metrics, "test"),
        "validation": last_validation,
        # the mean of the last epochs' validation metrics (callbacks=last_epochs_mean)
        **({"last_epochs": nest_metrics(averaged[0], "val")} if averaged else {}),
        "checkpoint": best,
        "epochs": trainer.current_epoch,
        "fit_seconds": fit_seconds,
        "global_step": trainer.global_step,
        "seed": cfg.seed,
        "method": cfg.method.get("_target_"),
        # the task a single-task run (method=stl) trained: mtl-report's measured Δm% baseline
        "single_task": cfg.method.get("task"),
        "git": git_state(),
    }


def metric_value(results: dict[str, Any], name: str | None) -> float | None:
    """The value of ``name`` in ``results``, for Hydra sweepers: ``val/left/accuracy`` style, or
    ``val/delta_m`` / ``test/delta_m`` (which need ``baselines``)."""
    if not name:
        return None
    stage, *path = name.split("/")
    stage = {"val": "validation"}.get(stage, stage)
    if path == ["delta_m"]:
        if "delta_m" not in results:
            raise ValueError(f"optimized_metric={name} needs the single-task baselines in the config: baselines={{task: {{metric: value}}}}")
        return results["delta_m"][stage]
    task, metric = path
    return results[stage][task][metric]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except (CheckpointError, NonFiniteStep) as error:  # the user's to act on: one line, no traceback
        log.error("The run failed: %s", error)
        raise SystemExit(str(error)) from None
    except Exception as error:
        # one line into the run's own log, where mtl-report finds why a run of a sweep failed; Hydra
        # prints the traceback
        log.error("The run failed: %s: %s", type(error).__name__, error)
        raise
    return metric_value(results, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
