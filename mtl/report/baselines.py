"""Δm%'s baselines: given, measured by the sweep's single-task runs, or configured (see ``mtl.report``)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import yaml

from mtl.report.runs import Run, mean_and_spread


def measured_baselines(runs: list[Run]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """From the finished single-task runs: the baselines ``{task: {metric: mean over seeds}}`` and
    one table row per task (runs, mean ± std of its own metrics). Both are empty without such runs."""
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.single_task is not None:
            by_task[run.single_task].append(run)
    baselines, rows = {}, []
    for task, task_runs in sorted(by_task.items()):
        values = {metric: [run.scores[task][metric] for run in task_runs] for metric in task_runs[0].scores[task]}
        baselines[task] = {metric: statistics.fmean(series) for metric, series in values.items()}
        rows.append({"single_task": task, "runs": len(task_runs), **{f"{task}/{metric}": mean_and_spread(series) for metric, series in values.items()}})
    return baselines, rows


def configured_baselines(runs: list[Run]) -> dict[str, dict[str, float]] | None:
    """The ``baselines`` key of the runs' configs (``.hydra/config.yaml``), which must agree, or None."""
    found: list[dict] = []
    for run in runs:
        config_file = run.path / ".hydra" / "config.yaml"
        value = (yaml.safe_load(config_file.read_text()) or {}).get("baselines") if config_file.is_file() else None
        if value is not None and value not in found:
            found.append(value)
    if len(found) > 1:
        raise ValueError(f"the runs' configs give {len(found)} different baselines: {found}; pass one with --baselines")
    return found[0] if found else None


def choose_baselines(given: dict | None, measured: dict, runs: list[Run]) -> tuple[dict | None, str | None]:
    """The baselines in the order ``mtl.report`` gives, and where they come from."""
    if given is not None:
        return given, "--baselines"
    if measured:
        return measured, "the single-task runs (method=stl), mean over seeds"
    configured = configured_baselines(runs)
    return configured, "the `baselines` of the runs' config" if configured is not None else None


def check_covers(baselines: dict[str, Any], source: str, runs: list[Run]) -> None:
    """An error naming the tasks of the finished ``runs`` that ``baselines`` lack."""
    tasks = {task for run in runs if run.results is not None for task in run.results["higher_is_better"]}
    missing = sorted(tasks - set(baselines))
    if missing:
        raise ValueError(
            f"the baselines from {source} cover {sorted(baselines)} but not {missing}; "
            "run method=stl method.task=<name> for each task, or pass --baselines"
        )
