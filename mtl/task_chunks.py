"""Chunks of tasks for a batched (vmapped) call, which halve when the call runs out of memory.

The memory of a call that vmaps over tasks grows with its tasks. The Jacobian engine's
``batched`` mode (``jacobian.chunk``) and F-MTL's ``sam.batched`` (``sam.chunk``) run their tasks
in chunks (``TaskChunks``), and a call of several tasks that runs out of memory runs again in halves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch


class TaskChunks:
    """How many tasks one batched call takes: ``size`` (None: all of them), halved for this and
    every later call when a call of several tasks runs out of memory. ``setting`` names what makes
    the calls and ``option`` the option that sets ``size``, for the warning."""

    def __init__(self, size: int | None, setting: str, option: str) -> None:
        self.size = size
        self.setting, self.option = setting, option

    def run(self, count: int, call: Callable[[range], None]) -> None:
        """``call(tasks)`` for consecutive ranges of the ``count`` tasks, ``size`` tasks each; a call
        that ran out of memory runs again in the smaller chunks it left (``halve``)."""
        start = 0
        while start < count:
            tasks = range(start, min(start + (self.size or count), count))
            try:
                call(tasks)
            except torch.OutOfMemoryError as error:
                self.halve(len(tasks), error)
                continue
            start = tasks.stop

    def halve(self, tasks: int, error: torch.OutOfMemoryError) -> None:
        """After a call of ``tasks`` ran out of memory: half as many per call, with a warning. A
        call of one task cannot be cut, and its ``error`` is raised again."""
        if tasks == 1:
            raise error
        self.size = math.ceil(tasks / 2)
        warnings.warn(f"{self.setting} ran out of memory with {tasks} tasks in one call ({first_line(error)}); using {self.option}={self.size}", RuntimeWarning, stacklevel=4)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, for a warning; its repr when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)
