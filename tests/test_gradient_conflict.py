import csv
import json
import math
from pathlib import Path

import pytest
import torch

from mtl.callbacks import GradientConflict, cosine_similarities
from mtl.train import train
from tests.test_train import final_state


def test_cosines_of_a_hand_built_jacobian():
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 0.0]])
    half = 1 / math.sqrt(2)
    expected = torch.tensor(
        [
            [1.0, half, -1.0, 0.0],
            [half, 1.0, -half, 0.0],
            [-1.0, -half, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # a zero gradient has no direction: cosine 0
        ]
    )
    assert torch.allclose(cosine_similarities(jacobian), expected)


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be at least 1, got 0"):
        GradientConflict(every_n_steps=0)


# Dropout draws from the global generator and BatchNorm updates running statistics in training mode.
MODELS = {
    "dropout": ["model.encoder.dropout=0.3"],
    "batchnorm": ["model=resnet", "model.encoder.widths=[4,8]"],
}


@pytest.mark.parametrize("model", MODELS)
def test_measuring_leaves_training_bit_identical_and_logs_and_plots_the_cosines(model, tiny_config):
    common = [*MODELS[model], "data.batch_size=32", "+trainer.limit_train_batches=5", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    train(tiny_config(common, "plain"))
    measured = ["callbacks=gradient_conflict", "callbacks.gradient_conflict.every_n_steps=2"]
    train(tiny_config([*common, *measured], "measured"))

    plain, with_callback = (final_state(Path(tiny_config([], name).paths.output_dir)) for name in ("plain", "measured"))
    assert plain["global_step"] == with_callback["global_step"] == 5
    for name, value in plain["state_dict"].items():
        same = torch.equal(with_callback["state_dict"][name], value) if torch.is_tensor(value) else with_callback["state_dict"][name] == value
        assert same, name

    run_dir = Path(tiny_config([], "measured").paths.output_dir)
    history = json.loads((run_dir / "gradient_conflict.json").read_text())
    assert history["tasks"] == ["left", "right"] and history["steps"] == [0, 2, 4]
    for matrix in history["cosines"]:
        assert matrix[0][0] == pytest.approx(1.0) and matrix[1][1] == pytest.approx(1.0)
        assert matrix[0][1] == matrix[1][0] and -1 <= matrix[0][1] <= 1
    with open(run_dir / "csv" / "metrics.csv") as handle:
        logged = [(int(row["step"]), float(row["gradient_cosine/left/right"])) for row in csv.DictReader(handle) if row.get("gradient_cosine/left/right")]
    assert logged == [(step, pytest.approx(matrix[0][1])) for step, matrix in zip(history["steps"], history["cosines"])]
    assert (run_dir / "gradient_conflict.png").stat().st_size > 0
