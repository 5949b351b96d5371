"""``mtl-report``: the report of a sweep directory (``report``) and its command line (``main``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import rich
import rich.markdown

import mtl.report
from mtl.report.baselines import check_covers, choose_baselines, measured_baselines
from mtl.report.plots import plot_curves, plot_pareto
from mtl.report.runs import STAGES, find_runs, group_runs
from mtl.report.tables import paired_rows, summary_rows, write_tables


def report(sweep_dir: Path, keys: list[str], baselines: dict | None, out: Path, versus: tuple[str, str] | None = None, stage: str = "test") -> str:
    """Write the report of the runs under ``sweep_dir`` into ``out`` and return its Markdown; Δm%
    is against ``baselines`` if given, else against those found as ``mtl.report`` says;
    ``versus = (key, choice)`` adds ``paired_rows``; ``stage`` is the results it compares
    (``runs.STAGES``)."""
    runs = find_runs(sweep_dir, stage)
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
    parser = argparse.ArgumentParser(description=mtl.report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="directory holding the runs (e.g. outputs/train/multiruns/<date>)")
    parser.add_argument("--group", nargs="+", default=["method"], help="config groups whose choices identify a row")
    parser.add_argument("--baselines", type=Path, help="JSON {task: {metric: value}} for Δm%% (default: the sweep's single-task runs, else the runs' config)")
    parser.add_argument("--out", type=Path, help="where to write report.md/csv, pareto.png/pdf and curves.png/pdf (default: sweep_dir)")
    parser.add_argument("--stage", choices=STAGES, default="test", help="test: the checkpoint's test metrics; last_epochs: the last epochs' mean (callbacks=last_epochs_mean)")
    parser.add_argument("--versus", type=key_and_choice, metavar="KEY=CHOICE", help="add each group's differences from the group with KEY=CHOICE, paired by seed (e.g. sam=none)")
    args = parser.parse_args()
    baselines = json.loads(args.baselines.read_text()) if args.baselines else None
    try:
        table = report(args.sweep_dir, args.group, baselines, args.out or args.sweep_dir, args.versus, args.stage)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"mtl-report: {error}") from error
    rich.print(rich.markdown.Markdown(table))
