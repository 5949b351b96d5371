"""Checkpoints are read as data, never as code.

Every checkpoint that ``mtl`` opens is loaded with ``torch.load(..., weights_only=True)``, which
rebuilds tensors and plain containers only and refuses a pickle that names any other object (the
way a downloaded file could run code). The run configuration travels inside the checkpoint as
plain containers, so that load is enough. A file that is not one of ours is refused with one line,
``ckpt_path=...: not a readable mtl checkpoint (<reason>)``, before Lightning sees it.
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


class UnreadableCheckpoint(ValueError):
    """A ``ckpt_path`` that is not a readable ``mtl`` checkpoint; the message is the one line a user sees."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"ckpt_path={path}: not a readable mtl checkpoint ({reason})")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded as data on the CPU, with its run configuration
    (``checkpoint["hyper_parameters"]["config"]``); raises ``UnreadableCheckpoint`` otherwise."""
    if not Path(path).is_file():
        raise UnreadableCheckpoint(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the reason below says it
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnreadableCheckpoint(path, refused_object(str(error))) from None
    except EOFError:
        raise UnreadableCheckpoint(path, "the file is empty or cut short") from None
    except RuntimeError as error:
        raise UnreadableCheckpoint(path, str(error).split(". ")[0]) from None
    except Exception as error:  # noqa: BLE001 - whatever a foreign file makes the unpickler raise
        raise UnreadableCheckpoint(path, f"not a PyTorch checkpoint: {type(error).__name__}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(path, "it holds no state_dict")
    if not isinstance(checkpoint.get("hyper_parameters"), dict) or not checkpoint["hyper_parameters"].get("config"):
        raise UnreadableCheckpoint(path, "it holds no run configuration; was it written by mtl-train?")
    return checkpoint


def refused_object(message: str) -> str:
    """The short reason of a weights-only unpickler's refusal: the callable it would have had to run."""
    named = re.search(r"GLOBAL ([\w.]+)", message)
    if named:
        return f"it would call {named.group(1)}; checkpoints are read as data only"
    return "it holds objects other than tensors and plain containers; checkpoints are read as data only"
