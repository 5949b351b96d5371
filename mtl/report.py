"""``mtl-report SWEEP_DIR``: one table of every run under a directory, grouped by config choice.

Collects each run's ``results.json`` (a run is a directory with ``.hydra/``; one without results
is listed as failed, never dropped), groups the runs by their config-group choices (``--group``,
default ``method``; e.g. ``--group method sam``), and reports per group the mean ± standard
deviation over the runs (seeds) of every test metric, Δm% against the baselines, and the rank.
Writes ``report.md``, ``report.csv``, for two or more tasks ``pareto.png`` and ``pareto.pdf``
(per-task trade-off with the Pareto front highlighted), and, from the runs' CSV logs,
``curves.png`` and ``curves.pdf`` (training and validation curves per group, mean over seeds)
into ``--out``. ``--versus sam=none`` adds each group's differences from the group that ran with
``sam=none`` instead, paired by seed.

The Δm% baselines ``{task: {metric: value}}`` come from the first of:

1. ``--baselines FILE``, a JSON file;
2. the single-task runs under the sweep dir (``method=stl method.task=<name>``): each contributes
   its own task's test metrics, averaged over seeds. They are listed as baselines, not ranked as
   methods;
3. the ``baselines`` key of the runs' config (e.g. published numbers in an ``experiment=`` config),
   in the same format.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import rich
import rich.markdown
import yaml
from adjustText import adjust_text

from mtl.metrics import delta_m

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass
class Run:
    path: Path
    choices: dict[str, str]
    results: dict[str, Any] | None
    error: str = ""

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
        return [run.results["test"][task][metric] for run in self.finished if metric in run.results["test"].get(task, {})]

    def mean_scores(self) -> dict[str, dict[str, float]]:
        scores: dict[str, dict[str, float]] = defaultdict(dict)
        for task, metrics in self.finished[0].results["test"].items():
            for metric in metrics:
                scores[task][metric] = statistics.fmean(self.values(task, metric))
        return scores


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every Hydra job directory under ``sweep_dir``, with its config choices and results (None if it failed)."""
    runs = []
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        path = hydra_dir.parent
        hydra_config = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) if (hydra_dir / "hydra.yaml").is_file() else {}
        choices = {key: str(value) for key, value in hydra_config.get("hydra", {}).get("runtime", {}).get("choices", {}).items()}
        results_file = path / "results.json"
        if results_file.is_file():
            runs.append(Run(path, choices, json.loads(results_file.read_text())))
        else:
            runs.append(Run(path, choices, None, last_log_line(path)))
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


def measured_baselines(runs: list[Run]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """From the finished single-task runs: the baselines ``{task: {metric: mean over seeds}}`` and
    one table row per task (runs, mean ± std of its own metrics). Both are empty without such runs."""
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.single_task is not None:
            by_task[run.single_task].append(run)
    baselines, rows = {}, []
    for task, task_runs in sorted(by_task.items()):
        values = {metric: [run.results["test"][task][metric] for run in task_runs] for metric in task_runs[0].results["test"][task]}
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
    """The baselines in the order of the module docstring, and where they come from."""
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


def summary_rows(groups: list[Group], keys: list[str], baselines: dict | None) -> list[dict[str, Any]]:
    """One row per group with finished runs: mean ± std per task metric, Δm% and the rank (by Δm%
    when baselines are given, else by the mean accuracy over tasks)."""
    rows = []
    for group in groups:
        if not group.finished:
            continue
        row: dict[str, Any] = dict(zip(keys, group.key))
        row["runs"] = len(group.finished)
        for task, metrics in group.finished[0].results["test"].items():
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
over its runs of the epoch, counted from 1, of the highest ``val/mean/accuracy``, of the epochs trained."""


def best_epochs(group: Group) -> list[int]:
    """Per finished run with a CSV log, the epoch (from 1) of its highest validation mean accuracy."""
    series = [epoch_series(run, "val/mean/accuracy") for run in group.finished]
    return [max(values, key=values.get) + 1 for values in series if values]


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
        references = {run.results["seed"]: run.results["test"] for run in against.finished if run.results.get("seed") is not None}
        pairs = [(run.results["test"], references[run.results.get("seed")]) for run in group.finished if run.results.get("seed") in references]
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


def pareto_front(points: list[tuple[float, float]], higher_is_better: tuple[bool, bool]) -> list[int]:
    """Indices of the points no other point dominates (at least as good in both, better in one)."""
    signs = [1 if higher else -1 for higher in higher_is_better]
    scored = [(signs[0] * x, signs[1] * y) for x, y in points]

    def dominated(i: int) -> bool:
        return any(a >= scored[i][0] and b >= scored[i][1] and (a, b) != scored[i] for a, b in scored)

    return [i for i in range(len(points)) if not dominated(i)]


def point_labels(groups: list[Group], keys: list[str]) -> list[tuple[str, str | None]]:
    """``(label, series)`` of each group's point in ``plot_pareto``. Grouped by two or more keys, the
    last one names the series (a colour and legend entry, e.g. ``sam=fmtl``) and the others the
    label; grouped by one, the label is the key and there is no series."""
    if len(keys) < 2:
        return [(" ".join(group.key), None) for group in groups]
    return [(" ".join(group.key[:-1]), f"{keys[-1]}={group.key[-1]}") for group in groups]


def series_colours(names: list[str | None]) -> dict[str | None, str]:
    """A colour of matplotlib's cycle for each distinct name, in order of first appearance (more
    names than colours reuse them)."""
    return {name: f"C{index % 10}" for index, name in enumerate(dict.fromkeys(names))}


def plot_pareto(groups: list[Group], keys: list[str], out: Path) -> None:
    """Per-task trade-off of the first metric of the first two tasks: group means with std error
    bars, coloured by series (``point_labels``), the Pareto front's points ringed in red and joined by
    a red line, the labels moved apart (adjustText) where they would overlap."""
    finished = [group for group in groups if group.finished]
    first = finished[0].finished[0].results
    tasks = [task for task in first["higher_is_better"]][:2]
    if len(tasks) < 2:
        return
    metric = next(iter(first["higher_is_better"][tasks[0]]))
    means = [(statistics.fmean(g.values(tasks[0], metric)), statistics.fmean(g.values(tasks[1], metric))) for g in finished]
    front = set(pareto_front(means, (first["higher_is_better"][tasks[0]][metric], first["higher_is_better"][tasks[1]][metric])))
    labels = point_labels(finished, keys)
    colours = series_colours([series for _, series in labels])
    size = 6 if len(finished) <= 12 else 9
    figure, axes = plt.subplots(figsize=(size * 1.2, size))
    texts = []
    for index, (group, (x, y), (label, series)) in enumerate(zip(finished, means, labels)):
        spreads = [statistics.stdev(g) if len(g) > 1 else 0.0 for g in (group.values(tasks[0], metric), group.values(tasks[1], metric))]
        ring = {"markeredgecolor": "tab:red", "markeredgewidth": 2, "zorder": 3} if index in front else {}
        _, caps, bars = axes.errorbar(x, y, xerr=spreads[0], yerr=spreads[1], fmt="o", capsize=2, elinewidth=0.8, color=colours[series], **ring)
        for line in (*caps, *bars):
            line.set_alpha(0.35)
        texts.append(axes.text(x, y, label, fontsize=7))
    ordered = sorted(means[i] for i in front)
    axes.plot([p[0] for p in ordered], [p[1] for p in ordered], color="tab:red", linewidth=1, label="Pareto front")
    for series, colour in colours.items():
        if series is not None:
            axes.plot([], [], "o", color=colour, label=series)
    axes.set_xlabel(f"{tasks[0]} {metric}")
    axes.set_ylabel(f"{tasks[1]} {metric}")
    axes.legend()
    adjust_text(texts, ax=axes, arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5})
    figure.tight_layout()
    for suffix in ("png", "pdf"):
        figure.savefig(out / f"pareto.{suffix}", dpi=150)
    plt.close(figure)


CURVES = ("train/mean/loss", "val/mean/loss", "val/mean/accuracy")
"""The epoch series drawn by ``plot_curves``, each where the runs logged it."""


def epoch_series(run: Run, name: str) -> dict[int, float]:
    """``{epoch: value}`` of the metric ``name`` in the run's CSV log (``csv/metrics.csv``); empty
    without the log or the metric."""
    log = run.path / "csv" / "metrics.csv"
    if not log.is_file():
        return {}
    with log.open(newline="") as file:
        return {int(row["epoch"]): float(row[name]) for row in csv.DictReader(file) if row.get(name)}


def plot_curves(groups: list[Group], keys: list[str], out: Path) -> bool:
    """``curves.png``/``.pdf``: per group, the mean over its logged runs of each ``CURVES`` metric
    per epoch, shaded between the runs' minimum and maximum; one colour and legend entry per group,
    or, grouped by several keys, per series (``point_labels``). False (nothing written) without CSV logs."""
    series = {name: [(group, [epoch_series(run, name) for run in group.finished]) for group in groups] for name in CURVES}
    drawn = [name for name in CURVES if any(any(runs) for _, runs in series[name])]
    if not drawn:
        return False
    labels = [series_name or label for label, series_name in point_labels(groups, keys)]
    colours = series_colours(labels)
    figure, axes = plt.subplots(1, len(drawn), figsize=(4.5 * len(drawn), 3.8), squeeze=False, layout="constrained")
    for axis, name in zip(axes[0], drawn):
        in_legend = set()
        for label, (_, all_runs) in zip(labels, series[name]):
            runs = [values for values in all_runs if values]
            epochs = sorted(set.intersection(*(set(values) for values in runs))) if runs else []
            if not epochs:
                continue
            table = [[values[epoch] for values in runs] for epoch in epochs]
            # a label starting with "_" stays out of the legend: one entry per series
            axis.plot(epochs, [statistics.fmean(row) for row in table], color=colours[label], label=f"_{label}" if label in in_legend else label)
            in_legend.add(label)
            axis.fill_between(epochs, [min(row) for row in table], [max(row) for row in table], color=colours[label], alpha=0.15)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_title(name)
    axes[0][0].legend(fontsize=7)
    for suffix in ("png", "pdf"):
        figure.savefig(out / f"curves.{suffix}", dpi=150)
    plt.close(figure)
    return True


def report(sweep_dir: Path, keys: list[str], baselines: dict | None, out: Path, versus: tuple[str, str] | None = None) -> str:
    """Write the report of the runs under ``sweep_dir`` into ``out`` and return its Markdown; Δm%
    is against ``baselines`` if given, else against those found as the module docstring says;
    ``versus = (key, choice)`` adds ``paired_rows``."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (directories with .hydra/) under {sweep_dir}")
    methods = [run for run in runs if run.single_task is None]
    measured, baseline_rows = measured_baselines(runs)
    baselines, source = choose_baselines(baselines, measured, runs)
    if baselines is not None:
        check_covers(baselines, source, methods)
    groups = group_runs(methods, keys)
    out.mkdir(parents=True, exist_ok=True)
    failed = [run for run in runs if run.results is None]
    differences = ("=".join(versus), paired_rows(groups, keys, versus)) if versus is not None else None
    text = write_tables(summary_rows(groups, keys, baselines), source, baseline_rows, failed, out, differences)
    if len(failed) == len(runs):
        raise RuntimeError(f"none of the {len(runs)} runs under {sweep_dir} finished; {out / 'report.md'} lists why each failed")
    if any(group.finished for group in groups):
        plot_pareto(groups, keys, out)
        plot_curves(groups, keys, out)
    return text


def key_and_choice(text: str) -> tuple[str, str]:
    """``--versus``'s ``KEY=CHOICE`` as ``(KEY, CHOICE)``."""
    key, separator, choice = text.partition("=")
    if not (key and separator and choice):
        raise argparse.ArgumentTypeError(f"takes KEY=CHOICE (e.g. sam=none), got {text!r}")
    return key, choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="directory holding the runs (e.g. outputs/train/multiruns/<date>)")
    parser.add_argument("--group", nargs="+", default=["method"], help="config groups whose choices identify a row")
    parser.add_argument("--baselines", type=Path, help="JSON {task: {metric: value}} for Δm%% (default: the sweep's single-task runs, else the runs' config)")
    parser.add_argument("--out", type=Path, help="where to write report.md/csv, pareto.png/pdf and curves.png/pdf (default: sweep_dir)")
    parser.add_argument("--versus", type=key_and_choice, metavar="KEY=CHOICE", help="add each group's differences from the group with KEY=CHOICE, paired by seed (e.g. sam=none)")
    args = parser.parse_args()
    baselines = json.loads(args.baselines.read_text()) if args.baselines else None
    try:
        table = report(args.sweep_dir, args.group, baselines, args.out or args.sweep_dir, args.versus)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"mtl-report: {error}") from error
    rich.print(rich.markdown.Markdown(table))


if __name__ == "__main__":
    main()
