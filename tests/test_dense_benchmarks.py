"""The NYUv2 and CityScapes protocols end to end on fixtures in the release's format: a few steps
with a loss weighting, a gradient aggregator and F-MTL, Δm% against the published single-task
numbers, and the split (hard-sharing) SegNet through the representation mode."""

import math

import pytest

from mtl.train import train
from tests.conftest import compose_config
from tests.dense_fixtures import write_cityscapes, write_nyuv2

SMALL = "[4,4,8,8,8]"
FAST = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return {"nyuv2": write_nyuv2(tmp_path_factory.mktemp("nyuv2")), "cityscapes": write_cityscapes(tmp_path_factory.mktemp("cityscapes"))}


def run(roots, tmp_path, benchmark, *options):
    overrides = [f"experiment={benchmark}_segnet_mtan", f"data.root={roots[benchmark]}", *FAST, *options]
    overrides.append(f"model.encoder.filters={SMALL}" if "model=segnet" in options else f"model.filters={SMALL}")
    return train(compose_config(overrides, tmp_path / "run"))


@pytest.mark.parametrize("options", [["method=ew"], ["method=mgda"], ["method=ew", "sam=fmtl"]])
def test_a_few_nyuv2_steps_of_segnet_mtan_with_a_weighting_an_aggregator_and_fmtl(roots, tmp_path, options):
    results = run(roots, tmp_path, "nyuv2", *options)
    assert results["global_step"] == 2  # four training scenes, batches of two
    assert set(results["test"]) == {"segmentation", "depth", "normal", "mean"}
    assert all(math.isfinite(value) for metrics in results["test"].values() for value in metrics.values())
    assert math.isfinite(results["delta_m"]["test"])  # against baselines=nyuv2_stl, every metric present
    assert results["last_epochs"] == results["validation"]  # one epoch trained: its mean is itself


def test_cityscapes_segnet_mtan_with_nash_mtl(roots, tmp_path):
    results = run(roots, tmp_path, "cityscapes", "method=nash_mtl", "data.batch_size=2")
    assert set(results["test"]) == {"segmentation", "depth", "mean"} and math.isfinite(results["delta_m"]["test"])


def test_the_split_segnet_takes_the_representation_mode(roots, tmp_path):
    results = run(roots, tmp_path, "nyuv2", "model=segnet", "method=mgda", "jacobian.mode=rep")
    assert all(math.isfinite(value) for metrics in results["test"].values() for value in metrics.values())


def test_a_single_task_baseline_of_the_protocol_trains_one_task(roots, tmp_path):
    results = run(roots, tmp_path, "nyuv2", "method=stl", "method.task=depth")
    assert results["single_task"] == "depth" and math.isfinite(results["test"]["depth"]["abs_error"])
