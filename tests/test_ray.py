"""The ray executor on a real Ray cluster of this machine: a head node and a second node (both
``ray start`` processes with 1 CPU, in a private temp dir), shared by the module's tests.

The jobs' functions live here, at module level: Ray pickles them by reference and its workers
import this module through the ``PYTHONPATH`` the executor gives them. Jobs that must run at the
same time on several nodes meet through marker files in a temporary directory (every node is
this machine).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
if not sys.platform.startswith("linux"):  # the cluster's processes are found through /proc
    pytest.skip("the Ray cluster tests run on Linux", allow_module_level=True)

from harness import numerics  # noqa: E402
from harness.executors import (  # noqa: E402
    ExecutorError,
    Resources,
    SerialExecutor,
    WorkerLost,
    create,
)
from harness.executors._ray import RayExecutor  # noqa: E402

# one worker under xdist (`--dist loadgroup`, as `nox -s tests` runs) runs this module: one cluster
# of ray processes on the machine at a time, whatever the number of workers
pytestmark = pytest.mark.xdist_group("ray-cluster")

WAIT = 90.0  # seconds: the longest any step of a test waits for the cluster
RAY = str(Path(sys.executable).with_name("ray"))


# -- a cluster on this machine ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it (its pid, its session's id, stays taken
    until :meth:`Cluster.kill` reaps it)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass
class Cluster:
    """``ray start`` processes of one Ray cluster, each the leader of its own session.

    ``record``: a file naming the cluster's directory and its sessions, for conftest's report
    of an xdist worker that dies mid-test (it adds the logs and stops the orphaned cluster).
    """

    temp_dir: Path
    port: int
    kill_sessions: Callable[[set[int]], None]
    record: Path | None = None
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a node; every port it listens on is a free one (Ray's defaults are fixed
        numbers: a second node or cluster on this machine would find them taken)."""
        ports = [f"--dashboard-agent-listen-port={_free_port()}"]
        if "--head" in args:
            ports.append(f"--dashboard-port={_free_port()}")
        log = (self.temp_dir / f"node-{len(self.nodes)}.log").open("wb")
        proc = subprocess.Popen(
            [RAY, "start", "--num-cpus=1", "--disable-usage-stats", "--block", *ports, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.nodes.append(proc)
        self._write_record()
        return proc

    def _write_record(self) -> None:
        """Name the directory and the sessions of the nodes not yet reaped (a reaped one's id
        may be another process's by now)."""
        if self.record is not None:
            sessions = [proc.pid for proc in self.nodes if proc.returncode is None]
            self.record.write_text("\n".join(map(str, [self.temp_dir, *sessions])))

    def log(self, i: int) -> str:
        return (self.temp_dir / f"node-{i}.log").read_text(errors="replace")[-2000:]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc``'s session and reap it; nothing once it was reaped.

        Until its leader is reaped a session's id is a pid no other process can get; after,
        the number is free again (this machine may give out only 32768) and a later
        ``ray start`` of another test can lead a session of that id.
        """
        if proc.returncode is not None:
            return
        self.kill_sessions({proc.pid})
        proc.wait(timeout=WAIT)
        self._write_record()

    def wait_alive(self, count: int) -> list[dict[str, Any]]:
        """The alive nodes, once there are ``count`` (this process must be connected)."""
        deadline = time.monotonic() + WAIT
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) == count:
                return alive
            if time.monotonic() > deadline:
                logs = "\n".join(self.log(i) for i in range(len(self.nodes)))
                pytest.fail(
                    f"{len(alive)} Ray nodes alive after {WAIT:.0f} s, not {count}:\n{logs}"
                )
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(kill_sessions: Callable[[set[int]], None]) -> Iterator[Cluster]:
    """A head node and a second node (custom resource ``second``), 1 CPU each."""
    # a short private temp dir: Ray's socket paths must stay under 108 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    logs = os.environ.get("HARNESS_TEST_RAY_LOGS")  # set by conftest
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    record = Path(logs, f"{worker}.cluster") if logs else None
    c = Cluster(temp_dir, _free_port(), kill_sessions, record)
    mp = pytest.MonkeyPatch()
    # no token authentication, whatever ~/.ray/auth_token holds: `ray start` turns it on when
    # that file exists (a local ray.init() writes it), and a driver then needs the token too
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.delenv("RAY_ADDRESS", raising=False)
    try:
        c.start("--head", f"--port={c.port}", "--include-dashboard=false", f"--temp-dir={temp_dir}")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", c.port), timeout=1).close()
                break
            except OSError:
                if _exited(c.nodes[0]) or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not start:\n{c.log(0)}")
                time.sleep(0.2)
        c.start(f"--address={c.address}", '--resources={"second": 1}')
        yield c
    finally:
        for proc in reversed(c.nodes):
            c.kill(proc)
        mp.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if c.record is not None:
            c.record.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def executor(cluster: Cluster) -> Iterator[RayExecutor]:
    """The module's executor, connected to :func:`cluster` (by its first map) with 2 nodes."""
    assert not ray.is_initialized()
    ex = RayExecutor(cluster.address, retries=2, where="executor")
    assert ex.map(_value, [3]) == [_value(3)]
    cluster.wait_alive(2)
    yield ex
    ex.close()
    assert not ray.is_initialized(), "close() left the Ray connection it made open"
    ex.close()  # idempotent


# -- the jobs (module level: the workers import them from here) -----------------------------


def _value(i: int) -> float:
    return (i * 7919 % 101) / 7.0


def _node() -> str:
    import ray as r

    return str(r.get_runtime_context().get_node_id())


def _meet(where: Path, node: str, nodes: int) -> None:
    """Wait until jobs on ``nodes`` distinct nodes have reached this point, at most 30 s after
    the first one did (so jobs that never meet fail the test in 30 s, not 30 s each)."""
    (where / f"node-{node}").touch()
    while len(markers := list(where.glob("node-*"))) < nodes:
        if time.time() > min(p.stat().st_mtime for p in markers) + 30:
            return
        time.sleep(0.02)


def _initial_environment() -> dict[str, str]:
    """The environment this process was started with (before Python changed any of it)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def probe(job: tuple[int, str, int]) -> dict[str, Any]:
    """Job ``i``'s value, and what its worker saw (torch imported? the environment)."""
    torch_imported = "torch" in sys.modules  # first: nothing below imports torch
    i, where, nodes = job
    node = _node()
    _meet(Path(where), node, nodes)
    return {
        "value": _value(i),
        "node": node,
        "torch": torch_imported,
        "env": {k: os.environ.get(k) for k in _ENV_NAMES},
        "initial": {k: v for k, v in _initial_environment().items() if k in numerics.PINS},
        "path": list(sys.path),
    }


_ENV_NAMES = (*numerics.VARIABLES, numerics.ENV_MODE, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _attempt(where: str, i: int) -> int:
    """Record an attempt at job ``i``; how many there have been, this one included."""
    (Path(where) / f"attempt-{i}-{uuid.uuid4().hex}").touch()
    return len(list(Path(where).glob(f"attempt-{i}-*")))


def fail_on_two(job: tuple[int, str]) -> float:
    i, where = job
    _attempt(where, i)
    if i == 2:
        raise numerics.NumericsError(f"job {i}: bad")
    return _value(i)


def die_times(job: tuple[int, str, int]) -> float:
    """Kill this worker process the first ``times`` attempts, then answer."""
    i, where, times = job
    if _attempt(where, i) <= times:
        os._exit(1)
    return _value(i)


def die_or_wait(job: tuple[int, str]) -> float:
    """Job 0 kills its worker, every attempt; the others wait (bounded) to be cancelled."""
    i, where = job
    _attempt(where, i)
    if i == 0:
        os._exit(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return _value(i)


def wait_for_kill(job: tuple[int, str]) -> float:
    """Mark where the job runs, then wait (bounded) for the test to kill a node."""
    i, where = job
    (Path(where) / f"start-{i}-{_node()}-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + 60
    while not (Path(where) / "killed").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {i}: the test never killed the node")
        time.sleep(0.02)
    return _value(i)


# -- tests -----------------------------------------------------------------------------------


def test_map_runs_on_both_nodes_in_job_order(executor: RayExecutor, tmp_path: Path) -> None:
    jobs = [(i, str(tmp_path), 2) for i in range(8)]
    results = executor.map(probe, jobs)
    assert [r["value"] for r in results] == SerialExecutor().map(_value, range(8))
    assert len({r["node"] for r in results}) == 2
    assert executor.map(probe, []) == []


def test_tasks_see_this_process_numerics_before_torch(
    executor: RayExecutor, tmp_path: Path
) -> None:
    results = executor.map(probe, [(i, str(tmp_path), 2) for i in range(2)])
    assert len({r["node"] for r in results}) == 2  # each node's workers checked
    pins = {k: os.environ.get(k) for k in numerics.PINS}
    if numerics.current().mode == "portable":
        assert all(pins.values()), pins
    for r in results:
        assert r["torch"] is False
        assert {k: r["env"][k] for k in numerics.PINS} == pins
        if Path("/proc/self/environ").exists():  # set when the worker was started, not later
            assert r["initial"] == {k: v for k, v in pins.items() if v is not None}
        assert r["env"][numerics.ENV_MODE] == numerics.current().requested
        assert r["env"]["OMP_NUM_THREADS"] == r["env"]["MKL_NUM_THREADS"] == "1"
        assert str(Path(__file__).parent) in r["path"]  # this module imported from there


def test_native_mode_drops_the_pins_a_node_carries(
    executor: RayExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the nodes were started from this (portable) process's environment, pins included
    here = numerics.current()
    user = {k: os.environ[k] for k in here.user_set if k in numerics.PINS}
    native = numerics.Numerics(mode="native", requested="native", level=here.level)
    monkeypatch.setattr(numerics, "current", lambda: native)
    results = executor.map(probe, [(i, str(tmp_path), 2) for i in range(2)])
    for r in results:
        if here.mode == "portable" and Path("/proc/self/environ").exists():
            assert r["initial"] == {k: os.environ[k] for k in numerics.PINS}  # from the node
        assert r["env"][numerics.ENV_MODE] == "native"
        assert {k: v for k, v in r["env"].items() if k in numerics.PINS and v} == user


def test_request_no_node_can_hold_is_reported(executor: RayExecutor) -> None:
    # 1 CPU per node: a job of 2 CPUs would wait for a node that never joins; checked directly
    with pytest.warns(UserWarning, match=r"no node of the Ray cluster has 2 CPU\(s\)"):
        executor._warn_infeasible(Resources(cpus=2))


def test_application_error_propagates_with_its_type_unretried(
    executor: RayExecutor, tmp_path: Path
) -> None:
    with pytest.raises(numerics.NumericsError) as info:
        executor.map(fail_on_two, [(i, str(tmp_path)) for i in range(4)])
    assert type(info.value) is numerics.NumericsError
    assert str(info.value) == "job 2: bad"
    assert len(list(tmp_path.glob("attempt-2-*"))) == 1


def test_dead_worker_is_retried_then_reported(
    cluster: Cluster, executor: RayExecutor, tmp_path: Path
) -> None:
    other = create("ray", address=cluster.address, retries=1)
    try:
        assert other.map(die_times, [(0, str(tmp_path), 1)]) == [_value(0)]
        with pytest.raises(WorkerLost) as info:
            other.map(die_times, [(1, str(tmp_path), 2)], label=lambda i: f"fold {i}")
    finally:
        other.close()
    assert ray.is_initialized(), "close() shut down a Ray connection it did not make"
    message = str(info.value)
    assert message.startswith("fold 0: its Ray worker or node was lost 2 time(s) (WorkerCrashed")
    assert "\n" not in message
    assert len(list(tmp_path.glob("attempt-1-*"))) == 2  # retries=1: two attempts, no third


def test_a_lost_job_ends_the_map_and_cancels_the_others_not_itself(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a cancel of the task whose loss ray.get just reported may race Ray's retry bookkeeping and
    # end this process (ray-project/ray#54260): the executor cancels only the jobs not yet ended
    cancelled: list[Any] = []
    cancel = ray.cancel

    def record(ref: Any, **kwargs: Any) -> None:
        cancelled.append(ref)
        cancel(ref, **kwargs)

    monkeypatch.setattr(ray, "cancel", record)
    other = create("ray", address=cluster.address, retries=1)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerLost, match=r"^job 0: its Ray worker or node was lost 2 time"):
            # two jobs on the cluster's two CPUs: job 0's retry runs on the CPU its first try left
            other.map(die_or_wait, [(i, str(tmp_path)) for i in range(2)])
        assert len(cancelled) == 1  # job 1, running
        for ref in cancelled:
            with pytest.raises(ray.exceptions.TaskCancelledError):
                ray.get(ref, timeout=WAIT)
        assert time.monotonic() - start < 50  # cancelled, not waited for (it sleeps 60 s)
    finally:
        other.close()
    assert len(list(tmp_path.glob("attempt-0-*"))) == 2


def test_node_killed_mid_map_loses_nothing(
    cluster: Cluster, executor: RayExecutor, tmp_path: Path
) -> None:
    victim = cluster.start(f"--address={cluster.address}", '--resources={"victim": 1}')
    try:
        [victim_id] = [
            n["NodeID"] for n in cluster.wait_alive(3) if "victim" in n.get("Resources", {})
        ]
        killed: list[float] = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + WAIT
            while not list(tmp_path.glob(f"start-*-{victim_id}-*")):
                if time.monotonic() > deadline:
                    break  # the map fails on its own: no job reached the victim
                time.sleep(0.02)
            else:
                cluster.kill(victim)
                killed.append(time.monotonic())
            (tmp_path / "killed").touch()

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        results = executor.map(wait_for_kill, [(i, str(tmp_path)) for i in range(6)])
        done = time.monotonic()
        killer.join(WAIT)
        assert killed, "no job ran on the node to kill"
        assert results == SerialExecutor().map(_value, range(6))
        lost = {p.name.split("-")[1] for p in tmp_path.glob(f"start-*-{victim_id}-*")}
        for i in lost:  # each job the dead node held ran again elsewhere
            runs = [p for p in tmp_path.glob(f"start-{i}-*") if victim_id not in p.name]
            assert runs, f"job {i} was never run again after its node died"
        print(f"node death to map result: {done - killed[0]:.1f} s")
    finally:
        cluster.kill(victim)  # a no-op once the killer thread did it


CASE_SUITE = """\
[suite]
name = "ray-tiny"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [16] }
seed = 0

[cv]
folds = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 8
warmup = 0
repeats = 1

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }
finetune = { epochs = 1, lr = 1e-3 }
"""


def _reproducible(folds: tuple[dict[str, float], ...]) -> list[dict[str, str]]:
    """Each fold's metrics but the hardware-bound ones, as exact text (NaN equals NaN)."""
    from harness.metricnames import parse

    return [{k: repr(v) for k, v in f.items() if not parse(k).hardware_bound} for f in folds]


@pytest.mark.slow
def test_a_case_on_the_cluster_equals_the_serial_run(
    cluster: Cluster, executor: RayExecutor
) -> None:
    import inspect
    import tomllib

    from harness import runner
    from harness.spec import suite_from_dict

    if "executor" not in inspect.signature(runner.run_case).parameters:
        pytest.skip("harness.runner.run_case has no executor= parameter yet")
    suite = suite_from_dict(tomllib.loads(CASE_SUITE), "<ray-tiny>")
    serial = runner.run_case(suite, suite.cases[0])
    on_ray = create("ray", address=cluster.address)
    try:
        distributed = runner.run_case(suite, suite.cases[0], executor=on_ray)
    finally:
        on_ray.close()
    assert len(distributed.folds) == len(serial.folds) == 2
    expected = _reproducible(serial.folds)
    assert _reproducible(distributed.folds) == expected
    assert all(len(f) > 20 for f in expected)  # quality metrics of both models, per class, ...
    assert all(len(f) < len(g) for f, g in zip(expected, serial.folds, strict=True))  # latency


# -- without the cluster: subprocesses, each its own Ray driver -------------------------------


def _python(code: str, *, env: dict[str, str] | None = None, timeout: float = WAIT) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_ray_missing_is_one_line() -> None:
    out = _python(
        """
        import sys
        sys.modules["ray"] = None  # what importing an absent package does, without removing it
        from harness.executors import ExecutorError, create
        try:
            create("ray", where="[run] executor").map(abs, [1])
        except ExecutorError as err:
            print(err)
        """
    )
    assert out == (
        "[run] executor = \"ray\": Ray is not installed (pip install 'prune-harness[ray]')\n"
    )


def test_unreachable_address_fails_fast() -> None:
    port = _free_port()
    start = time.monotonic()
    out = _python(
        f"""
        from harness.executors import ExecutorError, create
        try:
            create("ray", address="127.0.0.1:{port}").map(abs, [1])
        except ExecutorError as err:
            print(err)
        """,
        timeout=60,
    )
    assert time.monotonic() - start < 60
    assert out.startswith(f'executor = "ray": no Ray cluster at 127.0.0.1:{port} (')
    assert out.count("\n") == 1


def test_address_that_is_no_ray_fails_in_bounded_time() -> None:
    # something listens there, but not a Ray GCS: Ray itself would retry forever
    out = _python(
        """
        import os, socket, threading
        import harness.executors._ray as R
        from harness.executors import ExecutorError, create

        R.CONNECT_TIMEOUT = 3.0
        server = socket.create_server(("0.0.0.0", 0))
        accept = lambda: [server.accept() for _ in iter(int, 1)]  # noqa: E731
        threading.Thread(target=accept, daemon=True).start()
        port = server.getsockname()[1]
        try:
            create("ray", address=f"127.0.0.1:{port}").map(abs, [1])
        except ExecutorError as err:
            print(err, flush=True)
        os._exit(0)  # Ray's connecting thread is still retrying
        """,
        timeout=60,
    )
    assert "nothing answered as a Ray GCS within 3 s" in out
    assert out.count("\n") == 1


def test_local_instance_without_address() -> None:
    # a Ray of its own in a private temp dir, and a private home: a local ray.init() turns on
    # token authentication and writes the token to ~/.ray/auth_token. 8 threads asked for on
    # fewer cores still run
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as tmp:
        out = _python(
            """
            import os
            import ray
            from harness.executors import Resources, create, usable_cores

            ex = create("ray")
            print(ex.map(os.getenv, ["OMP_NUM_THREADS", "PRUNE_HARNESS_NUMERICS"],
                         resources=Resources(cpus=8)))
            print(ray.cluster_resources()["CPU"] == usable_cores())
            ex.close()
            print(ray.is_initialized())
            """,
            env={"RAY_TMPDIR": tmp, "HOME": tmp},
        )
    mode = numerics.current().requested
    assert out.splitlines() == [f"['8', '{mode}']", "True", "False"]


def test_negative_retries_are_rejected() -> None:
    with pytest.raises(ExecutorError, match="retries = -1"):
        RayExecutor(None, retries=-1, where="executor")


def test_missing_token_is_named() -> None:
    from harness.executors._ray import _needs_token

    # how Ray 2.5x-2.6x reports it: a ConnectionError raised from a RuntimeError's text
    try:
        try:
            raise RuntimeError(
                "Failed to connect to GCS. Last connection error: ... ray.exceptions."
                "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing"
            )
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as err:
        assert _needs_token(err)
    assert not _needs_token(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
