"""The executor interface and the local executors (:mod:`harness.executors` re-exports them).

Executors: where the folds of a case run. One interface, three implementations:

- ``serial``: in this process, one fold after the other (the default);
- ``process``: a pool of long-lived child processes on this machine, each with this process's
  numerics and ``cpus`` threads, as many as the cores allow (divided among xdist workers, so
  ``-n 2`` with ``executor = "process"`` does not oversubscribe the CPU);
- ``ray``: Ray tasks with declared resources (``num_cpus``, ``num_gpus``) on an existing cluster
  (``address``, else ``$RAY_ADDRESS``) or a local one (:mod:`harness.executors._ray`).

A job is a picklable value and its function an importable one; :meth:`Executor.map` returns the
results in job order. An exception raised by the function is the job's answer and propagates
(it is not retried: the same inputs would fail again). A worker that dies (killed, out of
memory, its node lost) is replaced and its job retried up to ``retries`` times; then
:class:`WorkerLost` names the job in one line. Results of jobs that finished are never dropped:
the caller (the pytest controller, the CLI) is the one place that logs and writes baselines.

This module imports nothing heavy; Ray is imported only when a ray executor is created.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from harness._util import HarnessError
from harness.spec import EXECUTORS

__all__ = [
    "DEFAULT_RETRIES",
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "ProcessExecutor",
    "Resources",
    "SerialExecutor",
    "WorkerLost",
    "usable_cores",
]

J = TypeVar("J")
R = TypeVar("R")

DEFAULT_RETRIES = 2


class ExecutorError(HarnessError):
    """An executor cannot be created (unknown name, Ray missing or unreachable); one line."""


class WorkerLost(HarnessError):
    """A job's worker died more often than the retries allow; one line naming the job."""


@dataclass(frozen=True)
class Resources:
    """What one job needs: CPU threads and GPUs (Ray's ``num_cpus`` / ``num_gpus``)."""

    cpus: int = 1
    gpus: float = 0.0


class Executor(Protocol):
    name: str

    def map(
        self,
        fn: Callable[[J], R],
        jobs: Sequence[J],
        *,
        resources: Resources = ...,
        label: Callable[[int], str] = ...,
    ) -> list[R]:
        """``[fn(job) for job in jobs]``, run where this executor runs things."""
        ...

    def close(self) -> None:
        """Release the workers (idempotent)."""
        ...


def _label(i: int) -> str:
    return f"job {i}"


class SerialExecutor:
    """Every job in this process, in order."""

    name = "serial"

    def map(
        self,
        fn: Callable[[J], R],
        jobs: Sequence[J],
        *,
        resources: Resources = Resources(),
        label: Callable[[int], str] = _label,
    ) -> list[R]:
        return [fn(job) for job in jobs]

    def close(self) -> None:
        pass


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, divided among the pytest-xdist workers
    of the session (each worker runs its own executor)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        xdist = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        xdist = 1
    return max(1, cores // xdist)


class ProcessExecutor:
    """Jobs in long-lived child processes of this machine (``python -m harness._child``, the
    numerics children of :mod:`harness.numerics`): this process's numerics mode, ``cpus``
    threads each (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set before torch is imported), and
    ``workers`` of them (default: :func:`usable_cores` // ``cpus``). Children stay up between
    calls, so what they load (datasets, dense models) is reused by the next case."""

    name = "process"

    def __init__(self, workers: int | None = None, *, retries: int = DEFAULT_RETRIES) -> None:
        if workers is not None and workers < 1:
            raise ExecutorError(f"workers = {workers}: must be >= 1")
        self.workers, self.retries = workers, retries
        self._idle: dict[int, queue.SimpleQueue[Any]] = {}  # per thread count: idle children
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self.restarts = 0

    def _size(self, cpus: int) -> int:
        return self.workers if self.workers is not None else max(1, usable_cores() // cpus)

    def _child(self, cpus: int) -> Any:
        from harness import numerics

        idle = self._idle.setdefault(cpus, queue.SimpleQueue())
        try:
            return idle.get_nowait()
        except queue.Empty:
            pass
        threads = str(cpus)
        base = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        child = numerics.Child(numerics.current().requested, base=base)
        with self._lock:
            self._all.append(child)
        return child

    def _release(self, cpus: int, child: Any) -> None:
        self._idle[cpus].put(child)

    def _run(self, fn: Callable[[J], R], job: J, cpus: int, what: str) -> R:
        from harness import numerics

        attempt = 0
        while True:
            child = self._child(cpus)
            try:
                result = child.call(fn, job)
            except numerics.ChildError as err:
                child.close()
                with self._lock:
                    self._all.remove(child)
                    self.restarts += 1
                attempt += 1
                if attempt > self.retries:
                    raise WorkerLost(
                        f"{what}: its worker process died {attempt} times ({err}); the "
                        "results of the other jobs are kept"
                    ) from None
                continue
            except BaseException:
                self._release(cpus, child)  # the job's own error: the child is fine
                raise
            self._release(cpus, child)
            return result

    def map(
        self,
        fn: Callable[[J], R],
        jobs: Sequence[J],
        *,
        resources: Resources = Resources(),
        label: Callable[[int], str] = _label,
    ) -> list[R]:
        if not jobs:
            return []
        size = min(self._size(resources.cpus), len(jobs))
        with ThreadPoolExecutor(size, thread_name_prefix="harness-process") as pool:
            futures: list[Future[R]] = [
                pool.submit(self._run, fn, job, resources.cpus, label(i))
                for i, job in enumerate(jobs)
            ]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()  # a job failed: the queued ones are not started
            wait(futures)
            for future in futures:  # the first failure in job order is the one raised
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def close(self) -> None:
        with self._lock:
            children, self._all = self._all, []
        for child in children:
            child.close()
        self._idle.clear()
