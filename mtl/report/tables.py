"""The report's tables: one row per group (mean ± std, Δm%, rank, best epoch), paired differences, Markdown and CSV."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from mtl.metrics import delta_m
from mtl.report.runs import Group, Run, epoch_series, mean_and_spread


def summary_rows(groups: list[Group], keys: list[str], baselines: dict | None) -> list[dict[str, Any]]:
    """One row per group with finished runs: mean ± std per task metric, Δm% and the rank (by Δm%
    when baselines are given, else by the mean accuracy over tasks)."""
    rows = []
    for group in groups:
        if not group.finished:
            continue
        row: dict[str, Any] = dict(zip(keys, group.key))
        row["runs"] = len(group.finished)
        for task, metrics in group.finished[0].scores.items():
            for metric in metrics:
                row[f"{task}/{metric}"] = mean_and_spread(group.values(task, metric))
        if baselines is not None:
            row["Δm%"] = delta_m(group.mean_scores(), baselines, group.finished[0].results["higher_is_better"])
        best = best_epochs(group)
        if best:
            trained = max(run.results.get("epochs") or 0 for run in group.finished)
            row[BEST_EPOCH] = f"{statistics.median(best):g} ({min(best)}–{max(best)})" + (f" of {trained}" if trained else "")
        rows.append(row)
    score = (lambda row: row["Δm%"]) if baselines is not None else (lambda row: -row.get("mean/accuracy", (0.0, 0.0))[0])
    for rank, row in enumerate(sorted(rows, key=score), start=1):
        row["rank"] = rank
    return sorted(rows, key=lambda row: row["rank"])


BEST_EPOCH = "best val epoch"
"""The summary column that says how near convergence a group's runs stopped: the median (range)
over its runs of the epoch, counted from 1, of the best value of the metric its checkpoint
followed (``Run.monitor``: ``val/mean/accuracy`` by default), of the epochs trained."""


def best_epochs(group: Group) -> list[int]:
    """Per finished run with a CSV log, the epoch (from 1) of the best value of its monitored metric."""
    epochs = []
    for run in group.finished:
        name, mode = run.monitor
        values = epoch_series(run, name)
        if values:
            epochs.append((min if mode == "min" else max)(values, key=values.get) + 1)
    return epochs


def paired_rows(groups: list[Group], keys: list[str], versus: tuple[str, str]) -> list[dict[str, Any]]:
    """Per group whose ``versus[0]`` choice is not ``versus[1]``: the difference of every test metric
    from the group that differs only in that choice, paired by seed (runs of equal seed share their
    initialization and data order), mean ± std over the seeds both finished."""
    name, reference = versus
    if name not in keys:
        raise ValueError(f"--versus {name}={reference}: {name!r} is not one of the --group keys {keys}")
    position = keys.index(name)
    by_key = {group.key: group for group in groups}
    values = sorted({group.key[position] for group in groups})
    if reference not in values:
        raise ValueError(f"--versus {name}={reference}: no run has {name}={reference}; the runs have {name} in {values}")
    rows = []
    for group in groups:
        against = by_key.get((*group.key[:position], reference, *group.key[position + 1 :]))
        if group.key[position] == reference or against is None:
            continue
        references = {run.results["seed"]: run.scores for run in against.finished if run.results.get("seed") is not None}
        pairs = [(run.scores, references[run.results.get("seed")]) for run in group.finished if run.results.get("seed") in references]
        if not pairs:
            continue
        row: dict[str, Any] = dict(zip(keys, group.key))
        row["seeds"] = len(pairs)
        for task, metrics in pairs[0][0].items():
            for metric in metrics:
                row[f"{task}/{metric}"] = mean_and_spread([ours[task][metric] - theirs[task][metric] for ours, theirs in pairs])
        rows.append(row)
    return sorted(rows, key=lambda row: tuple(row[key] for key in keys))


def cell(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.4f} ± {value[1]:.4f}"
    if isinstance(value, float):
        return f"{value:+.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(column for row in rows for column in row))
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    return lines + ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]


def write_tables(
    rows: list[dict[str, Any]],
    baseline_source: str | None,
    baseline_rows: list[dict[str, Any]],
    failed: list[Run],
    out: Path,
    differences: tuple[str, list[dict[str, Any]]] | None = None,
) -> str:
    """``report.md`` (the methods' table, the baselines, the ``(KEY=CHOICE, paired_rows)``
    differences, the failed runs) and ``report.csv`` (the methods' table)."""
    markdown = markdown_table(rows)
    if baseline_source is not None:
        markdown += ["", f"Δm% against the baselines from {baseline_source}."]
    if baseline_rows:
        markdown += ["", *markdown_table(baseline_rows)]
    if differences is not None and differences[1]:
        markdown += ["", f"Differences from {differences[0]}, paired by seed:", "", *markdown_table(differences[1])]
    if failed:
        markdown += ["", "Failed runs:", *(f"- `{run.path}`: {run.error}" for run in failed)]
    text = "\n".join(markdown) + "\n"
    (out / "report.md").write_text(text)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    with open(out / "report.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([[cell(row.get(column, "")) for column in columns] for row in rows])
    return text
