"""Shared fixtures: composing the real configs with tiny settings, and the shared MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mtl.train import CONFIG_DIR

SHARED_MNIST = Path(os.environ.get("MTL_SHARED_MNIST", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
SHARED_ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult"

TINY = [
    "data.pairs_per_digit={train: 2, val: 1, test: 1}",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
    "trainer.enable_progress_bar=false",
]
"""Overrides that shrink the default experiment to a few seconds."""


@pytest.fixture
def shared_mnist() -> Path:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the shared MNIST test files are not at {SHARED_MNIST} (set MTL_SHARED_MNIST)")
    return SHARED_MNIST


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The real config with ``overrides``, as ``mtl-train`` would see it, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(output_dir.parent / "data")
        del cfg.hydra
    return cfg


@pytest.fixture
def tiny_config(tmp_path: Path):
    """``make(overrides, name)``: the tiny default experiment plus ``overrides``, in ``tmp_path/name``."""

    def make(overrides: list[str] = (), name: str = "run") -> DictConfig:
        return compose_config([*TINY, *overrides], tmp_path / name)

    return make
