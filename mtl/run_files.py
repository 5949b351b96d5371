"""What a run leaves in its output directory: the resolved config, the code version, the results.

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves a truncated file behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import mtl

PACKAGE_DIR = Path(mtl.__file__).resolve().parent


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def git_state(directory: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """The commit checked out at ``directory`` and whether the tree has changes, or None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


def write_run_files(output_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml`` (resolved) and ``run_info.json`` (code version, command, environment)."""
    write_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(
        output_dir / "run_info.json",
        {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "git": git_state(),
            "mtl": mtl.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "host": platform.node(),
        },
    )


def tested_metrics(per_loader: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of a ``trainer.test``, which returns a dict per test loader (a loader per task
    for a batch-per-task data module), each holding every metric logged at the end of the epoch."""
    return {key: value for metrics in per_loader for key, value in metrics.items()}


def nest_metrics(flat: dict[str, float], stage: str) -> dict[str, dict[str, float]]:
    """``{"test/left/accuracy": 0.9}`` -> ``{"left": {"accuracy": 0.9}}`` for one ``stage``."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            nested.setdefault(parts[1], {})[parts[2]] = float(value)
    return nested
