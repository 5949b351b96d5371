"""One measurement of ``bench_step.py``: a step's median time and peak memory, in a fresh process
(a helper module, not a script).

Every measurement runs in its own process, forked from a ``multiprocessing`` fork server that has
imported torch, ``mtl`` and the peers once (so a measurement starts in well under a second, and
no measurement inherits another's memory, allocator caches or CUDA context; CUDA is initialized
in the measuring process only). The process builds the batch, marks the memory level, builds the
model, the method and the optimizer, runs ``warmup`` untimed and ``steps`` timed steps (each
timed from start to end, waiting for the device), and reports the median and the peak:

- on CUDA: ``torch.cuda.max_memory_allocated()`` over the steps, less the memory allocated at
  the mark (the batch): the tensors of the model, the optimizer, the activations, the gradients
  and the Jacobian, as PyTorch's allocator counts them;
- on CPU: the process's peak resident set size (``VmHWM``, reset at the mark by writing ``5`` to
  ``/proc/self/clear_refs``, Linux only) less its resident size at the mark. It counts every byte
  the step touches, the tensors and the libraries' working memory (numpy, scipy, cvxpy) alike.
  Where ``/proc/self/clear_refs`` cannot be written, memory is not measured.

``SameProcess`` runs the measurements one after the other in the calling process instead: on
CUDA the allocator's statistics stay exact and no measurement pays for a new CUDA context, but a
crash stops the benchmark, there is no timeout, and CPU memory is not measured (a used process
reuses memory it freed without raising its resident size).
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch

import bench_peers
from bench_setups import SETUPS
from bench_steps import FLAT, flat_mtl_step, mtl_step
from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.methods import method_class
from mtl.task_chunks import first_line

PRELOAD = ["__main__", "bench_measure", "torchjd.autojac", "torchjd.aggregation", "torchjd.scalarization"]
"""Modules the fork server imports once (a missing peer is skipped by the fork server)."""


@dataclass(frozen=True)
class Spec:
    """What to measure: ``variant`` is ``ew``, a mode of ``bench_steps.MODES``, ``weighted`` (a loss
    weighting) or a peer's name."""

    setup: str
    method: str
    variant: str
    batch_size: int
    warmup: int
    steps: int
    threads: int
    device: str
    chunk: int | None = None
    """``jacobian.chunk`` of the engine's modes (None: every task in one batched call)."""


class PeakMemory:
    """The peak memory above a mark, as the module docstring describes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0
        self.unavailable: str | None = None

    @staticmethod
    def description(device: torch.device, fresh_process: bool = True) -> str:
        if device.type == "cuda":
            return "torch.cuda.max_memory_allocated over the steps, less the allocation before the model was built"
        if not fresh_process:
            return "not measured: CPU memory is measured only in a fresh process (--isolation process)"
        return "peak resident set size (VmHWM, reset through /proc/self/clear_refs) of a fresh process over the steps, less its resident size before the model was built"

    def mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.start_bytes = _status_bytes("VmRSS")
        except OSError as error:
            self.unavailable = f"cannot reset the peak resident size ({error})"

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.start_bytes
        if self.unavailable:
            return None
        return _status_bytes("VmHWM") - self.start_bytes


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def prime(device: torch.device) -> None:
    """Start the device's libraries before the memory mark (thread pools; on CUDA the cuBLAS handles
    of the forward and the backward thread, whose workspaces stay allocated), so that no
    measurement counts them, whichever runs first in a process.

    NumPy's OpenBLAS too: a process forked from the fork server has none of its threads until a
    multithreaded call starts them again, and until then the methods' solves, which run on one
    BLAS thread (``mtl.methods.base.single_threaded_blas``), took about twice as long (BENCHMARKS.md);
    a process started any other way, as ``mtl-train`` is, does not have that state."""
    weight = torch.ones(4, 3, 3, 3, device=device, requires_grad=True)
    features = torch.nn.functional.conv2d(torch.ones(2, 3, 8, 8, device=device), weight).flatten(1)
    (features @ features.T).sum().backward()
    square = np.ones((256, 256))
    square @ square


def measure(spec: Spec, fresh_process: bool = True) -> dict:
    """The measurement in this process: a record with ``status`` ``ok``, ``n/a`` (the combination
    cannot be built: the error says why) or ``failed`` (a step raised). CPU memory is measured only
    in a ``fresh_process`` (a used process reuses memory it freed without raising its resident size)."""
    started = time.perf_counter()
    retain_freed_host_memory()  # as mtl-train does: every column runs with the same allocator settings
    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    setup = SETUPS[spec.setup]
    record: dict = {**asdict(spec), "status": "ok"}
    peer = spec.variant in bench_peers.PEER_NAMES
    if spec.variant == "libmtl":
        bench_peers.import_libmtl()  # imported before the mark: its import is not the step's memory
    prime(device)
    batch = setup.batch(spec.batch_size, device)
    memory = PeakMemory(device)
    if fresh_process or device.type == "cuda":
        memory.mark()
    else:
        memory.unavailable = PeakMemory.description(device, fresh_process=False)
    stage = "build"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = setup.model().to(device)
            tasks = setup.tasks()
            if peer:
                step, details = bench_peers.STEPS[spec.variant](model, tasks, spec.method, batch), dict
            elif spec.method == FLAT:
                step, details = flat_mtl_step(model, tasks, spec.variant, batch), dict
            else:
                method = method_class(spec.method)(len(tasks)).to(device) if spec.method != "ew" else None
                step, details = mtl_step(model, tasks, method, spec.variant, batch, spec.chunk)
            stage = "step"
            timings = interleaved_rounds({"step": step}, spec.warmup, spec.steps, device)["step"]
        record.update(median_seconds=statistics.median(timings), seconds=timings, peak_bytes=memory.peak_bytes(), **details())
        record["warnings"] = sorted({str(warning.message).splitlines()[0] for warning in caught})
    except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the benchmark
        record.update(status="n/a" if stage == "build" else "failed", error=f"{type(error).__name__}: {first_line(error)}")
        record["traceback"] = traceback.format_exc(limit=-3)
    if memory.unavailable:
        record["memory_unavailable"] = memory.unavailable
    record["wall_seconds"] = time.perf_counter() - started
    return record


def _measure_and_send(spec: Spec, connection: Connection) -> None:
    connection.send(measure(spec))
    connection.close()


class SameProcess:
    """Runs each measurement in this process (no timeout; no CPU memory): quicker on CUDA, where
    every fresh process pays for a new CUDA context."""

    def measure(self, spec: Spec) -> dict:
        record = measure(spec, fresh_process=False)
        gc.collect()
        if torch.device(spec.device).type == "cuda":
            torch.cuda.empty_cache()
        return record


class FreshProcesses:
    """Runs each measurement in a new process forked from one fork server."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)

    def measure(self, spec: Spec) -> dict:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_measure_and_send, args=(spec, sender), name=f"measure {spec.setup} {spec.method} {spec.variant}")
        process.start()
        sender.close()
        try:
            if receiver.poll(self.timeout):
                return receiver.recv()
            process.kill()
            return {**asdict(spec), "status": "failed", "error": f"timed out after {self.timeout:.0f} s"}
        except EOFError:
            process.join()
            return {**asdict(spec), "status": "failed", "error": f"the measuring process died with exit code {process.exitcode} (out of memory?)"}
        finally:
            process.join()
            receiver.close()
