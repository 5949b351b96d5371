"""``mtl-eval ckpt_path=...``: evaluate a checkpoint on the test split of the data it was trained on.

The run's resolved configuration travels inside every checkpoint, so the model, tasks and data are
rebuilt from the checkpoint alone; ``data`` overrides change the data config, e.g. where the files
are on this machine: ``mtl-eval ckpt_path=run.ckpt +data.root=/datasets/mnist``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mtl.build import build_datamodule_and_module
from mtl.checkpoints import WEIGHTS_ONLY, CheckpointError, read_checkpoint
from mtl.console import print_results_table
from mtl.run_files import nest_metrics, tested_metrics, write_json
from mtl.train import CONFIG_DIR

log = logging.getLogger(__name__)


def training_config(ckpt_path: str | Path) -> DictConfig:
    """The resolved configuration of the run that wrote ``ckpt_path`` (read as data, see ``mtl.checkpoints``)."""
    return OmegaConf.create(read_checkpoint(ckpt_path)["hyper_parameters"]["config"])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    run_cfg = training_config(cfg.ckpt_path)
    run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    datamodule, module = build_datamodule_and_module(run_cfg)
    trainer = instantiate(cfg.trainer, logger=False)
    test_metrics = tested_metrics(trainer.test(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, verbose=False, weights_only=WEIGHTS_ONLY))
    results = {"test": nest_metrics(test_metrics, "test"), "checkpoint": str(cfg.ckpt_path)}
    write_json(Path(cfg.paths.output_dir) / "results.json", results)
    print_results_table(f"test metrics of {cfg.ckpt_path}", results["test"])
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except CheckpointError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
