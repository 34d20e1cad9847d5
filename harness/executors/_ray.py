"""The ``ray`` executor: each job of a map is one Ray task with declared resources.

The cluster is ``address`` (``host:port`` of a ``ray start --head`` GCS, ``ray://host:port``
for Ray Client, ``auto``), else ``$RAY_ADDRESS``, else a local Ray instance that this executor
starts (no dashboard, :func:`harness.executors.usable_cores` CPUs) and stops on :meth:`close`.
A Ray the caller already initialized in this process is used as it is and left running.

Every task runs in a Ray worker started for its ``runtime_env``, whose ``env_vars`` carry

- this process's numerics (:mod:`harness.numerics`: the portable pins, or, in native mode, the
  names of the pins a worker must drop if its node's environment carries them), set before the
  worker imports anything, so torch is imported under them;
- ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = the job's ``cpus``;
- ``PYTHONPATH`` = this process's import path (its own interpreter's directories left out), so
  a suite's modules next to its file import in the workers of this machine.

Ray starts dedicated workers for each distinct ``runtime_env`` and ends a job's workers when the
driver disconnects. A node other than this machine must have prune-harness (and the suite's
imports) installed in the same Python and Ray versions, and the suite's files at the same paths
(a shared file system, or the same checkout at the same place): only the jobs travel, as pickles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from harness import numerics
from harness._util import one_line, redact
from harness.executors.base import ExecutorError, Resources, WorkerLost, _label, usable_cores

__all__ = ["CONNECT_TIMEOUT", "RayExecutor"]

J = TypeVar("J")
R = TypeVar("R")

CONNECT_TIMEOUT = 60.0  # seconds: a cluster that does not answer by then is reported
PROBE_TIMEOUT = 5.0  # seconds: the TCP check that something listens at the address
_ONE_CPU = Resources()


def _call(fn: Callable[[J], R], job: J) -> R:
    """What every Ray task runs (one remote function for any ``fn``)."""
    return fn(job)


class RayExecutor:
    """Jobs as Ray tasks, ``resources.cpus`` CPUs and ``resources.gpus`` GPUs each.

    Parameters
    ----------
    address : str or None
        The cluster to join; None: ``$RAY_ADDRESS``, else a local instance started on first use.
    retries : int
        How often a task whose worker or node died is run again (Ray's ``max_retries``); an
        exception raised by the job's function is never retried.
    where : str
        The setting that chose this executor, for error messages.

    Raises
    ------
    ExecutorError
        If Ray is not installed; on the first :meth:`map`, if the cluster cannot be reached.
    """

    name = "ray"

    def __init__(self, address: str | None, *, retries: int, where: str) -> None:
        try:
            import ray
        except ImportError as err:
            if err.name == "ray":
                raise ExecutorError(
                    f"{where} = \"ray\": Ray is not installed (pip install 'prune-harness[ray]')"
                ) from None
            raise ExecutorError(f'{where} = "ray": Ray cannot be imported ({err})') from err
        if retries < 0:
            raise ExecutorError(f"retries = {retries}: must be >= 0")
        self._ray: Any = ray
        self.address, self.retries, self.where = address, retries, where
        self._started = False  # this executor initialized Ray (and shuts it down on close)
        self._local_cpus: int | None = None  # the CPUs of the local instance it started
        self._remote: Any = None

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return  # the caller's Ray, or ours from an earlier map
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            cpus = usable_cores()
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
            self._local_cpus = cpus
        else:
            self._join(address)
            self._local_cpus = None
        self._started = True

    def _join(self, address: str) -> None:
        shown = redact(address)
        what = f'{self.where} = "ray": no Ray cluster at {shown}'
        target = _bootstrap(address)
        if target is not None:
            try:
                socket.create_connection(target, timeout=PROBE_TIMEOUT).close()
            except OSError as err:
                raise ExecutorError(
                    f"{what} ({target[0]}:{target[1]}: {err.strerror or err}); start one with "
                    "`ray start --head` or fix the address (the head's GCS port, 6379 by default)"
                ) from None
        outcome: list[BaseException | None] = []

        def init() -> None:
            try:
                self._ray.init(address=address, logging_level=logging.WARNING)
            except BaseException as err:
                outcome.append(err)
            else:
                outcome.append(None)

        # Ray's GCS client retries forever when something other than a GCS listens there, so
        # the connection is made in a thread that is given up on (Ray warns, uselessly here,
        # that a thread other than the main one cannot install its SIGTERM handler)
        thread = threading.Thread(target=init, name="harness-ray-connect", daemon=True)
        log = logging.getLogger("ray._private.worker")
        log.addFilter(_not_sigterm)
        try:
            thread.start()
            thread.join(CONNECT_TIMEOUT)
        finally:
            log.removeFilter(_not_sigterm)
        if not outcome:
            raise ExecutorError(
                f"{what}: nothing answered as a Ray GCS within {CONNECT_TIMEOUT:.0f} s; give the "
                "head's GCS address (`ray start --head` prints it; not the dashboard's port)"
            )
        if (failure := outcome[0]) is not None:
            if _needs_token(failure):
                raise ExecutorError(
                    f'{self.where} = "ray": the Ray cluster at {shown} requires its token; set '
                    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or the token in ~/.ray/auth_token) "
                    "in this environment"
                ) from failure
            raise ExecutorError(
                f"{what} ({type(failure).__name__}: {_first_line(failure)})"
            ) from failure

    # -- running ------------------------------------------------------------------------------

    def _options(self, resources: Resources) -> dict[str, Any]:
        cpus = resources.cpus
        if self._local_cpus is not None:  # our own instance cannot grow: use what it has
            cpus = min(cpus, self._local_cpus)
            have = self._ray.cluster_resources().get("GPU", 0.0)
            if resources.gpus > have:
                raise ExecutorError(
                    f'{self.where} = "ray": a job needs {resources.gpus:g} GPU(s) and the local '
                    f"Ray instance has {have:g}; give the address of a cluster with GPUs"
                )
        else:
            self._warn_infeasible(resources)
        threads = str(resources.cpus)
        env = {
            **_numerics_env(numerics.current().requested),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONPATH": _import_path(),
        }
        return {
            "num_cpus": cpus,
            "num_gpus": resources.gpus,
            "max_retries": self.retries,
            "retry_exceptions": False,
            "runtime_env": {"env_vars": env},
        }

    def _warn_infeasible(self, resources: Resources) -> None:
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        if any(
            n.get("CPU", 0.0) >= resources.cpus and n.get("GPU", 0.0) >= resources.gpus
            for n in nodes
        ):
            return
        biggest: dict[str, float] = max(
            nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={}
        )
        warnings.warn(
            f'{self.where} = "ray": no node of the Ray cluster has {resources.cpus} CPU(s) and '
            f"{resources.gpus:g} GPU(s) (the largest: {biggest.get('CPU', 0.0):g} CPU(s), "
            f"{biggest.get('GPU', 0.0):g} GPU(s)); the jobs wait until such a node joins",
            stacklevel=3,
        )

    def map(
        self,
        fn: Callable[[J], R],
        jobs: Sequence[J],
        *,
        resources: Resources = _ONE_CPU,
        label: Callable[[int], str] = _label,
    ) -> list[R]:
        if not jobs:
            return []
        self._connect()
        ray = self._ray
        if self._remote is None:
            self._remote = ray.remote(_call)
        task = self._remote.options(**self._options(resources))
        refs = [task.remote(fn, job) for job in jobs]
        results: list[R] = []
        try:
            for i, ref in enumerate(refs):
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayTaskError as err:  # the job's own exception
                    cause = err.cause
                    if isinstance(cause, BaseException) and not isinstance(
                        cause, ray.exceptions.RayError
                    ):
                        raise cause from err
                    raise err.as_instanceof_cause() from None
                except _lost(ray) as err:  # its worker or node died, every time
                    raise WorkerLost(
                        f"{label(i)}: its Ray worker or node was lost {self.retries + 1} time(s) "
                        f"({type(err).__name__}: {_first_line(err)}); the worker logs are in the "
                        "Ray session's logs directory (`ray logs cluster`)"
                    ) from None
                except ray.exceptions.RayError as err:  # cancelled, runtime_env failed, ...
                    raise ExecutorError(
                        f"{label(i)}: Ray could not run it ({type(err).__name__}: "
                        f"{_first_line(err)})"
                    ) from None
        except BaseException:
            _cancel(ray, refs[len(results) :])
            raise
        return results

    def close(self) -> None:
        """Shut Ray down if this executor initialized it (idempotent)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started, self._local_cpus, self._remote = False, None, None


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel the jobs of ``refs`` still queued or running: the map failed, they are not needed.

    Never one that has ended, the failed one whose end :func:`ray.get` just reported included:
    Ray may still be settling that task's retries, and a cancel racing a retry fails a check in
    the driver's Ray core, which ends the whole process (ray-project/ray#54260). When Ray cannot
    tell which have ended, none is cancelled (a cancel saves cluster time, nothing more).
    """
    if not refs:
        return
    try:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    except Exception:
        return
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref)


def _lost(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose worker process or node went away."""
    names = (
        "WorkerCrashedError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",  # and its kinds: OwnerDiedError, ObjectReconstructionFailedError...
        "OutOfMemoryError",  # Ray's memory monitor killed the worker
    )
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _not_sigterm(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def _needs_token(err: BaseException) -> bool:
    """Whether the cluster refused this process for want of its authentication token (Ray
    reports it inside a ``ConnectionError``'s chain, as text)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return redact(one_line(text.splitlines()[0])) if text else repr(err)


def _bootstrap(address: str) -> tuple[str, int] | None:
    """The ``(host, port)`` Ray will connect to for ``address`` (it resolves ``localhost`` and
    ``127.0.0.1`` to this node's IP, ``auto`` to the cluster last started here), or None."""
    target = address.split("://", 1)[-1]  # ray://host:port: Ray Client
    try:
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(target) or ""
    except Exception:  # moved in this Ray; or "auto" and no cluster recorded: Ray says so
        pass
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _numerics_env(mode: str) -> dict[str, str]:
    """The variables that give a worker ``mode``'s numerics as this process has them.

    Built from this process's own numeric variables (so the ones the user set travel too).
    Ray can set variables but not unset them, so :data:`numerics.ENV_PINNED` names every pin
    the user did not set: a worker whose node's environment carries one (a cluster started
    from a portable-mode shell) drops it when it imports harness, in native mode.
    """
    names = (*numerics.VARIABLES, numerics.ENV_MODE, numerics.ENV_PINNED)
    env = {k: os.environ[k] for k in names if k in os.environ}
    state = numerics.configure(mode, environ=env)
    env[numerics.ENV_PINNED] = ",".join(k for k in numerics.PINS if k not in state.user_set)
    return env


def _import_path() -> str:
    """This process's ``sys.path`` as ``PYTHONPATH``, without its interpreter's directories
    (the standard library, site-packages): a worker has its own, and on another node the
    driver's would shadow them."""
    prefixes = {
        os.path.realpath(p)
        for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)
    }
    paths: list[str] = []
    for entry in sys.path:
        if not isinstance(entry, str) or not entry:
            continue
        path = os.path.realpath(entry)
        if any(path == p or path.startswith(p + os.sep) for p in prefixes) or path in paths:
            continue
        paths.append(path)
    return os.pathsep.join(paths)
