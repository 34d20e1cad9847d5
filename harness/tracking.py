"""MLflow tracking: one run per session, a nested run per case, a nested run per fold.

MLflow is imported lazily (only when a case result is logged). All logging happens in one process
(the pytest controller or the CLI), so xdist workers never touch the store. If the tracking store
cannot be reached (or refuses the credentials), every outcome of the session from then on is
written to the outbox (``.harness/outbox/``, one JSON file per case run) and the session goes on:
the gate verdict never depends on tracking. ``prune-harness mlflow-sync`` replays the outbox;
case runs carry ``harness.outcome_id`` and, as their last write, ``harness.complete``, so a replay
never logs a case twice and replaces a case run the failure cut off.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness._util import redact, write_text_atomic
from harness.metricnames import is_known, parse
from harness.provenance import source_tags

if TYPE_CHECKING:
    from harness.results import Outcome

EXPERIMENT = "prune-harness"
OUTBOX = Path(".harness") / "outbox"
COMPLETE = "harness.complete"  # a case run's last tag: "true" once everything is logged
ARTIFACTS = Path(".harness") / "artifacts"
_METRICS_PER_BATCH = 1000  # MLflow's limits per log_batch call
_PARAMS_PER_BATCH = 100
# Without the first two, MLflow's client retries an unreachable server for minutes; telemetry
# would phone home from CI. Users may override each.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def default_uri(workdir: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``mlflow.db`` in ``workdir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{((workdir or Path.cwd()) / 'mlflow.db').resolve()}"


class Tracker:
    """Tracking disabled: records nothing."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warm_up(self) -> None:
        """Get ready in the background (cases are about to run)."""

    def log_case(self, outcome: Outcome) -> None:
        """Log one case (and its folds)."""

    def close(self, passed: bool) -> None:
        """End the session run."""


@dataclass
class _Session:
    id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)


class MlflowTracker(Tracker):
    """Logs to an MLflow tracking store through ``MlflowClient`` (no global fluent state)."""

    def __init__(
        self,
        uri: str,
        *,
        session_name: str,
        outbox: Path = OUTBOX,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.uri, self.outbox = uri, outbox
        self.shown_uri = redact(uri)  # what is printed and stored: never the password
        self.session = _Session(
            uuid.uuid4().hex, redact(session_name), {**source_tags(), **(tags or {})}
        )
        self.client: Any = None
        self.experiment_id = ""
        self.session_run: str | None = None
        self.broken: str | None = None
        self._connecting: _Background | None = None
        self._fallback_said = False

    def warm_up(self) -> None:
        """Import MLflow and open (create, migrate) the store in a background thread, while the
        first cases run, instead of on the critical path at the first result."""
        if self._connecting is None and self.client is None:
            self._connecting = _Background(connect, self.uri)

    def log_case(self, outcome: Outcome) -> None:
        if self.broken is None:
            try:
                if self.client is None:
                    pending, self._connecting = self._connecting, None
                    self.client, self.experiment_id = (
                        pending.result() if pending is not None else connect(self.uri)
                    )
                if self.session_run is None:
                    self.session_run = session_run(self.client, self.experiment_id, self.session)
                log_outcome(
                    self.client,
                    self.experiment_id,
                    self.session_run,
                    outcome,
                    self.session.tags,
                    check_existing=False,
                )
                return
            except Exception as err:  # any failure of the store: keep the results, go on
                self.broken = describe_failure(err)
                self.messages.append(
                    f"MLflow at {self.shown_uri} failed ({self.broken}); results are kept in "
                    f"{self.outbox}/ (replay: prune-harness mlflow-sync --mlflow-uri "
                    f"{self.shown_uri})"
                )
        self._to_outbox(outcome)

    def _to_outbox(self, outcome: Outcome) -> None:
        r = outcome.result
        record = {"session": vars(self.session), "outcome": json.loads(outcome.to_json())}
        self._write_outbox(f"{r.suite}__{r.case}-{outcome.id[:8]}", record)

    def _write_outbox(self, name: str, record: dict[str, Any]) -> None:
        """Keep a record for replay: in the outbox, else (a full or read-only disk) in a
        fallback folder under the system's temporary directory, else say what was lost. Never
        raises: the session's verdicts do not depend on tracking."""
        text = redact(json.dumps(record))
        fallback = (
            Path(tempfile.gettempdir())
            / f"prune-harness-outbox-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        )
        errors = []
        for folder in (self.outbox, fallback):
            try:
                write_text_atomic(folder / f"{int(time.time())}-{name}.json", text)
            except OSError as err:
                errors.append(f"{folder}: {err.strerror or err}")
                continue
            if folder != self.outbox and not self._fallback_said:
                self._fallback_said = True
                self.messages.append(
                    f"the outbox {self.outbox}/ cannot be written ({errors[0]}); results are "
                    f"kept in {folder}/ (replay: prune-harness mlflow-sync --outbox {folder} "
                    f"--mlflow-uri {self.shown_uri})"
                )
            return
        self.messages.append(
            f"{name}: not logged to MLflow and no outbox could be written ({'; '.join(errors)}); "
            "its results are only in this session's report"
        )

    def close(self, passed: bool) -> None:
        if self.broken is not None:  # mlflow-sync closes the session run after the replay
            self._write_outbox("~session-end", {"session": vars(self.session), "passed": passed})
            return
        if self.client is None or self.session_run is None:
            return
        try:
            end_session(self.client, self.session_run, passed)
        except Exception as err:  # the verdict waits in the outbox, like the cases
            self.messages.append(
                f"MLflow at {self.shown_uri}: could not close the session run "
                f"({describe_failure(err)}); its verdict is kept in {self.outbox}/ (replay: "
                f"prune-harness mlflow-sync --mlflow-uri {self.shown_uri})"
            )
            self._write_outbox("~session-end", {"session": vars(self.session), "passed": passed})
            return
        self.messages.append(
            f"results logged to MLflow at {self.shown_uri} "
            f"(experiment {experiment_name()!r}, run {self.session_run})"
        )


class _Background:
    """A call running in a daemon thread (never keeps the process alive at exit)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Any, *args: Any) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class StoreError(RuntimeError):
    """The tracking store cannot be used as it is; the message says why and how to recover."""


_LOCK_TIMEOUT = 300.0  # seconds to wait for another process creating or migrating the store


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def half_migrated(db: Path) -> str | None:
    """Why a SQLite store is left half-migrated (an interrupted schema migration), or None."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    except sqlite3.Error as err:
        return f"not a readable SQLite database ({err})"
    leftovers = sorted(n for n in names if n.startswith("_alembic_tmp_"))
    if leftovers:
        return f"an interrupted migration left {', '.join(leftovers)}"
    if names and "alembic_version" not in names and "experiments" in names:
        return "tables without alembic_version (a migration that never finished)"
    return None


def connect(uri: str) -> tuple[Any, str]:
    """An ``MlflowClient`` for ``uri`` and the id of the harness's experiment (created once).

    A SQLite store is created and migrated under an inter-process lock (``<db>.lock``), so that
    sessions starting at once on a fresh ``mlflow.db`` cannot race MLflow's migrations; a store
    an earlier crash left half-migrated raises :class:`StoreError` naming how to recover.
    """
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    db = sqlite_path(uri)
    if db is None:
        return _open(uri)
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{db}.lock", timeout=_LOCK_TIMEOUT):
            if (problem := half_migrated(db)) is not None:
                raise StoreError(
                    f"{db}: {problem}; MLflow cannot open it. Move it aside (mv {db} "
                    f"{db}.broken), the next session creates a fresh store, and "
                    "`prune-harness mlflow-sync` replays the results kept in the outbox"
                )
            return _open(uri)
    except Timeout:
        raise StoreError(
            f"{db}: another process held {db}.lock for {_LOCK_TIMEOUT:.0f} s while creating "
            "or migrating the store"
        ) from None


def _open(uri: str) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    return client, exp.experiment_id if exp else client.create_experiment(name)


def experiment_name() -> str:
    """The experiment runs go to: ``$MLFLOW_EXPERIMENT_NAME`` (MLflow's own variable), else
    ``prune-harness``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT


def describe_failure(err: Exception) -> str:
    """One line for a failed store operation; credentials problems say which variables to set."""
    if isinstance(err, StoreError):
        return redact(str(err))
    text = redact(" ".join(str(err).split()))
    for code in ("401", "403"):
        if f"error code {code}" in text or f" {code} " in f" {text} " or "Unauthorized" in text:
            return (
                f"the server refused the credentials (HTTP {code}): check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
            )
    return f"{type(err).__name__}: {text[:160]}"


def end_session(client: Any, run_id: str, passed: bool) -> None:
    client.set_tag(run_id, "harness.verdict", "pass" if passed else "regressed")
    client.set_terminated(run_id, "FINISHED" if passed else "FAILED")


def session_run(client: Any, experiment_id: str, session: _Session) -> str:
    """The session's run: found by ``harness.session_id`` (a replay), else created."""
    found = client.search_runs(
        [experiment_id], f"tags.`harness.session_id` = '{session.id}'", max_results=1
    )
    if found:
        return str(found[0].info.run_id)
    tags = {"harness.kind": "session", "harness.session_id": session.id, **session.tags}
    return str(client.create_run(experiment_id, run_name=session.name, tags=tags).info.run_id)


def log_outcome(
    client: Any,
    experiment_id: str,
    parent: str,
    outcome: Outcome,
    session_tags: dict[str, str],
    *,
    check_existing: bool = True,
) -> bool:
    """Log a case run (metrics, params, tags, dataset, artifacts) and its fold runs under
    ``parent``. Returns False (and logs nothing) if this outcome is already complete in the store.

    The case run's last write is the tag ``harness.complete = true``: a run without it was cut
    off (the server died while it was logged), and a replay deletes it and its fold runs and
    logs the outcome again, so that every case ends complete and once.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    if check_existing:
        found = client.search_runs(
            [experiment_id], f"tags.`harness.outcome_id` = '{outcome.id}'", max_results=100
        )
        if any(run.data.tags.get(COMPLETE) == "true" for run in found):
            return False
        for run in found:  # incomplete: replaced
            _delete_case_run(client, experiment_id, run.info.run_id)
    r, v = outcome.result, outcome.verdict
    now = int(time.time() * 1000)
    tags = {
        "mlflow.parentRunId": parent,
        "harness.kind": "case",
        "harness.outcome_id": outcome.id,
        "harness.suite": r.suite,
        "harness.case": r.case,
        "harness.verdict": v.status.value,
        "harness.spec_hash": r.spec_hash,
        "harness.dataset_digest": r.dataset_digest,
        **session_tags,
    }
    if v.baseline_commit:
        tags["harness.baseline_commit"] = v.baseline_commit
    hardware = r.env.get("hardware") or {}
    if numerics := hardware.get("numerics"):
        tags["harness.numerics"] = f"{numerics.get('mode')} ({numerics.get('level')})"
        tags["harness.cpu"] = str(hardware.get("cpu", ""))[:250]
    from harness.gate import CROSS_HARDWARE_PREFIX

    cross = [n for n in v.notes if n.startswith(CROSS_HARDWARE_PREFIX)]
    tags["harness.cross_hardware"] = "true" if cross else "false"
    case_run = client.create_run(experiment_id, run_name=f"{r.suite}::{r.case}", tags=tags)
    run_id = case_run.info.run_id
    metrics = []
    for name, s in r.metrics.items():
        metrics += [Metric(name, s.mean, now, 0), Metric(f"{name}.std", s.std, now, 0)]
        if name in outcome.baseline_means:
            delta = s.mean - outcome.baseline_means[name]
            metrics.append(Metric(f"delta_baseline.{name}", delta, now, 0))
        ref = parse(name) if is_known(name) else None
        dense = r.metrics.get(ref.with_model("dense").name) if ref else None
        if ref is not None and ref.model == "pruned" and dense is not None:
            metrics.append(Metric(f"delta_dense.{ref.base}", s.mean - dense.mean, now, 0))
    params = [Param(k, val[:6000]) for k, val in outcome.params.items()]
    _batch(client, run_id, metrics, params)
    if r.dataset:
        dataset = Dataset(
            name=r.dataset["name"],
            digest=r.dataset["digest"],
            source_type="prune-harness",
            source=json.dumps(
                {"dataset": r.dataset["name"], "params": outcome.params.get("dataset_args", "")}
            ),
            profile=json.dumps({k: r.dataset[k] for k in ("rows", "features", "classes")}),
        )
        client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "cross-validation")])
            ],
        )
    folder = Path(outcome.artifacts) if outcome.artifacts else None
    if folder is not None and folder.is_dir():
        for item in sorted(folder.iterdir()):
            if item.is_file():
                client.log_artifact(run_id, str(item))
    for i, fold in enumerate(r.folds):
        fold_run = client.create_run(
            experiment_id,
            run_name=f"{r.suite}::{r.case}::fold{i}",
            tags={
                "mlflow.parentRunId": run_id,
                "harness.kind": "fold",
                "harness.suite": r.suite,
                "harness.case": r.case,
                "harness.fold": str(i),
            },
        ).info.run_id
        _batch(client, fold_run, [Metric(k, x, now, 0) for k, x in fold.items()], [])
        if folder is not None and (folder / f"fold{i}").is_dir():
            client.log_artifacts(fold_run, str(folder / f"fold{i}"), artifact_path="model")
        client.set_terminated(fold_run)
    client.set_terminated(run_id, "FINISHED" if v.ok else "FAILED")
    client.set_tag(run_id, COMPLETE, "true")  # last: everything above is in the store
    return True


def _delete_case_run(client: Any, experiment_id: str, run_id: str) -> None:
    folds = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=10000
    )
    for fold in folds:
        client.delete_run(fold.info.run_id)
    client.delete_run(run_id)


def _batch(client: Any, run_id: str, metrics: list[Any], params: list[Any]) -> None:
    for i in range(0, len(params), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH])
    for i in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH])


@dataclass(frozen=True)
class SyncReport:
    synced: int
    skipped: int
    failed: list[str]


def sync_outbox(uri: str, outbox: Path = OUTBOX) -> SyncReport:
    """Replay every outbox file into ``uri``; a file is deleted once its case is in the store.

    Idempotent: case runs already in the store (same ``harness.outcome_id``) are skipped, and the
    session run is found again by ``harness.session_id``.
    """
    if not outbox.is_dir():
        return SyncReport(0, 0, [])
    from filelock import FileLock

    # one replay at a time per outbox: a second waits, then finds what the first left
    try:
        lock = FileLock(str(outbox / ".sync.lock"))
        lock.acquire()
    except OSError:  # a read-only outbox: nothing else can remove its files either
        return _sync(uri, outbox)
    try:
        return _sync(uri, outbox)
    finally:
        lock.release()


def _sync(uri: str, outbox: Path) -> SyncReport:
    from harness.results import Outcome

    # case records first, then the session ends they belong to
    files = sorted(outbox.glob("*.json"), key=lambda p: ("~session-end" in p.name, p.name))
    if not files:
        return SyncReport(0, 0, [])
    client, experiment_id = connect(uri)
    synced = skipped = 0
    failed = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # replayed and removed by a sync that ran before the lock
            continue
        except (OSError, UnicodeDecodeError, ValueError) as err:
            failed.append(f"{path}: not an outbox record ({err})")
            continue
        try:
            session = _Session(**record["session"])
            outcome = (
                Outcome.from_json(json.dumps(record["outcome"])) if "outcome" in record else None
            )
            passed = bool(record["passed"]) if outcome is None else True
        except Exception as err:  # any malformed record: named, never a traceback
            failed.append(f"{path}: not an outbox record ({err})")
            continue
        try:
            parent = session_run(client, experiment_id, session)
            if outcome is None:
                end_session(client, parent, passed)
            elif log_outcome(client, experiment_id, parent, outcome, session.tags):
                synced += 1
            else:
                skipped += 1
        except Exception as err:
            failed.append(f"{path}: {describe_failure(err)}")
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # in MLflow now; a later replay skips it as complete
            failed.append(f"{path}: replayed, but not removed ({err.strerror})")
    return SyncReport(synced, skipped, failed)


def case_metrics(client: Any, run_id: str) -> dict[tuple[str, str], dict[str, float]]:
    """Metrics of the case runs of a session run (or of one case run), by (suite, case)."""
    run = client.get_run(run_id)
    if run.data.tags.get("harness.kind") == "case":
        runs = [run]
    else:
        runs = client.search_runs(
            [run.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`harness.kind` = 'case'",
            max_results=10000,
        )
    return {
        (r.data.tags["harness.suite"], r.data.tags["harness.case"]): dict(r.data.metrics)
        for r in runs
    }


def latest_session(client: Any, experiment_id: str, branch: str) -> str | None:
    """The newest session run logged from ``branch``."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`harness.kind` = 'session' and tags.`mlflow.source.git.branch` = '{branch}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None
