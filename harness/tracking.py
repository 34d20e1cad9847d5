"""MLflow tracking: one run per session, a nested run per case, a nested run per fold.

MLflow is imported lazily (only when a case result is logged). All logging happens in one process
(the pytest controller or the CLI), so xdist workers never touch the store. If the tracking
server cannot be reached, the outcome is written to the outbox (``.harness/outbox/``, one JSON file
per case run) and the session goes on; the gate verdict never depends on tracking.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.session import Outcome

EXPERIMENT = "prune-harness"
OUTBOX = Path(".harness") / "outbox"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def default_uri(workdir: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``mlflow.db`` in ``workdir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{((workdir or Path.cwd()) / 'mlflow.db').resolve()}"


class Tracker:
    """Tracking disabled: records nothing."""

    messages: list[str]

    def __init__(self) -> None:
        self.messages = []

    def log_case(self, outcome: Outcome) -> None:
        """Log one case (and its folds)."""

    def close(self, passed: bool) -> None:
        """End the session run."""


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
        self.uri, self.session_name, self.outbox = uri, session_name, outbox
        self.tags = tags or {}
        self.client: Any = None
        self.experiment_id: str | None = None
        self.session_run: str | None = None
        self.broken: str | None = None
        self.source_tags: dict[str, str] = {}

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.source_tags = _source_tags()
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.session_name,
            tags={"harness.kind": "session", **self.source_tags, **self.tags},
        )
        self.session_run = run.info.run_id

    def log_case(self, outcome: Outcome) -> None:
        if self.broken is None:
            try:
                if self.client is None:
                    self._start()
                self._log(outcome)
                return
            except Exception as err:  # any failure of the store: keep the results, go on
                self.broken = (
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                )
                self.messages.append(
                    f"MLflow at {self.uri} failed ({self.broken}); "
                    f"results are kept in {self.outbox}/"
                )
        self._to_outbox(outcome)

    def _log(self, outcome: Outcome) -> None:
        from mlflow.entities import Metric, Param

        r, v = outcome.result, outcome.verdict
        now = int(time.time() * 1000)
        tags = {
            "mlflow.parentRunId": self.session_run,
            "harness.kind": "case",
            "harness.suite": r.suite,
            "harness.case": r.case,
            "harness.verdict": v.status.value,
            "harness.spec_hash": r.spec_hash,
            "harness.dataset_digest": r.dataset_digest,
            **self.source_tags,
        }
        if v.baseline_commit:
            tags["harness.baseline_commit"] = v.baseline_commit
        case_run = self.client.create_run(
            self.experiment_id, run_name=f"{r.suite}::{r.case}", tags=tags
        ).info.run_id
        metrics = []
        for name, s in r.metrics.items():
            metrics += [Metric(name, s.mean, now, 0), Metric(f"{name}.std", s.std, now, 0)]
        for c in v.checks:
            if c.reference is not None and c.now is not None:
                prefix = "delta_dense" if c.key.startswith("vs_dense.") else "delta_baseline"
                metrics.append(Metric(f"{prefix}.{c.metric}", c.now - c.reference, now, 0))
        params = [Param(k, val[:6000]) for k, val in outcome.params.items()]
        self._batch(case_run, metrics, params)
        self.client.set_terminated(case_run, "FINISHED" if v.ok else "FAILED")
        for i, fold in enumerate(r.folds):
            fold_run = self.client.create_run(
                self.experiment_id,
                run_name=f"{r.suite}::{r.case}::fold{i}",
                tags={
                    "mlflow.parentRunId": case_run,
                    "harness.kind": "fold",
                    "harness.suite": r.suite,
                    "harness.case": r.case,
                    "harness.fold": str(i),
                },
            ).info.run_id
            self._batch(fold_run, [Metric(k, x, now, 0) for k, x in fold.items()], [])
            self.client.set_terminated(fold_run)

    def _batch(self, run_id: str, metrics: list[Any], params: list[Any]) -> None:
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def _to_outbox(self, outcome: Outcome) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        r = outcome.result
        name = f"{int(time.time())}-{r.suite}__{r.case}-{uuid.uuid4().hex[:8]}"
        tmp = self.outbox / f".{name}.tmp"
        tmp.write_text(outcome.to_json(), encoding="utf-8")
        tmp.replace(self.outbox / f"{name}.json")

    def close(self, passed: bool) -> None:
        if self.client is not None and self.broken is None and self.session_run is not None:
            try:
                self.client.set_tag(
                    self.session_run, "harness.verdict", "pass" if passed else "regressed"
                )
                self.client.set_terminated(self.session_run, "FINISHED" if passed else "FAILED")
            except Exception as err:
                self.messages.append(
                    f"MLflow at {self.uri}: could not close the session run ({err})"
                )
        if self.client is not None and self.broken is None:
            self.messages.append(
                f"results logged to MLflow at {self.uri} "
                f"(experiment {EXPERIMENT!r}, run {self.session_run})"
            )


def _source_tags() -> dict[str, str]:
    from harness.baseline import git_commit

    tags = {"mlflow.source.git.commit": git_commit()}
    if os.environ.get("GITHUB_ACTIONS") == "true":
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        repo, run = os.environ.get("GITHUB_REPOSITORY", ""), os.environ.get("GITHUB_RUN_ID", "")
        if repo and run:
            tags["harness.ci_run_url"] = f"{server}/{repo}/actions/runs/{run}"
    return tags
