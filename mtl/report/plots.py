"""The report's figures: the per-task trade-off with its Pareto front, and the training curves per group."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib
from adjustText import adjust_text

from mtl.report.runs import Group, epoch_series

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
