"""Baselines: ``baselines/<suite>/<case>.json``, written atomically, read back with validation.

Format (UTF-8 JSON, sorted keys, indent 2): ``schema_version``, ``suite``, ``case``, ``spec_hash``,
``dataset_digest`` (of the data measured on), ``env`` (python, torch, platform, cpu, threads,
numerics mode, hardware fingerprint, package versions), ``commit``, ``created`` and ``metrics``:
metric name -> ``{"folds": [...], "mean": x, "std": x}``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness._util import HarnessError, name_problem, one_line, shown, write_json_atomic
from harness.provenance import environment, git_commit
from harness.results import CaseResult, MetricSummary

SCHEMA_VERSION = 1
MAX_BYTES = 64 * 1024 * 1024  # a baseline of 1,000 metrics x 100 folds is about 3 MB


class BaselineError(HarnessError):
    """A baseline file is unreadable or malformed; the message is one line naming the file."""


@dataclass(frozen=True)
class Baseline:
    suite: str
    case: str
    spec_hash: str
    env: dict[str, Any]
    commit: str
    created: str
    metrics: dict[str, MetricSummary]
    schema_version: int = SCHEMA_VERSION
    pie_ids: tuple[int, ...] = ()  # the pruning-identified exemplars (sample indices)
    dataset_digest: str = ""  # sha256 prefix of the data it was measured on ("": not recorded)

    def value(self, name: str) -> float | None:
        summary = self.metrics.get(name)
        return summary.mean if summary else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "suite": self.suite,
            "case": self.case,
            "spec_hash": self.spec_hash,
            "env": self.env,
            "commit": self.commit,
            "created": self.created,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            **({"pie": {"ids": list(self.pie_ids)}} if self.pie_ids else {}),
            **({"dataset_digest": self.dataset_digest} if self.dataset_digest else {}),
        }

    @classmethod
    def from_result(cls, result: CaseResult, *, threads: int) -> Baseline:
        """The baseline a result would be stored as; its ``env`` is the one the result was
        computed in (``result.env``), else this process's."""
        return cls(
            result.suite,
            result.case,
            result.spec_hash,
            dict(result.env) or environment(threads),
            git_commit(),
            dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            dict(result.metrics),
            pie_ids=tuple(result.pie.get("ids", ())),
            dataset_digest=result.dataset_digest,
        )


def same_hardware(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether latencies compare: the same machine type, CPU (name and id: family, model,
    stepping), core and thread counts and device (the CPU when none is recorded)."""
    keys = ("machine", "cpu", "cpu_id", "cpu_count", "threads")
    return all(a.get(k) == b.get(k) for k in keys) and a.get("device", "cpu") == b.get(
        "device", "cpu"
    )


OBTAINED = ".obtained"  # <root>/.obtained/<suite>/<case>.json: no suite name starts with "."


class BaselineStore:
    """Reads and writes ``<root>/<suite>/<case>.json``; results that failed their baseline go
    to ``<root>/.obtained/<suite>/<case>.json``, a namespace no suite or case name can reach."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, suite: str, case: str) -> Path:
        """The baseline file of a case; raises :class:`BaselineError` for a name that breaks
        the naming rule or a path that resolves outside the root (a symlinked directory)."""
        return self._inside(self.root, suite, case)

    def obtained_path(self, suite: str, case: str) -> Path:
        return self._inside(self.root / OBTAINED, suite, case)

    def _inside(self, base: Path, suite: str, case: str) -> Path:
        for kind, name in (("suite", suite), ("case", case)):
            if (problem := name_problem(name)) is not None:
                raise BaselineError(f"{self.root}: {kind} name {name!r}: {problem}")
        path = base / suite / f"{case}.json"
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise BaselineError(
                f"{path}: resolves to {path.resolve()}, outside {root} (a symbolic link?); "
                "baselines are only written inside the baseline directory"
            )
        return path

    def load(self, suite: str, case: str) -> Baseline | None:
        """The stored baseline, or None if there is none; raises :class:`BaselineError`."""
        path = self.path(suite, case)
        if not path.exists():
            return None
        try:
            if (size := path.stat().st_size) > MAX_BYTES:
                raise BaselineError(f"{path}: {size} bytes, more than a baseline has ({MAX_BYTES})")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:  # ValueError: JSON, digits
            if isinstance(err, BaselineError):
                raise
            text = " ".join(str(err).split())[:200]
            raise BaselineError(f"{path}: not readable JSON ({text})") from None
        except RecursionError:
            raise BaselineError(f"{path}: not readable JSON (nested too deeply)") from None
        return _parse(data, path)

    def save(self, baseline: Baseline) -> Path:
        """Write atomically (temporary file in the same directory, then rename); a file system
        that refuses the write raises :class:`BaselineError` and leaves the old file intact."""
        return _write(self.path(baseline.suite, baseline.case), baseline)

    def save_obtained(self, baseline: Baseline) -> Path:
        """Write the new results for review to ``<root>/.obtained/<suite>/<case>.json``."""
        return _write(self.obtained_path(baseline.suite, baseline.case), baseline)

    def list(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*/*.json") if not p.parent.name.startswith("."))


def _write(path: Path, baseline: Baseline) -> Path:
    try:
        write_json_atomic(path, baseline.to_dict())
    except OSError as err:
        raise BaselineError(f"{path}: cannot be written ({err.strerror or err})") from err
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_env(env: dict[str, Any], bad: Any) -> None:
    """The parts of ``env`` the gate reads have their recorded shape (objects where objects
    were written); other keys are informational and may be anything."""
    hardware = env.get("hardware", {})
    if not isinstance(hardware, dict):
        raise bad("env.hardware", hardware, "must be an object")
    numerics = hardware.get("numerics", {})
    if not isinstance(numerics, dict):
        raise bad("env.hardware.numerics", numerics, "must be an object")
    variables = numerics.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise bad("env.hardware.numerics.variables", variables, "must be an object of strings")


def _parse(data: Any, path: Path) -> Baseline:
    def bad(key: str, value: Any, problem: str) -> BaselineError:
        return BaselineError(f"{path}: {one_line(key)} = {shown(value)}: {problem}")

    if not isinstance(data, dict):
        raise bad("<root>", type(data).__name__, "must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise bad("schema_version", version, f"expected {SCHEMA_VERSION}")
    for key in ("suite", "case", "spec_hash", "commit", "created"):
        if not isinstance(data.get(key), str):
            raise bad(key, data.get(key), "must be a string")
    for key, expected in (("suite", path.parent.name), ("case", path.stem)):
        if data[key] != expected:
            raise bad(key, data[key], f"does not match the file's location (expected {expected!r})")
    if not isinstance(data.get("env"), dict):
        raise bad("env", data.get("env"), "must be an object")
    _check_env(data["env"], bad)
    raw = data.get("metrics")
    if not isinstance(raw, dict):
        raise bad("metrics", raw, "must be an object")
    metrics = {}
    for name, m in raw.items():
        if not (
            isinstance(m, dict)
            and isinstance(m.get("folds"), list)
            and all(_is_number(v) for v in [*m["folds"], m.get("mean"), m.get("std")])
        ):
            raise bad(f"metrics.{name}", m, 'must be {"folds": [numbers], "mean": x, "std": x}')
        try:
            summary = MetricSummary.from_dict(m)
        except OverflowError:  # an integer beyond any float
            raise bad(f"metrics.{name}", m, "numbers must be finite") from None
        if not all(math.isfinite(v) for v in (*summary.folds, summary.mean, summary.std)):
            raise bad(f"metrics.{name}", m, "numbers must be finite")
        if summary.folds and not math.isclose(
            summary.mean, statistics.fmean(summary.folds), rel_tol=1e-9, abs_tol=1e-12
        ):
            raise bad(f"metrics.{name}.mean", summary.mean, "is not the mean of its folds")
        metrics[name] = summary
    return Baseline(
        data["suite"],
        data["case"],
        data["spec_hash"],
        data["env"],
        data["commit"],
        data["created"],
        metrics,
        version,
        _pie_ids(data.get("pie", {}), path),
        _dataset_digest(data.get("dataset_digest", ""), path),
    )


def _dataset_digest(value: Any, path: Path) -> str:
    if not isinstance(value, str) or not all(c in "0123456789abcdef" for c in value):
        raise BaselineError(
            f"{path}: dataset_digest = {shown(value)}: must be a hexadecimal string"
        )
    return value


def _pie_ids(pie: Any, path: Path) -> tuple[int, ...]:
    ids = pie.get("ids", []) if isinstance(pie, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise BaselineError(f'{path}: pie = {shown(pie)}: must be {{"ids": [sample indices]}}')
    return tuple(ids)
