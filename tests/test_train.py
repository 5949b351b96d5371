"""End to end: the real entry points, resume, evaluation of a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from mtl.train import metric_value, train
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTL_DATA_DIR": str(cwd / "data"), "MTL_LOG_DIR": str(cwd / "outputs")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_mtl_train_then_mtl_eval_through_the_entry_points(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_cli("mtl.train", [*TINY, "seed=3", f"hydra.run.dir={run_dir}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"left", "right", "mean"}
    for values in results["test"].values():
        assert set(values) == {"accuracy", "loss"} and 0 <= values["accuracy"] <= 1
    assert results["seed"] == 3 and results["epochs"] == 1
    assert "seed: 3" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "run_info.json").read_text())["git"]["commit"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "test/left/accuracy" in (run_dir / "csv" / "metrics.csv").read_text()

    evaluated = run_cli("mtl.eval", [f"ckpt_path={results['checkpoint']}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval" / "results.json").read_text())
    for task, values in results["test"].items():
        assert evaluation["test"][task] == pytest.approx(values)


def test_an_unknown_option_stops_the_cli_with_the_valid_choices(tmp_path):
    failed = run_cli("mtl.train", ["model=transformer", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert failed.returncode != 0
    assert "Could not find 'model/transformer'" in failed.stderr
    assert "lenet" in failed.stderr and "mlp" in failed.stderr and "resnet" in failed.stderr



def test_a_failed_run_names_its_error_in_its_log_and_prints_one_traceback(tmp_path):
    run_dir = tmp_path / "run"
    failed = run_cli("mtl.train", [*TINY, "method=modo", "sam=fmtl", f"hydra.run.dir={run_dir}"], tmp_path)
    assert failed.returncode != 0
    last_line = (run_dir / "train.log").read_text().splitlines()[-1]
    assert "The run failed: ValueError: FlatMTL" in last_line
    assert failed.stderr.count("Traceback") == 1, failed.stderr[-3000:]

def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_config):
    # Dropout makes the run depend on the random state, which resume must restore as well.
    common = ["model.encoder.dropout=0.3", "data.batch_size=200"]
    train(tiny_config([*common, "trainer.max_epochs=3"], "uninterrupted"))
    train(tiny_config([*common, "trainer.max_epochs=1"], "interrupted"))
    first_part = tiny_config([], "interrupted").paths.output_dir
    resumed = train(tiny_config([*common, "trainer.max_epochs=3", f"ckpt_path={first_part}/checkpoints/last.ckpt"], "resumed"))

    uninterrupted = final_state(Path(tiny_config([], "uninterrupted").paths.output_dir))
    continued = final_state(Path(tiny_config([], "resumed").paths.output_dir))
    assert continued["global_step"] == uninterrupted["global_step"] == resumed["global_step"]
    for name, value in uninterrupted["state_dict"].items():
        same = torch.equal(continued["state_dict"][name], value) if torch.is_tensor(value) else continued["state_dict"][name] == value
        assert same, name
    adam_uninterrupted = uninterrupted["optimizer_states"][0]["state"]
    adam_continued = continued["optimizer_states"][0]["state"]
    for index, state in adam_uninterrupted.items():
        assert torch.equal(adam_continued[index]["exp_avg_sq"], state["exp_avg_sq"])


def test_multimnist_from_the_shared_test_set_trains_one_epoch(shared_mnist, tiny_config):
    cfg = tiny_config(
        [
            "experiment=multimnist",
            f"data.root={shared_mnist}",
            "data.splits_from=test_set",
            "data.download=false",
            "+trainer.limit_train_batches=4",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
        ]
    )
    results = train(cfg)
    assert set(results["test"]) == {"left", "right", "mean"}


def test_a_dataset_root_without_the_files_names_them(tiny_config, tmp_path):
    cfg = tiny_config(["data=multimnist", "model=lenet", f"data.root={tmp_path / 'empty'}", "data.download=false"])
    with pytest.raises(FileNotFoundError, match=r"MNIST files missing in data.root=.*empty.*Expected files: \['train-images-idx3-ubyte.gz'"):
        train(cfg)


NEED_THREE_TASKS = ["krum", "trimmed_mean"]
"""Robust aggregators that need three tasks or more; the default experiment has two (they train on
CelebA's 40 in tests/test_celeba.py)."""
METHOD_NAMES = sorted(path.stem for path in (REPO / "conf" / "method").glob("*.yaml") if path.stem not in NEED_THREE_TASKS)
REQUIRED_OPTIONS = {"stl": ["method.task=right"]}
"""Overrides for the fields a method's config leaves mandatory (``???``)."""


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_the_default_experiment(method, tiny_config):
    limits = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    results = train(tiny_config([f"method={method}", *REQUIRED_OPTIONS.get(method, []), *limits]))
    assert results["global_step"] == 3
    assert results["single_task"] == ("right" if method == "stl" else None)
    assert all(torch.isfinite(torch.tensor(values["loss"])) for values in results["test"].values())


@pytest.mark.parametrize("method", NEED_THREE_TASKS)
def test_a_method_needing_three_tasks_refuses_the_two_of_the_default_experiment(method, tiny_config):
    with pytest.raises(InstantiationException, match=r"needs at least 3 task.*this run has 2"):
        train(tiny_config([f"method={method}"]))


def test_baselines_give_delta_m_in_the_results_and_to_the_sweeper(tiny_config):
    results = train(tiny_config(["+trainer.limit_train_batches=2", "baselines={left: {accuracy: 0.5}, right: {accuracy: 0.8}}"]))
    test = results["test"]
    expected = -100 * ((test["left"]["accuracy"] - 0.5) / 0.5 + (test["right"]["accuracy"] - 0.8) / 0.8) / 2
    assert results["delta_m"]["test"] == pytest.approx(expected)
    assert metric_value(results, "val/delta_m") == results["delta_m"]["validation"]
    with pytest.raises(ValueError, match="optimized_metric=val/delta_m needs the single-task baselines"):
        metric_value({"validation": {}}, "val/delta_m")


def test_baselines_missing_a_metric_are_refused_before_training(tiny_config):
    with pytest.raises(ValueError, match=r"the baselines lack \['right/accuracy'\]"):
        train(tiny_config(["baselines={left: {accuracy: 0.5}, right: {loss: 1.0}}"]))


def test_a_single_task_run_selects_its_checkpoint_on_the_trained_task(tiny_config):
    assert tiny_config(["method=stl", "method.task=right"]).callbacks.model_checkpoint.monitor == "val/right/accuracy"
    assert tiny_config(["method=pcgrad"]).callbacks.model_checkpoint.monitor == "val/mean/accuracy"
