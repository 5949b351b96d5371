"""UCI Adult (Census Income): two binary tasks on the 1994 US census extract, read in place.

Kohavi 1996 ("Scaling Up the Accuracy of Naive-Bayes Classifiers: a Decision-Tree Hybrid", KDD);
the files are UCI's ``adult.data`` (32,561 rows) and ``adult.test`` (16,281 rows). The tasks follow
the MMoE line of work on census data (Ma et al. 2018, KDD, Section 5.2, on the larger KDD extract):

- ``income``: income above 50K;
- ``never_married``: marital status ``Never-married`` (so ``marital-status`` is no input feature).

Features: the six continuous attributes standardized and the seven other categorical ones one-hot
(a missing value, ``?``, is a category of its own), both fitted on the training split alone; a
category the training split never shows becomes all zeros. The validation split is a seeded
``val_fraction`` of ``adult.data``; the test split is ``adult.test``.

Both first-line forms are read: UCI's originals (``adult.data`` starts with data, ``adult.test``
with the line ``|1x3 Cross validator``) and copies whose first line names the columns
(``age, workclass, ...``). The test file's labels end with a period (``<=50K.``), which is dropped.
A row without 15 fields stops the load with its file and line.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from mtl.data.base import MultiTaskDataModule, MultiTaskDataset
from mtl.tasks import ClassificationTask

COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
)  # fmt: skip
CONTINUOUS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "education", "occupation", "relationship", "race", "sex", "native-country")
FILES = {"train": "adult.data", "test": "adult.test"}

Rows = list[dict[str, str]]


def read_rows(path: Path) -> Rows:
    """The data rows of one Adult file as ``{column: value}``, without a header or comment first line."""
    if not path.is_file():
        raise FileNotFoundError(f"no Adult file at {path}; data.root must hold {sorted(FILES.values())} (e.g. ../shared/data/adult)")
    rows = []
    with path.open(newline="") as file:
        for line_number, fields in enumerate(csv.reader(file, skipinitialspace=True), start=1):
            if not fields or not "".join(fields).strip():
                continue
            if line_number == 1 and (fields[0].startswith("|") or fields[0].strip() == "age"):
                continue  # UCI's "|1x3 Cross validator" or a line of column names
            if len(fields) != len(COLUMNS):
                raise ValueError(f"{path}:{line_number}: {len(fields)} fields, an Adult row has {len(COLUMNS)}: {fields}")
            values = dict(zip(COLUMNS, (field.strip() for field in fields)))
            values["income"] = values["income"].rstrip(".")
            rows.append(values)
    return rows


class FeatureEncoding:
    """Standardization and one-hot encoding fitted on the training rows."""

    def __init__(self, rows: Rows) -> None:
        continuous = torch.tensor([[float(row[column]) for column in CONTINUOUS] for row in rows], dtype=torch.float64)
        self.mean, self.std = continuous.mean(dim=0), continuous.std(dim=0).clamp_min(1e-12)
        self.categories = {column: sorted({row[column] for row in rows}) for column in CATEGORICAL}

    @property
    def width(self) -> int:
        return len(CONTINUOUS) + sum(len(values) for values in self.categories.values())

    def __call__(self, rows: Rows) -> Tensor:
        """The ``(N, width)`` features of ``rows``."""
        continuous = torch.tensor([[float(row[column]) for column in CONTINUOUS] for row in rows], dtype=torch.float64)
        blocks = [((continuous - self.mean) / self.std).float()]
        for column, values in self.categories.items():
            index = {value: position for position, value in enumerate(values)}
            one_hot = torch.zeros(len(rows), len(values))
            for row_index, row in enumerate(rows):
                if row[column] in index:
                    one_hot[row_index, index[row[column]]] = 1.0
            blocks.append(one_hot)
        return torch.cat(blocks, dim=1)


def labels(rows: Rows) -> dict[str, Tensor]:
    """The two tasks' class indices (1: income above 50K; 1: never married)."""
    unknown = sorted({row["income"] for row in rows} - {"<=50K", ">50K"})
    if unknown:
        raise ValueError(f"unknown income labels {unknown}; Adult's are ['<=50K', '>50K'] (the test file's with a trailing period)")
    return {
        "income": torch.tensor([row["income"] == ">50K" for row in rows], dtype=torch.long),
        "never_married": torch.tensor([row["marital-status"] == "Never-married" for row in rows], dtype=torch.long),
    }


class Adult(MultiTaskDataModule):
    """UCI Adult from ``root`` (``adult.data``, ``adult.test``); tasks ``income`` and
    ``never_married``, each with accuracy and AUROC. ``val_fraction`` of the training file, drawn
    with ``seed``, is the validation split."""

    def __init__(
        self,
        root: str | Path = "../shared/data/adult",
        val_fraction: float = 0.1,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.tasks = [ClassificationTask("income", 2, auroc=True), ClassificationTask("never_married", 2, auroc=True)]
        training, test = (read_rows(self.root / FILES[split]) for split in ("train", "test"))
        order = torch.randperm(len(training), generator=torch.Generator().manual_seed(seed)).tolist()
        validation = round(val_fraction * len(order))
        self.split_rows = {
            "train": [training[index] for index in order[validation:]],
            "val": [training[index] for index in order[:validation]],
            "test": test,
        }
        self.encoding = FeatureEncoding(self.split_rows["train"])
        self.input_shape = (self.encoding.width,)

    def build_splits(self) -> dict[str, MultiTaskDataset]:
        return {split: MultiTaskDataset(self.encoding(rows), labels(rows)) for split, rows in self.split_rows.items()}
