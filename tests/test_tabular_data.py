"""UCI Adult read in place (both first-line forms, features fitted on the training split) and MMoE's
synthetic data (the cosine of the task weights is the correlation score)."""

import math

import pytest
import torch

from mtl.data import Adult, SyntheticCorrelation
from mtl.data.adult import CATEGORICAL, CONTINUOUS, read_rows
from mtl.train import train
from tests.conftest import SHARED_ADULT, compose_config

HEADER = "age, workclass, fnlwgt, education, education-num, marital-status, occupation, relationship, race, sex, capital-gain, capital-loss, hours-per-week, native-country, Y"
TRAIN_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K",
    "38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, 40, ?, <=50K",
    "28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, >50K",
]
TEST_ROWS = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    "44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, Black, Male, 7688, 0, 40, Peru, >50K.",
]


def write_adult(directory, header):
    """The two Adult files in UCI's original form (``header=False``) or with a line of column names."""
    directory.mkdir(parents=True, exist_ok=True)
    first = [HEADER] if header else []
    (directory / "adult.data").write_text("\n".join([*first, *TRAIN_ROWS]) + "\n")
    (directory / "adult.test").write_text("\n".join([HEADER] if header else ["|1x3 Cross validator"]) + "\n" + "\n".join(TEST_ROWS) + "\n\n")
    return directory


@pytest.fixture
def shared_adult():
    if not (SHARED_ADULT / "adult.data").is_file():
        pytest.skip(f"the shared Adult files are not at {SHARED_ADULT}")
    return SHARED_ADULT


def test_the_shared_files_hold_uci_adult_with_its_known_class_counts(shared_adult):
    data = Adult(shared_adult, val_fraction=0.1)
    data.setup()
    sizes = {split: len(dataset) for split, dataset in data.splits.items()}
    assert sizes == {"train": 29305, "val": 3256, "test": 16281}
    positives = {split: int(dataset.targets["income"].sum()) for split, dataset in data.splits.items()}
    assert positives["train"] + positives["val"] == 7841 and positives["test"] == 3846  # UCI's adult.names


def test_both_first_line_forms_and_the_test_labels_period_read_alike(tmp_path):
    original, named = write_adult(tmp_path / "uci", header=False), write_adult(tmp_path / "named", header=True)
    for name in ("adult.data", "adult.test"):
        assert read_rows(original / name) == read_rows(named / name)
    rows = read_rows(original / "adult.test")
    assert [row["income"] for row in rows] == ["<=50K", ">50K"] and rows[1]["native-country"] == "Peru"


def test_features_are_fitted_on_the_training_split_alone(tmp_path):
    data = Adult(write_adult(tmp_path / "adult", header=False), val_fraction=0.25)
    data.setup()
    train_features = data.splits["train"].inputs
    assert torch.allclose(train_features[:, : len(CONTINUOUS)].mean(dim=0), torch.zeros(len(CONTINUOUS)), atol=1e-6)
    assert data.input_shape == (len(CONTINUOUS) + sum(len(values) for values in data.encoding.categories.values()),)
    assert "marital-status" not in CATEGORICAL  # the label of never_married is no feature
    # Peru is never seen in training: its native-country block is all zeros
    countries = data.encoding.categories["native-country"]
    start = len(CONTINUOUS) + sum(len(data.encoding.categories[column]) for column in CATEGORICAL[: CATEGORICAL.index("native-country")])
    test_countries = data.splits["test"].inputs[:, start : start + len(countries)]
    assert test_countries[1].sum() == 0 and test_countries[0].sum() == ("United-States" in countries)
    assert data.splits["test"].targets["never_married"].tolist() == [1, 0]


def test_a_row_of_the_wrong_width_names_its_file_and_line(tmp_path):
    directory = write_adult(tmp_path / "adult", header=True)
    (directory / "adult.data").write_text(HEADER + "\n" + TRAIN_ROWS[0] + "\n39, State-gov, 77516\n")
    with pytest.raises(ValueError, match=r"adult.data:3: 3 fields, an Adult row has 15"):
        read_rows(directory / "adult.data")


def test_a_missing_directory_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root must hold \['adult.data', 'adult.test'\]"):
        Adult(tmp_path / "nowhere")


def test_the_adult_experiment_trains_and_reports_auroc_per_task(shared_adult, tmp_path):
    overrides = [
        "experiment=adult_mmoe",
        f"data.root={shared_adult}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
        "~callbacks.rich_progress_bar",
    ]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert set(results["test"]["income"]) >= {"accuracy", "auroc"} and 0.0 <= results["test"]["never_married"]["auroc"] <= 1.0


def synthetic(correlation, **options):
    return SyntheticCorrelation(correlation, samples={"train": 4000, "val": 10, "test": 10}, **options)


@pytest.mark.parametrize("correlation", [-0.3, 0.0, 0.5, 1.0])
def test_the_cosine_of_the_task_weights_is_the_correlation_score(correlation):
    weights = synthetic(correlation, scale=2.0).task_weights(torch.Generator().manual_seed(0))
    first, second = weights.T
    assert torch.allclose(weights.norm(dim=0), torch.full((2,), 2.0, dtype=torch.float64))
    assert math.isclose(float(first @ second / (first.norm() * second.norm())), correlation, abs_tol=1e-12)


def test_the_label_correlation_grows_with_the_correlation_score():
    pearson = []
    for correlation in (0.0, 0.5, 0.9, 1.0):
        data = synthetic(correlation)
        data.setup()
        labels = torch.cat([data.splits["train"].targets["y1"], data.splits["train"].targets["y2"]], dim=1)
        pearson.append(float(torch.corrcoef(labels.T)[0, 1]))
    assert pearson == sorted(pearson) and pearson[-1] > 0.99 and abs(pearson[0]) < 0.1


def test_an_invalid_correlation_score_is_refused():
    with pytest.raises(ValueError, match=r"data.correlation is a cosine, in \[-1, 1\]; got 1.5"):
        SyntheticCorrelation(1.5)
