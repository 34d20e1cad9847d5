"""The plugin and the CLI against a real ``mlflow server`` on loopback (no mocks): nested runs,
artifacts and datasets over HTTP, ``compare``, basic auth, and an outage mid-session replayed with
``mlflow-sync``. Each test starts its own server process (in its own process group, killed at the
end) on a free port of 127.0.0.1; the plugin runs in a fresh ``pytest`` subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

pytestmark = pytest.mark.slow

EXPERIMENT = "prune-harness"
CASES = ("mag-50", "struct-30")
HEALTH_TIMEOUT_S = 90.0
INNER_TIMEOUT_S = 300.0  # one inner pytest run (2 tiny cases); they take seconds
CASE_ARTIFACTS = {
    "report.json",
    "report.md",
    "confusion_dense.png",
    "confusion_pruned.png",
    "f1_per_class.png",
    "layer_sparsity.png",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ADMIN, ADMIN_PASSWORD = "admin", "s3cret-Admin-pw-1"  # a throwaway local server


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """An ``mlflow server`` process with a SQLite backend store and proxied artifacts in ``root``.
    ``start`` may be called again after ``kill``: same store, same port, same URI."""

    root: Path
    port: int
    env: dict[str, str]
    app_name: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session: the server leads its own process group

    def start(self) -> None:
        assert self.proc is None, "server already running"
        self.starts += 1
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        out = open(self.root / f"server{self.starts}.out", "wb")  # noqa: SIM115 (closed in kill)
        err = open(self.root / f"server{self.starts}.err", "wb")  # noqa: SIM115
        self._logs += [out, err]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.stderr()}",
                    pytrace=False,
                )
            try:
                with _DIRECT.open(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(
            f"mlflow server not healthy after {HEALTH_TIMEOUT_S:.0f} s:\n{self.stderr()}",
            pytrace=False,
        )

    def stderr(self) -> str:
        path = self.root / f"server{self.starts}.err"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group (server, uvicorn worker) and reap the leader."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone (killed by a test)
                os.killpg(self.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.proc = None  # never signal that process group again
        for log in self._logs:
            log.close()
        self._logs.clear()


@pytest.fixture
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MlflowServer]]:
    """Factory: ``mlflow_server()`` or ``mlflow_server(auth=True)`` starts a server and waits for
    ``/health``; every server (and its process group) is killed at teardown."""
    servers: list[MlflowServer] = []

    def start(*, auth: bool = False) -> MlflowServer:
        root = tmp_path_factory.mktemp("mlflow-server")
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job-runner processes
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        if auth:
            ini = root / "basic_auth.ini"
            ini.write_text(
                "[mlflow]\n"
                "default_permission = READ\n"
                f"database_uri = sqlite:///{root / 'auth.db'}\n"
                f"admin_username = {ADMIN}\n"
                f"admin_password = {ADMIN_PASSWORD}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                encoding="utf-8",
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "prune-harness-test-csrf-key"  # required
            for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
                env.pop(key, None)
        server = MlflowServer(root, _free_port(), env, app_name="basic-auth" if auth else None)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(autouse=True)
def _client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known client environment, restored afterwards: no ambient tracking server, credentials
    or GitHub variables; the defaults ``harness.tracking.connect`` would otherwise set for good."""
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "GITHUB_HEAD_REF",
        "GITHUB_REF_NAME",
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for key in ("NO_PROXY", "no_proxy"):  # loopback only, even where a proxy is configured
        monkeypatch.setenv(key, ",".join(filter(None, ["127.0.0.1", os.environ.get(key)])))


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs_by_kind(client: Any) -> dict[str, list[Any]]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT!r}"
    kinds: dict[str, list[Any]] = {"session": [], "case": [], "fold": []}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        kinds.setdefault(run.data.tags.get("harness.kind", "?"), []).append(run)
    return kinds


def _children(runs: list[Any], parent: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def _outbox(p: pytest.Pytester, *, ends: bool = False) -> list[Path]:
    """Case records in the outbox (with ``ends``: the session-end records instead)."""
    files = sorted((p.path / ".harness" / "outbox").glob("*.json"))
    return [f for f in files if ("~session-end" in f.name) == ends]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from harness.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_http_server_nested_runs_artifacts_dataset_and_compare(
    tiny_project: pytest.Pytester,
    mlflow_server: Callable[..., MlflowServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    import mlflow.artifacts
    import torch

    p = tiny_project
    uri = mlflow_server().uri
    monkeypatch.setenv("GITHUB_REF_NAME", "test-branch")  # the pytester dir is no git checkout

    # 1. regen + models: everything logged over HTTP
    res = p.runpytest_subprocess(
        "suites",
        "--harness-regen",
        "--harness-log-models",
        "--harness-mlflow-uri",
        uri,
        timeout=INNER_TIMEOUT_S,
    )
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines([f"*results logged to MLflow at {uri} (experiment 'prune-harness'*"])
    assert not _outbox(p)

    client = _client(uri)
    kinds = _runs_by_kind(client)
    assert len(kinds["session"]) == 1 and len(kinds["case"]) == 2 and len(kinds["fold"]) == 4
    session = kinds["session"][0]
    run_a = session.info.run_id
    assert session.data.tags["harness.verdict"] == "pass"
    assert session.info.status == "FINISHED"
    assert session.data.tags["mlflow.source.git.branch"] == "test-branch"
    cases = _children(kinds["case"], run_a)
    assert sorted(c.data.tags["harness.case"] for c in cases) == sorted(CASES)
    for case in cases:
        tags, metrics, params = case.data.tags, case.data.metrics, case.data.params
        assert tags["harness.verdict"] == "pass"
        assert tags["harness.suite"] == "tiny"
        assert len(tags["harness.spec_hash"]) > 0
        assert len(tags["harness.outcome_id"]) == 32
        assert tags["mlflow.source.git.commit"]
        assert tags["mlflow.source.git.branch"] == "test-branch"
        assert case.info.status == "FINISHED"
        assert 0 < metrics["pruned.f1_macro"] <= 1
        assert metrics["pruned.f1_macro.std"] >= 0
        assert metrics["delta_dense.f1_macro"] == pytest.approx(
            metrics["pruned.f1_macro"] - metrics["dense.f1_macro"]
        )
        expected_method = "magnitude" if tags["harness.case"] == "mag-50" else "structured"
        assert params["prune.method"] == expected_method

        # the dataset input, with the digest the case is tagged with
        inputs = client.get_run(case.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        assert inputs[0].dataset.digest == tags["harness.dataset_digest"]
        assert inputs[0].dataset.name
        assert {(t.key, t.value) for t in inputs[0].tags} == {
            ("mlflow.data.context", "cross-validation")
        }

        # report files and plots, through the server's artifact proxy
        listed = {a.path for a in client.list_artifacts(case.info.run_id)}
        assert listed >= CASE_ARTIFACTS, listed

        folds = _children(kinds["fold"], case.info.run_id)
        assert sorted(f.data.tags["harness.fold"] for f in folds) == ["0", "1"]
        for fold in folds:
            assert 0 < fold.data.metrics["pruned.f1_macro"] <= 1
            models = {a.path for a in client.list_artifacts(fold.info.run_id, "model")}
            assert models == {"model/pruned_state_dict.pt"}

    mag = next(c for c in cases if c.data.tags["harness.case"] == "mag-50")
    png = mlflow.artifacts.download_artifacts(
        run_id=mag.info.run_id,
        artifact_path="confusion_pruned.png",
        tracking_uri=uri,
        dst_path=str(tmp_path / "png"),
    )
    assert Path(png).read_bytes()[:8] == PNG_MAGIC
    report = mlflow.artifacts.download_artifacts(
        run_id=mag.info.run_id,
        artifact_path="report.json",
        tracking_uri=uri,
        dst_path=str(tmp_path / "report"),
    )
    assert json.loads(Path(report).read_text())["id"] == mag.data.tags["harness.outcome_id"]
    fold0 = next(
        f for f in _children(kinds["fold"], mag.info.run_id) if f.data.tags["harness.fold"] == "0"
    )
    state_path = mlflow.artifacts.download_artifacts(
        run_id=fold0.info.run_id,
        artifact_path="model/pruned_state_dict.pt",
        tracking_uri=uri,
        dst_path=str(tmp_path / "model"),
    )
    state = torch.load(state_path, weights_only=True)
    assert isinstance(state, dict) and state
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    # 2. against the baselines just written: deltas to the baseline are logged (and zero)
    res = p.runpytest_subprocess("suites", "--harness-mlflow-uri", uri, timeout=INNER_TIMEOUT_S)
    res.assert_outcomes(passed=2)
    kinds = _runs_by_kind(client)
    assert len(kinds["session"]) == 2 and len(kinds["case"]) == 4 and len(kinds["fold"]) == 8
    (run_b,) = [s.info.run_id for s in kinds["session"] if s.info.run_id != run_a]
    cases_b = _children(kinds["case"], run_b)
    assert sorted(c.data.tags["harness.case"] for c in cases_b) == sorted(CASES)
    for case in cases_b:
        assert case.data.metrics["delta_baseline.pruned.f1_macro"] == 0.0
        assert case.data.tags["harness.baseline_commit"]

    # 3. compare two session runs
    code, out, err = _cli(capsys, "compare", run_a, run_b, "--mlflow-uri", uri)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["case", "metric", run_a[:8], run_b[:8]]
    for name in CASES:
        row = next(
            ln for ln in lines if ln.startswith(f"tiny::{name} ") and " pruned.f1_macro " in ln
        )
        assert row.split()[4] == "+0", row

    # 4. compare the branch's latest session run with the baselines
    code, out, err = _cli(
        capsys,
        "compare",
        "--branch",
        "test-branch",
        "--baselines",
        str(p.path / "baselines"),
        "--mlflow-uri",
        uri,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["case", "metric", "baseline", f"test-branch@{run_b[:8]}"]
    for name in CASES:
        row = next(
            ln for ln in lines if ln.startswith(f"tiny::{name} ") and " pruned.f1_macro " in ln
        )
        assert row.split()[4] == "+0", row
    code, out, err = _cli(capsys, "compare", "--branch", "no-such-branch", "--mlflow-uri", uri)
    assert code == 2 and "no session run of that branch" in err


def test_basic_auth_credentials_right_and_wrong(
    tiny_project: pytest.Pytester,
    mlflow_server: Callable[..., MlflowServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = tiny_project
    uri = mlflow_server(auth=True).uri
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)

    # right credentials: logged, and readable with them
    res = p.runpytest_subprocess(
        "suites", "--harness-regen", "--harness-mlflow-uri", uri, timeout=INNER_TIMEOUT_S
    )
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines([f"*results logged to MLflow at {uri}*"])
    assert not _outbox(p)
    kinds = _runs_by_kind(_client(uri))
    assert len(kinds["session"]) == 1 and len(kinds["case"]) == 2 and len(kinds["fold"]) == 4

    # wrong password: the gate still decides, one clear line, results kept in the outbox
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    res = p.runpytest_subprocess("suites", "--harness-mlflow-uri", uri, timeout=INNER_TIMEOUT_S)
    res.assert_outcomes(passed=2)
    output = res.stdout.lines + res.stderr.lines
    named = [ln for ln in output if "MLFLOW_TRACKING_PASSWORD" in ln]
    assert len(named) == 1, "\n".join(output)
    line = named[0]
    assert f"MLflow at {uri} failed" in line
    assert "MLFLOW_TRACKING_USERNAME" in line
    assert "credentials" in line
    assert ".harness/outbox" in line and "prune-harness mlflow-sync" in line
    assert not [ln for ln in output if "Traceback" in ln], "\n".join(output)
    assert not [ln for ln in output if "results logged to MLflow" in ln]
    files = _outbox(p)
    assert len(files) == 2
    records = [json.loads(f.read_text()) for f in files]
    assert sorted(r["outcome"]["result"]["case"] for r in records) == sorted(CASES)

    # nothing was logged with the wrong password
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    kinds = _runs_by_kind(_client(uri))
    assert len(kinds["session"]) == 1 and len(kinds["case"]) == 2


OUTAGE_TESTS = """
import os
import signal


def test_1_before(prune_harness):
    prune_harness.check("suites/tiny.toml", "mag-50")


def test_2_server_dies():
    os.killpg(int(os.environ["HARNESS_TEST_SERVER_PGID"]), signal.SIGKILL)


def test_3_after(prune_harness):
    prune_harness.check("suites/tiny.toml", "struct-30")
"""


def test_outage_mid_session_then_replay_with_mlflow_sync(
    tiny_project: pytest.Pytester,
    mlflow_server: Callable[..., MlflowServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    p = tiny_project
    server = mlflow_server()
    uri = server.uri
    p.makepyfile(test_outage=OUTAGE_TESTS)
    monkeypatch.setenv("HARNESS_TEST_SERVER_PGID", str(server.pgid))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

    res = p.runpytest_subprocess(
        "test_outage.py",
        "--harness-regen",
        "--harness-mlflow-uri",
        uri,
        "-p",
        "no:randomly",
        timeout=INNER_TIMEOUT_S,
    )
    res.assert_outcomes(passed=3)  # the verdicts do not depend on tracking
    res.stdout.fnmatch_lines(
        [
            f"*MLflow at {uri} failed*results are kept in*/.harness/outbox/*"
            f"prune-harness mlflow-sync --mlflow-uri {uri}*"
        ]
    )
    res.stdout.no_fnmatch_line("*Traceback*")
    assert server.proc is not None and server.proc.poll() is not None  # it really died
    files = _outbox(p)
    assert len(files) == 1, files
    assert len(_outbox(p, ends=True)) == 1  # the session's verdict waits for the replay too
    record = json.loads(files[0].read_text())
    assert record["outcome"]["result"]["case"] == "struct-30"
    session_id = record["session"]["id"]
    saved = tmp_path / files[0].name
    shutil.copy(files[0], saved)

    # the same store, served again: replay
    server.kill()
    server.start()
    outbox = p.path / ".harness" / "outbox"
    code, out, err = _cli(capsys, "mlflow-sync", "--mlflow-uri", uri, "--outbox", str(outbox))
    assert code == 0, err
    assert "synced 1, skipped 0" in out and "failed 0" in out
    assert not _outbox(p) and not _outbox(p, ends=True)

    client = _client(uri)

    def check_store() -> None:
        kinds = _runs_by_kind(client)
        assert len(kinds["session"]) == 1
        session = kinds["session"][0]
        assert session.data.tags["harness.session_id"] == session_id
        assert session.data.tags["harness.verdict"] == "pass"  # closed by the replay
        assert session.info.status == "FINISHED"
        cases = {c.data.tags["harness.case"]: c for c in kinds["case"]}
        assert len(kinds["case"]) == 2 and set(cases) == set(CASES)
        for case in cases.values():  # both under the session run from before the outage
            assert case.data.tags["mlflow.parentRunId"] == session.info.run_id
            assert len(_children(kinds["fold"], case.info.run_id)) == 2
        replayed = cases["struct-30"]
        assert replayed.data.tags["harness.outcome_id"] == record["outcome"]["id"]
        assert replayed.data.tags["harness.verdict"] == "pass"
        assert 0 < replayed.data.metrics["pruned.f1_macro"] <= 1
        assert {a.path for a in client.list_artifacts(replayed.info.run_id)} >= CASE_ARTIFACTS

    check_store()

    # again: nothing left to replay
    code, out, err = _cli(capsys, "mlflow-sync", "--mlflow-uri", uri, "--outbox", str(outbox))
    assert code == 0, err
    assert "synced 0, skipped 0" in out
    check_store()

    # a record replayed twice is recognised by its outcome id
    shutil.copy(saved, outbox / saved.name)
    code, out, err = _cli(capsys, "mlflow-sync", "--mlflow-uri", uri, "--outbox", str(outbox))
    assert code == 0, err
    assert "synced 0, skipped 1" in out
    assert not _outbox(p)
    check_store()


class CuttingProxy:
    """An HTTP proxy on loopback in front of a tracking server that, from its ``cut``-th
    request on, drops every connection: before forwarding (the server never saw the request)
    or after (the server did the work, the client never heard back). ``cut = 0``: never."""

    def __init__(self, upstream: str, *, cut: int = 0, after: bool = False) -> None:
        import http.client
        import http.server
        import threading

        self.count, self.cut, self.after = 0, cut, after
        lock = threading.Lock()
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                with lock:
                    proxy.count += 1
                    dead = 0 < proxy.cut <= proxy.count
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if dead and not proxy.after:
                    return self._drop()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if dead:
                    return self._drop()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _case_state(client: Any, outcome_id: str) -> tuple[int, frozenset[str], list[Any], set[str]]:
    """(active case runs, their metric names, fold runs' metric names, artifacts) of one outcome."""
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp], f"tags.`harness.outcome_id` = '{outcome_id}'")
    if len(runs) != 1:
        return len(runs), frozenset(), [], set()
    run = runs[0]
    folds = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert run.data.tags.get("harness.complete") == "true"
    return (
        1,
        frozenset(run.data.metrics),
        sorted((f.data.tags["harness.fold"], frozenset(f.data.metrics)) for f in folds),
        {a.path for a in client.list_artifacts(run.info.run_id)},
    )


def test_server_cut_at_every_request_then_sync_leaves_every_case_complete(
    mlflow_server: Callable[..., MlflowServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Issue 10's bar: after a server failure at any request of a session, ``mlflow-sync``
    leaves every case complete in MLflow (metrics, fold runs, artifacts) and none twice."""
    import dataclasses
    import tomllib
    import uuid

    from conftest import TINY_SUITE

    from harness import tracking
    from harness.session import Settings, check_case
    from harness.spec import suite_from_dict

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = mlflow_server()
    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    settings = Settings(
        baselines=tmp_path / "baselines", regen=True, artifacts_dir=tmp_path / "artifacts"
    )
    case = suite.cases[0]
    template = check_case(suite, case, settings)
    client = _client(server.uri)

    sessions: list[str] = []

    def session(proxy: CuttingProxy, outbox: Path) -> str:
        outcome = dataclasses.replace(template, id=uuid.uuid4().hex)
        tracker = tracking.MlflowTracker(proxy.uri, session_name="cut", outbox=outbox)
        sessions.append(tracker.session.id)
        tracker.log_case(outcome)
        tracker.close(True)
        return outcome.id

    def session_closed() -> bool:
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        found = client.search_runs([exp], f"tags.`harness.session_id` = '{sessions[-1]}'")
        return len(found) == 1 and found[0].info.status == "FINISHED"

    # the reference: one session through a proxy that never cuts
    proxy = CuttingProxy(server.uri)
    reference = _case_state(client, session(proxy, tmp_path / "never"))
    proxy.close()
    total = proxy.count
    assert reference[0] == 1 and len(reference[2]) == 2 and reference[3] >= CASE_ARTIFACTS
    assert total > 10  # experiment, session run, case run, batches, artifacts, folds, tags
    for after in (False, True):
        for cut in range(1, total + 1):
            outbox = tmp_path / f"outbox-{int(after)}-{cut}"
            proxy = CuttingProxy(server.uri, cut=cut, after=after)
            outcome_id = session(proxy, outbox)
            proxy.close()
            report = tracking.sync_outbox(server.uri, outbox)
            where = f"cut at request {cut} of {total} ({'after' if after else 'before'} it)"
            assert report.failed == [], where
            assert not list(outbox.glob("*.json")), where
            assert _case_state(client, outcome_id) == reference, where
            assert session_closed(), where
