"""Chunks of tasks for a batched (vmapped) call, which halve when the call runs out of memory.

The memory of a call that vmaps over tasks grows with its tasks. The Jacobian engine's
``batched`` mode (``jacobian.chunk``) and F-MTL's ``sam.batched`` (``sam.chunk``) run their tasks
in chunks, and a call of several tasks that runs out of memory runs again in halves.
"""

from __future__ import annotations

import math
import warnings


def halved_chunk(tasks: int, error: BaseException, setting: str, chunk_option: str) -> int:
    """The chunk after a call of ``tasks`` (more than one) ran out of memory: half of them, rounded
    up. Warns, naming the ``setting`` that made the call and the ``chunk_option`` now in use."""
    chunk = math.ceil(tasks / 2)
    warnings.warn(f"{setting} ran out of memory with {tasks} tasks in one call ({first_line(error)}); using {chunk_option}={chunk}", RuntimeWarning, stacklevel=3)
    return chunk


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, for a warning; its repr when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)
