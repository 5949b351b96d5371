"""Every conf/sam option composes with the real config and trains; F-MTL runs a whole experiment."""

import math
from pathlib import Path

import pytest

from mtl.train import CONFIG_DIR, train

SAM_OPTIONS = sorted(path.stem for path in (Path(CONFIG_DIR) / "sam").glob("*.yaml"))
FEW_BATCHES = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def finite_results(results):
    return all(math.isfinite(values[name]) for values in results["test"].values() for name in ("loss", "accuracy"))


def test_the_options_include_none_and_every_method():
    assert {"none", "sam", "asam", "gsam", "fmtl"} <= set(SAM_OPTIONS)


@pytest.mark.parametrize("option", SAM_OPTIONS)
def test_every_sam_option_composes_and_trains_a_few_batches(option, tiny_config):
    cfg = tiny_config([f"sam={option}", *FEW_BATCHES])
    results = train(cfg)
    assert results["global_step"] == 2 and finite_results(results)


def test_sam_none_means_no_sharpness_object(tiny_config):
    from mtl.build import build_datamodule_and_module

    _, module = build_datamodule_and_module(tiny_config(["sam=none"]))
    assert module.step.sharpness is None


@pytest.mark.parametrize("method", ["ew", "uw", "mgda"])
def test_an_fmtl_run_with_a_loss_weighting_or_an_aggregator_finishes_with_finite_losses(method, tiny_config):
    results = train(tiny_config(["sam=fmtl", f"method={method}", "+trainer.limit_train_batches=3"]))
    assert results["epochs"] == 1 and results["global_step"] == 3 and finite_results(results)
