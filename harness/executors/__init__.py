"""Executors: where the folds of a case run (``serial``, ``process``, ``ray``); the interface
and the local ones are in :mod:`harness.executors.base`, Ray's in :mod:`harness.executors._ray`.
"""

from __future__ import annotations

from harness.executors.base import (
    DEFAULT_RETRIES,
    EXECUTORS,
    Executor,
    ExecutorError,
    ProcessExecutor,
    Resources,
    SerialExecutor,
    WorkerLost,
    usable_cores,
)

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "ProcessExecutor",
    "Resources",
    "SerialExecutor",
    "WorkerLost",
    "create",
    "usable_cores",
]


def create(
    name: str,
    *,
    workers: int | None = None,
    address: str | None = None,
    retries: int = DEFAULT_RETRIES,
    where: str = "executor",
) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`); ``where`` names the setting in
    errors. ``workers`` sizes the process pool; ``address`` is the Ray cluster to join."""
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers, retries=retries)
    if name == "ray":
        from harness.executors._ray import RayExecutor

        return RayExecutor(address, retries=retries, where=where)
    raise ExecutorError(f"{where} = {name!r}: must be one of {', '.join(EXECUTORS)}")
