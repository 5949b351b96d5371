"""MMoE's synthetic benchmark from a sweep: test MSE against the task correlation, per model.

    make reproduce-synthetic        # the sweep (experiment=synthetic_mmoe), then this script
    python scripts/synthetic_correlation.py outputs/reproduce/synthetic --out docs/benchmarks/synthetic_mmoe.png

Ma et al. 2018 (KDD, Section 4.3, Figure 4) train shared-bottom, OMoE and MMoE on their synthetic
data at correlations 0.5, 0.9 and 1.0 and find that MMoE's loss grows the least as the tasks'
correlation drops. This reads every finished run under the sweep directory (its ``model`` choice,
its ``data.correlation`` and its test MSE averaged over the two tasks), prints a Markdown table of
the mean ± standard deviation over seeds per model and correlation with each model's increase from
the highest correlation to the lowest, and draws the means with their spread.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib
import yaml

from mtl.report.runs import find_runs, mean_and_spread

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


def test_errors(sweep: Path) -> dict[str, dict[float, list[float]]]:
    """``{model: {correlation: [test MSE of each finished run]}}``."""
    errors: dict[str, dict[float, list[float]]] = {}
    for run in find_runs(sweep):
        if run.results is None:
            continue
        config = yaml.safe_load((run.path / ".hydra" / "config.yaml").read_text())
        correlation = float(config["data"]["correlation"])
        errors.setdefault(run.choices["model"], {}).setdefault(correlation, []).append(run.results["test"]["mean"]["mse"])
    if not errors:
        raise SystemExit(f"no finished runs under {sweep}")
    return errors


def table(errors: dict[str, dict[float, list[float]]]) -> str:
    correlations = sorted({correlation for by_correlation in errors.values() for correlation in by_correlation}, reverse=True)
    lines = [
        "| model | " + " | ".join(f"correlation {correlation:g}" for correlation in correlations) + f" | increase {correlations[0]:g} → {correlations[-1]:g} |",
        "| --- |" + " --- |" * (len(correlations) + 1),
    ]
    for model, by_correlation in sorted(errors.items()):
        cells = []
        for correlation in correlations:
            mean, spread = mean_and_spread(by_correlation.get(correlation, [float("nan")]))
            cells.append(f"{mean:.4f} ± {spread:.4f} ({len(by_correlation.get(correlation, []))})")
        increase = statistics.fmean(by_correlation[correlations[-1]]) - statistics.fmean(by_correlation[correlations[0]])
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {increase:+.4f} |")
    return "\n".join(lines)


def plot(errors: dict[str, dict[float, list[float]]], out: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 3.6), layout="constrained")
    for model, by_correlation in sorted(errors.items()):
        correlations = sorted(by_correlation)
        means, spreads = zip(*(mean_and_spread(by_correlation[correlation]) for correlation in correlations))
        axes.errorbar(correlations, means, yerr=spreads, marker="o", capsize=3, label=model)
    axes.set_xlabel("task correlation (cosine of the task weights)")
    axes.set_ylabel("test MSE, mean over the two tasks")
    axes.set_title("MMoE's synthetic benchmark (mean ± std over seeds)", fontsize=9)
    axes.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep directory (hydra.sweep.dir) of experiment=synthetic_mmoe runs")
    parser.add_argument("--out", type=Path, help="where to draw the figure (PNG); default: SWEEP/synthetic_correlation.png")
    args = parser.parse_args()
    errors = test_errors(args.sweep)
    print(table(errors))
    plot(errors, args.out or args.sweep / "synthetic_correlation.png")


if __name__ == "__main__":
    main()
