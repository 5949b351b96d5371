"""Checkpoints are read as data, never as code.

Every checkpoint that ``mtl`` opens is loaded with ``torch.load(..., weights_only=True)``, which
rebuilds tensors and plain containers only and refuses a pickle that names any other object (the
way a downloaded file could run code). The run configuration travels inside the checkpoint as
plain containers, so that load is enough. A file that is not one of ours is refused with one line,
``ckpt_path=...: not a readable mtl checkpoint (<reason>)``, before Lightning sees it.

A resume (``ckpt_path``) continues the run that wrote the checkpoint, so the choices that make a
run what it is (``RUN_DEFINING``) must match; a checkpoint of another run stops with the keys
that differ. ``init_from`` takes the model weights alone and starts fresh optimizer and method state.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

WEIGHTS_ONLY = True
"""What every ``trainer.fit``/``trainer.test`` of a checkpoint passes to Lightning: stated, not left
to the default of the installed torch (or to ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``)."""


RUN_DEFINING = ("data._target_", "model", "method", "sam", "optimizer._target_")
"""The parts of the run configuration a resume must share with the checkpoint: the data (and so the
tasks), the whole model and method, the sharpness-aware step, and the optimizer's class (whose
state the checkpoint holds). Paths, budgets and learning rates may change."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message is the one line a user sees."""


class UnreadableCheckpoint(CheckpointError):
    """A file that is not a readable ``mtl`` checkpoint."""

    def __init__(self, path: str | Path, reason: str, key: str = "ckpt_path") -> None:
        super().__init__(f"{key}={path}: not a readable mtl checkpoint ({reason})")


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded as data on the CPU, with its run configuration
    (``checkpoint["hyper_parameters"]["config"]``); raises ``UnreadableCheckpoint`` otherwise,
    naming the config ``key`` that gave the path."""
    if not Path(path).is_file():
        raise UnreadableCheckpoint(path, "no such file", key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the reason below says it
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnreadableCheckpoint(path, refused_object(str(error)), key) from None
    except EOFError:
        raise UnreadableCheckpoint(path, "the file is empty or cut short", key) from None
    except RuntimeError as error:
        raise UnreadableCheckpoint(path, str(error).split(". ")[0], key) from None
    except Exception as error:  # noqa: BLE001 - whatever a foreign file makes the unpickler raise
        raise UnreadableCheckpoint(path, f"not a PyTorch checkpoint: {type(error).__name__}", key) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(path, "it holds no state_dict", key)
    if not isinstance(checkpoint.get("hyper_parameters"), dict) or not checkpoint["hyper_parameters"].get("config"):
        raise UnreadableCheckpoint(path, "it holds no run configuration; was it written by mtl-train?", key)
    return checkpoint


def refused_object(message: str) -> str:
    """The short reason of a weights-only unpickler's refusal: the callable it would have had to run."""
    named = re.search(r"GLOBAL ([\w.]+)", message)
    if named:
        return f"it would call {named.group(1)}; checkpoints are read as data only"
    return "it holds objects other than tensors and plain containers; checkpoints are read as data only"


def check_resumable(checkpoint: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume from a checkpoint whose run differs from this one in ``RUN_DEFINING``,
    with every differing key and its two values, and the way to start from its weights alone."""
    stored = checkpoint["hyper_parameters"]["config"]
    differences = [
        f"{key}: {value(stored, key)} in the checkpoint, {value(config, key)} here"
        for part in RUN_DEFINING
        for key in sorted(leaf_keys(value(stored, part), part) | leaf_keys(value(config, part), part))
        if value(stored, key) != value(config, key)
    ]
    if differences:
        raise CheckpointError(
            f"ckpt_path={path} was written by a different run ({'; '.join(differences)}); resume with the checkpoint's "
            f"settings, or start from its model weights alone with init_from={path} (fresh optimizer and method state)"
        )


def load_model_weights(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """``init_from``: the checkpoint's model weights into ``model``, which must have exactly its
    tensors (names and shapes); the error names every one that differs."""
    weights = {name.removeprefix("model."): tensor for name, tensor in checkpoint["state_dict"].items() if name.startswith("model.")}
    own = model.state_dict()
    problems = [f"{name} missing from the checkpoint" for name in own if name not in weights]
    problems += [f"{name} not in this model" for name in weights if name not in own]
    problems += [
        f"{name} {tuple(weights[name].shape)} in the checkpoint, {tuple(tensor.shape)} here"
        for name, tensor in own.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    if problems:
        raise CheckpointError(f"init_from={path} does not fit this model: {'; '.join(problems)}")
    model.load_state_dict(weights)


def value(config: Any, key: str) -> Any:
    """The value at the dotted ``key`` of a nested dict, None where it is missing."""
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def leaf_keys(config: Any, prefix: str) -> set[str]:
    """The dotted keys of every leaf of ``config`` under ``prefix`` (``prefix`` itself for a leaf)."""
    if not isinstance(config, dict) or not config:
        return {prefix}
    return {key for name, child in config.items() for key in leaf_keys(child, f"{prefix}.{name}")}
