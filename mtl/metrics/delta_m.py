"""Δm%: the average relative change of every metric against a baseline, signed so that a loss of
performance is positive (Maninis, Radosavovic, Kokkinos 2019, "Attentive Single-Tasking of
Multiple Tasks", arXiv:1904.08918; the summary score of LibMTL, Nash-MTL and FAMO)::

    Δm% = 100 / N * sum over the N (task, metric) pairs of (-1)^h (M - B) / B

with ``h = 1`` when a higher value of the metric is better, ``M`` the method's value and ``B`` the
baseline's (usually single-task training). Lower is better; a negative Δm% beats the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

Scores = Mapping[str, Mapping[str, float]]
"""``{task: {metric: value}}``, as in ``results.json``."""


def delta_m(scores: Scores, baselines: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]) -> float:
    """Δm% of ``scores`` against ``baselines`` over every metric that ``higher_is_better`` lists."""
    changes = []
    for task, directions in higher_is_better.items():
        for metric, higher in directions.items():
            value, baseline = _lookup(scores, task, metric, "scores"), _lookup(baselines, task, metric, "baselines")
            if baseline == 0:
                raise ValueError(f"the baseline of {task}/{metric} is 0, so its relative change is undefined")
            sign = -1.0 if higher else 1.0
            changes.append(sign * (value - baseline) / abs(baseline))
    if not changes:
        raise ValueError("higher_is_better names no metric to compare")
    return 100.0 * sum(changes) / len(changes)


def check_baselines(baselines: Scores, higher_is_better: Mapping[str, Mapping[str, bool]]) -> None:
    """Refuse, before any training, baselines that lack a (task, metric) pair Δm% needs."""
    missing = [f"{task}/{metric}" for task, directions in higher_is_better.items() for metric in directions if metric not in baselines.get(task, {})]
    if missing:
        raise ValueError(f"the baselines lack {missing}; they have {({task: sorted(values) for task, values in baselines.items()})}")


def _lookup(scores: Scores, task: str, metric: str, what: str) -> float:
    try:
        return float(scores[task][metric])
    except KeyError:
        available = {name: sorted(values) for name, values in scores.items()}
        raise KeyError(f"{what} lack {task}/{metric}; they have {available}") from None
