"""Interleaved timing for the benchmark scripts (a helper module, not a script).

Every variant runs once per round, in turn, so that all of them share the machine's drift alike;
separate processes or one variant after the other do not (the 2-core machines are shared and
noisy). The record of a comparison is the ratio of medians measured this way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from rich.progress import track

CPU = torch.device("cpu")


def interleaved_rounds(
    runs: dict[str, Callable[[], object]], warmup: int, rounds: int, device: torch.device = CPU, description: str | None = None
) -> dict[str, list[float]]:
    """Seconds of every variant's run in each of ``rounds`` rounds after ``warmup`` untimed ones.
    On CUDA each run is timed from an idle device until the device has finished it. With a
    ``description``, a progress bar over the rounds."""
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timings: dict[str, list[float]] = {name: [] for name in runs}
    indices = range(warmup + rounds)
    for round_index in indices if description is None else track(indices, description=description):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            if round_index >= warmup:
                timings[name].append(time.perf_counter() - start)
    return timings
