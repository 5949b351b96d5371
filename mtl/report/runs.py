"""The runs of a sweep: each Hydra job directory with its config choices and results, grouped by choice."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

STAGES = ("test", "last_epochs")
"""What a report compares: the test metrics of the run's checkpoint, or the mean of its last
epochs' validation metrics (``callbacks=last_epochs_mean``, the dense benchmarks' protocol)."""


@dataclass
class Run:
    path: Path
    choices: dict[str, str]
    results: dict[str, Any] | None
    error: str = ""
    stage: str = "test"

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` of the stage the report compares."""
        return self.results[self.stage]

    @property
    def monitor(self) -> tuple[str, str]:
        """The validation metric the run's checkpoint followed and its mode (``max`` or ``min``),
        from its config (``callbacks.model_checkpoint``); ``val/mean/accuracy``, ``max`` without one."""
        config_file = self.path / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
        monitor = OmegaConf.select(config, "callbacks.model_checkpoint.monitor", default=None)
        return (monitor or "val/mean/accuracy", OmegaConf.select(config, "callbacks.model_checkpoint.mode", default="max"))

    @property
    def single_task(self) -> str | None:
        """The task a finished single-task run (``method=stl``) trained, else None."""
        return self.results.get("single_task") if self.results is not None else None


@dataclass
class Group:
    key: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.results is not None]

    def values(self, task: str, metric: str) -> list[float]:
        return [run.scores[task][metric] for run in self.finished if metric in run.scores.get(task, {})]

    def mean_scores(self) -> dict[str, dict[str, float]]:
        scores: dict[str, dict[str, float]] = defaultdict(dict)
        for task, metrics in self.finished[0].scores.items():
            for metric in metrics:
                scores[task][metric] = statistics.fmean(self.values(task, metric))
        return scores


def find_runs(sweep_dir: Path, stage: str = "test") -> list[Run]:
    """Every Hydra job directory under ``sweep_dir``, with its config choices and results (None if
    it failed, or has no ``stage`` in its results)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; valid choices: {list(STAGES)}")
    runs = []
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        path = hydra_dir.parent
        hydra_config = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) if (hydra_dir / "hydra.yaml").is_file() else {}
        choices = {key: str(value) for key, value in hydra_config.get("hydra", {}).get("runtime", {}).get("choices", {}).items()}
        results_file = path / "results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else None
        if results is None:
            runs.append(Run(path, choices, None, last_log_line(path), stage))
        elif stage not in results:
            runs.append(Run(path, choices, None, f"results.json has no '{stage}' (it needs callbacks=last_epochs_mean)", stage))
        else:
            runs.append(Run(path, choices, results, stage=stage))
    return runs


def last_log_line(path: Path) -> str:
    lines = [line for log in sorted(path.glob("*.log")) for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no results.json and no log"


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = tuple(run.choices.get(name, "?") for name in keys)
        groups.setdefault(key, Group(key)).runs.append(run)
    return list(groups.values())


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def epoch_series(run: Run, name: str) -> dict[int, float]:
    """``{epoch: value}`` of the metric ``name`` in the run's CSV log (``csv/metrics.csv``); empty
    without the log or the metric."""
    log = run.path / "csv" / "metrics.csv"
    if not log.is_file():
        return {}
    with log.open(newline="") as file:
        return {int(row["epoch"]): float(row[name]) for row in csv.DictReader(file) if row.get(name)}
