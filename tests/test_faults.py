"""Faults and hostile input: wrong results from a stale cache, unusable models, diverged
training, corrupt or unwritable baselines, unwritable outboxes and report folders, racing and
half-migrated SQLite stores. Each test reproduces a failure that existed before its fix; the runs
are real (pytester sessions, tiny models trained on real or generated data)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import tracking
from harness.baseline import Baseline, BaselineError, BaselineStore
from harness.gate import evaluate
from harness.provenance import environment
from harness.results import CaseResult, MetricSummary, Remedy, Status

NO_MLFLOW = "--harness-no-mlflow"

NPZ_SUITE = """\
[suite]
name = "{name}"
dataset = "npz:d.npz"
model = "{model}"
model_args = {model_args}
seed = 0

[cv]
folds = 2

[train]
epochs = {epochs}
lr = {lr}

[latency]
batch = 8
warmup = 1
repeats = 2

[gate]
"pruned.accuracy" = {{ max_drop = 0.05 }}

[[case]]
name = "mag-50"
prune = {{ method = "magnitude", sparsity = 0.5 }}
"""


def _data(seed: int, n: int = 120, features: int = 8, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(0, 2, (classes, features))
    X = centers[y] + rng.normal(0, 1, (n, features))
    return {"X": X.astype(np.float32), "y": y}


def _suite(
    where: Path,
    name: str,
    *,
    model: str = "harness.models:mlp",
    model_args: str = "{ hidden = [16] }",
    epochs: int = 3,
    lr: float = 1e-2,
    data: dict[str, np.ndarray] | None = None,
) -> Path:
    (where / "suites").mkdir(parents=True, exist_ok=True)
    np.savez(where / "suites" / "d.npz", **(data if data is not None else _data(0)))
    path = where / "suites" / f"{name}.toml"
    path.write_text(
        NPZ_SUITE.format(name=name, model=model, model_args=model_args, epochs=epochs, lr=lr),
        encoding="utf-8",
    )
    return path


def _regen_then_edit(p: pytest.Pytester, edit: Callable[[dict], None]) -> Path:
    """Suite ``s`` with its baseline written, then ``edit`` applied to the stored
    ``pruned.accuracy`` summary; the baseline's path."""
    _suite(p.path, "s")
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    path = p.path / "baselines" / "s" / "mag-50.json"
    data = json.loads(path.read_text())
    edit(data["metrics"]["pruned.accuracy"])
    path.write_text(json.dumps(data))
    return path


def _folds(p: pytest.Pytester, suite: str, metric: str = "dense.accuracy") -> list[float]:
    data = json.loads((p.path / "baselines" / suite / "mag-50.json").read_text())
    return list(data["metrics"][metric]["folds"])


# --- 1. the dense cache is keyed by content; baselines record the data they were measured on


def test_same_dataset_name_in_two_suites_is_not_one_cache_entry(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path / "a", "a", data=_data(1))
    _suite(p.path / "b", "b", data=_data(2, classes=4))
    p.runpytest("b/suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    alone = _folds(p, "b")
    # both in one session, a first: before the fix b reused a's dense models (or crashed
    # loading a 3-class state into a 4-class model)
    res = p.runpytest("a/suites", "b/suites", NO_MLFLOW, "--harness-regen", "-p", "no:randomly")
    res.assert_outcomes(passed=2)
    assert _folds(p, "b") == alone
    assert _folds(p, "a") != alone


def test_replaced_data_file_is_data_changed_not_regressed(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path, "s", data=_data(1))
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    stored = json.loads((p.path / "baselines" / "s" / "mag-50.json").read_text())
    assert len(stored["dataset_digest"]) == 16
    np.savez(p.path / "suites" / "d.npz", **_data(3))
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "s::mag-50: data-changed",
            f"*the data changed since its baseline (npz:d.npz: digest {stored['dataset_digest']}"
            " -> *); rules against the baseline are not applied*--harness-regen*",
        ]
    )
    res.stdout.no_fnmatch_line("s::mag-50: regressed")
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    p.runpytest("suites", NO_MLFLOW).assert_outcomes(passed=1)


def _result(digest: str) -> CaseResult:
    m = {"pruned.accuracy": MetricSummary.of([0.9, 0.9])}
    env = environment(1)  # what run_case records
    return CaseResult("s", "c", "h", digest, ({}, {}), m, 0.0, {"name": "npz:d.npz"}, env=env)


def test_gate_data_changed_and_older_baselines_without_digest() -> None:
    from harness.spec import RuleSpec

    rules = (RuleSpec("pruned.accuracy", max_drop=0.01),)
    base = Baseline.from_result(_result("aaaa"), threads=1)
    v = evaluate(_result("bbbb"), base, rules)
    assert v.status is Status.DATA_CHANGED and not v.ok
    assert "digest aaaa -> bbbb" in v.notes[0] and v.remedy is Remedy.DATA_CHANGED
    assert v.lines("R")[0].endswith(
        "if the new data is intended, review and rewrite the baseline with R"
    )
    assert all(c.reference is None for c in v.checks)  # nothing judged against other data
    old = Baseline.from_result(_result(""), threads=1)  # recorded before digests were stored
    assert "dataset_digest" not in old.to_dict()
    assert evaluate(_result("bbbb"), old, rules).status is Status.PASS


def test_baseline_dataset_digest_is_validated(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.save(Baseline.from_result(_result("ab12"), threads=1))
    path = store.path("s", "c")
    assert store.load("s", "c").dataset_digest == "ab12"  # type: ignore[union-attr]
    data = json.loads(path.read_text())
    data["dataset_digest"] = ["x"]
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="dataset_digest = \\['x'\\]: must be a hexadecimal"):
        store.load("s", "c")


# --- 9. --harness-regen repairs what it cannot read


@pytest.mark.parametrize("content", ["{not json", '{"schema_version": 1}', "[]", "1e400"])
def test_regen_replaces_a_corrupt_baseline(pytester: pytest.Pytester, content: str) -> None:
    p = pytester
    _suite(p.path, "s")
    path = p.path / "baselines" / "s" / "mag-50.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"s::mag-50: {path}: *"])
    res.stdout.no_fnmatch_line("*Traceback*")
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    p.runpytest("suites", NO_MLFLOW).assert_outcomes(passed=1)


# --- 10 / 12. user models and training that cannot be measured: one line each

BAD_MODELS = """
import torch
from torch import nn


class _Net(nn.Module):
    def __init__(self, in_features, n_classes, out):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)
        self.out = out

    def forward(self, x):
        return self.out(self.fc(x), x)


def wrong_width(in_features, n_classes):
    return _Net(in_features, n_classes, lambda z, x: z[:, :-1])


def one_d(in_features, n_classes):
    return _Net(in_features, n_classes, lambda z, x: z.sum(1))


def integer_logits(in_features, n_classes):
    return _Net(in_features, n_classes, lambda z, x: z.round().long())


def not_a_tensor(in_features, n_classes):
    return _Net(in_features, n_classes, lambda z, x: {"scores": z})  # no logits in it


def raises(in_features, n_classes):
    def boom(z, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\\n(long torch detail)")
    return _Net(in_features, n_classes, boom)


class _Frozen(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x):
        return torch.zeros(len(x), self.n_classes)


def no_parameters(in_features, n_classes):
    return _Frozen(n_classes)


class _NanOnceTrained(nn.Module):
    def __init__(self, in_features, n_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)
        self.trained = False

    def forward(self, x):
        self.trained = self.trained or self.training
        out = self.fc(x)
        return out * float("nan") if self.trained and not self.training else out


def nan_after_training(in_features, n_classes):
    return _NanOnceTrained(in_features, n_classes)


class _NanForExtremes(nn.Module):
    def __init__(self, in_features, n_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, x):
        out = self.fc(x)
        extreme = x.abs().amax(1, keepdim=True) > 1e3
        return torch.where(extreme, torch.full_like(out, float("nan")), out)


def nan_for_extremes(in_features, n_classes):
    return _NanForExtremes(in_features, n_classes)
"""

MODEL_PROBLEMS = {
    "wrong_width": "returned shape (2, 2); expected (2, 3) (batch, classes)",
    "one_d": "returned shape (2,); expected (2, 3) (batch, classes)",
    "integer_logits": "returned torch.int64 logits; expected floating point",
    "not_a_tensor": "forward returned dict, not a tensor of logits",
    "raises": "forward on a batch of shape (2, 8) failed (RuntimeError: mat1 and mat2 shapes*",
    "no_parameters": "the model has no trainable parameters",
    "nan_after_training": "fold 0: the dense model returns NaN or infinite logits for 60 of 60*",
}


@pytest.fixture
def bad_models(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(bad_models=BAD_MODELS)
    pytester.makeconftest(
        "import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).parent))"
    )
    return pytester


@pytest.mark.parametrize("factory", sorted(MODEL_PROBLEMS))
def test_unusable_model_is_one_line(bad_models: pytest.Pytester, factory: str) -> None:
    p = bad_models
    _suite(p.path, "s", model=f"bad_models:{factory}", model_args="{}")
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen")
    if factory == "nan_after_training":  # only training shows it: the case fails
        res.assert_outcomes(failed=1)
        res.stdout.fnmatch_lines([f"s::mag-50: *{MODEL_PROBLEMS[factory]}"])
    else:  # the model is probed when the suite is loaded: one line naming file and key
        res.assert_outcomes(errors=1)
        res.stdout.fnmatch_lines(
            [f"*s.toml: suite.model = 'bad_models:{factory}': *{MODEL_PROBLEMS[factory]}"]
        )
    res.stdout.no_fnmatch_line("*Traceback*")
    res.stdout.no_fnmatch_line("*site-packages*")


def test_unusable_model_in_the_cli_is_exit_2(
    bad_models: pytest.Pytester,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.cli import main

    monkeypatch.syspath_prepend(str(bad_models.path))
    suite = _suite(bad_models.path, "s", model="bad_models:one_d", model_args="{}")
    code = main(["run", str(suite), "--no-mlflow", "--baselines", str(bad_models.path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-harness: ")
    assert lines[0].endswith(
        "s.toml: suite.model = 'bad_models:one_d': bad_models:one_d: forward on "
        "a batch of shape (2, 8) returned shape (2,); expected (2, 3) (batch, classes)"
    )


def test_diverged_training_fails_clearly(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path, "s", lr=1e308)
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        ["s::mag-50: fold 0: dense training diverged: the loss is nan in epoch * of 3 (lr 1e+308*"]
    )
    assert not (p.path / "baselines" / "s" / "mag-50.json").exists()


# --- 10 / 12. data files that are not data: one line each


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"X": np.array(["a", "b"] * 30).reshape(60, 1), "y": np.arange(60) % 2}, "dtype <U1"),
        ({"X": np.ones((60, 2)) + 1j, "y": np.arange(60) % 2}, "dtype complex128"),
        ({"X": np.ones((60, 2)), "y": np.zeros((60, 2))}, "y = array of shape (60, 2)"),
        ({"X": np.array(3.0), "y": np.arange(60) % 2}, "X = array of shape ()"),
        ({"X": np.zeros((0, 4)), "y": np.zeros(0)}, "X = array of shape (0, 4)"),
        ({"X": np.ones((60, 2)), "y": np.r_[np.arange(59) % 2, np.nan]}, "labels contain NaN"),
        ({"X": np.full((60, 2), 1e300), "y": np.arange(60) % 2}, "NaN or infinity"),
    ],
    ids=["strings", "complex", "2d-y", "scalar-x", "empty", "nan-label", "beyond-float32"],
)
def test_bad_npz_is_one_line(tmp_path: Path, arrays: dict, problem: str) -> None:
    from harness.data import load_dataset
    from harness.data.registry import DatasetError

    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=None) as err:
        load_dataset("npz:d.npz", {}, tmp_path)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_csv_labels_1_and_1_0_are_one_class(tmp_path: Path) -> None:
    from harness.data import load_dataset

    rows = [f"{i % 5},{i % 3},{'1' if i % 2 else '0'}" for i in range(40)]
    rows[1] = "1,1,1.0"
    (tmp_path / "d.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset("csv:d.csv", {}, tmp_path)
    assert ds.class_names == ("0", "1")


# --- 8. where results go cannot be written: the verdict stands


def test_artifacts_folder_unwritable_does_not_fail_a_passing_case(tmp_path: Path) -> None:
    import tomllib

    from conftest import TINY_SUITE

    from harness.session import Settings, check_case
    from harness.spec import suite_from_dict

    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    case = suite.cases[0]
    blocked = tmp_path / "artifacts"
    blocked.write_text("a file where the folder should be")
    settings = Settings(baselines=tmp_path / "baselines", regen=True, artifacts_dir=blocked)
    outcome = check_case(suite, case, settings)
    assert outcome.verdict.ok and outcome.artifacts is None
    assert len(outcome.warnings) == 1
    assert outcome.warnings[0].startswith(f"tiny::mag-50: report files not written to {blocked}")


def test_obtained_unwritable_keeps_the_verdict(pytester: pytest.Pytester) -> None:
    p = pytester

    def raise_it(m: dict) -> None:
        m["folds"] = [v + 0.2 for v in m["folds"]]
        m["mean"] += 0.2

    _regen_then_edit(p, raise_it)
    (p.path / "baselines" / ".obtained").write_text("not a folder")
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["s::mag-50: regressed", "*s::mag-50: new results not written*"])
    res.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else False, reason="root")
def test_read_only_baselines_regen_is_one_line(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path, "s")
    root = p.path / "baselines"
    root.mkdir()
    root.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        res = p.runpytest("suites", NO_MLFLOW, "--harness-regen")
    finally:
        root.chmod(stat.S_IRWXU)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["s::mag-50: *baselines/s/mag-50.json: cannot be written*"])


def test_read_only_baselines_regen_is_one_line_as_root_too(tmp_path: Path) -> None:
    """Root ignores permission bits; a file where the suite's folder should be fails for all."""
    from harness.baseline import BaselineStore

    (tmp_path / "s").write_text("a file, not a folder")
    store = BaselineStore(tmp_path)
    with pytest.raises(BaselineError, match=r"s/c.json: cannot be written \(") as err:
        store.save(Baseline.from_result(_result("ab"), threads=1))
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "s"]  # no temporary file left


def test_outbox_unwritable_falls_back_then_says_what_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "outbox"
    blocked.write_text("a file where the outbox folder should be")
    tracker = tracking.MlflowTracker(
        "http://127.0.0.1:9", session_name="s", outbox=blocked
    )  # nothing listens on port 9
    tracker.broken = "down"
    monkeypatch.setattr(tracking.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    tracker._write_outbox("x__y-1", {"k": 1})
    fallback = tmp_path / "tmp" / f"prune-harness-outbox-{os.getuid()}"
    assert [f.name.endswith("-x__y-1.json") for f in fallback.iterdir()] == [True]
    assert len(tracker.messages) == 1 and "results are kept in" in tracker.messages[0]
    assert f"mlflow-sync --outbox {fallback}" in tracker.messages[0]
    # both places refused (a file where the fallback folder should be): said, never raised
    for f in fallback.iterdir():
        f.unlink()
    fallback.rmdir()
    fallback.write_text("blocked too")
    tracker._write_outbox("x__z-2", {"k": 2})
    assert "x__z-2: not logged to MLflow and no outbox could be written" in tracker.messages[-1]


# --- 3. SQLite stores: created under a lock; a half-migrated store is named


def _connect(db: str) -> str:
    try:
        tracking.connect(f"sqlite:///{db}")
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "ok"


def test_concurrent_sessions_on_a_fresh_store(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for trial in range(2):
        db = tmp_path / f"m{trial}.db"
        with ctx.Pool(3) as pool:
            assert pool.map(_connect, [str(db)] * 3) == ["ok"] * 3
        with sqlite3.connect(db) as con:
            names = [r[0] for r in con.execute("select name from sqlite_master")]
        assert not [n for n in names if n.startswith("_alembic_tmp_")]
        assert _connect(str(db)) == "ok"


def test_half_migrated_store_is_named_with_the_recovery(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    assert _connect(str(db)) == "ok"
    with sqlite3.connect(db) as con:
        con.execute("create table _alembic_tmp_metrics (x int)")
    problem = _connect(str(db))
    assert problem.startswith(
        f"StoreError: {db}: an interrupted migration left _alembic_tmp_metrics; MLflow cannot"
    )
    assert f"mv {db} {db}.broken" in problem and "mlflow-sync" in problem
    assert tracking.describe_failure(tracking.StoreError(problem)) == problem


def test_killed_migration_never_leaves_a_silently_broken_store(tmp_path: Path) -> None:
    """SIGKILL a session while it creates a fresh store, at several moments: the next session
    either opens the store or names it as half-migrated (never an obscure SQL error)."""
    code = "import sys; from harness.tracking import connect; connect('sqlite:///' + sys.argv[1])"
    for i, delay in enumerate((0.5, 1.0, 1.5, 2.0)):
        db = tmp_path / f"k{i}.db"
        proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        problem = _connect(str(db))
        assert problem == "ok" or problem.startswith(f"StoreError: {db}: "), problem


# --- 14. two mlflow-sync runs at once


def _sync(args: tuple[str, str]) -> tuple[int, int, list[str]]:
    report = tracking.sync_outbox(args[0], Path(args[1]))
    return report.synced, report.skipped, report.failed


def test_two_concurrent_syncs_log_each_case_once(tmp_path: Path) -> None:
    import tomllib

    from conftest import TINY_SUITE

    from harness.session import Settings, check_case
    from harness.spec import suite_from_dict

    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    settings = Settings(baselines=tmp_path / "baselines", regen=True)
    outcomes = [check_case(suite, c, settings) for c in suite.cases]
    outbox = tmp_path / "outbox"
    tracker = tracking.MlflowTracker("sqlite:///x", session_name="s", outbox=outbox)
    tracker.broken = "down"
    for o in outcomes:
        tracker.log_case(o)
    tracker.close(True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.connect(uri)  # the store exists; the race is on the outbox
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_sync, [(uri, str(outbox))] * 2)
    assert sum(r[0] for r in results) == 2 and all(r[2] == [] for r in results), results
    client, exp = tracking.connect(uri)
    cases = client.search_runs([exp], "tags.`harness.kind` = 'case'")
    assert len(cases) == 2 and all(c.data.tags[tracking.COMPLETE] == "true" for c in cases)
    assert not list(outbox.glob("*.json"))


# --- 10 / 11 / 12. bounds on every count, a time budget, names and numbers that must exist

WINE: dict = {
    "suite": {"name": "w", "dataset": "sklearn:wine", "model_args": {"hidden": [8]}},
    "cv": {"folds": 3},
    "train": {"epochs": 2, "lr": 0.01},
    "case": [{"name": "c", "prune": {"method": "magnitude", "sparsity": 0.5}}],
}


PRUNE = ("case", 0, "prune")


def _spec_error(changes: dict[tuple, object]) -> str:
    import copy

    from harness.resolution import resolve
    from harness.spec import SpecError, suite_from_dict

    data = copy.deepcopy(WINE)
    for path, value in changes.items():
        node: dict = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[path[-1]] = value
    with pytest.raises(SpecError) as err:
        resolve(suite_from_dict(data))  # as the faces check a suite: structure, then resolution
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({("train", "epochs"): 10**9}, "train.epochs = 1000000000: must be <= 100000"),
        ({("cv", "repeats"): 10**9}, "cv.repeats = 1000000000: must be <= 100"),
        ({("latency", "repeats"): 10**9}, "latency.repeats = 1000000000: must be <= 100000"),
        ({("latency", "batch"): 10**12}, "latency.batch = 1000000000000: must be <= 65536"),
        ({("checks", "examples"): 10**9}, "checks.examples = 1000000000: must be <= 100000"),
        ({("suite", "seed"): 2**64}, f"suite.seed = {2**64}: must be <= 4294967295"),
        ({("cv", "seed"): -1}, "cv.seed = -1: must be >= 0"),
        ({("suite", "threads"): 10**6}, "suite.threads = 1000000: must be <= 1024"),
        (
            {("case", 0, "prune", "schedule"): "iterative", ("case", 0, "prune", "steps"): 10**9},
            "case[c].prune.steps = 1000000000: must be <= 1000",
        ),
        ({("train", "weight_decay"): 1e308}, "train.weight_decay = 1e+308: times lr (0.01)"),
        (
            {("train", "scheduler"): "plateau", ("train", "gamma"): 1.5},
            'train.gamma = 1.5: must be > 0 and < 1 with scheduler = "plateau"',
        ),
        ({("suite", "time_budget"): 0}, "suite.time_budget = 0: must be > 0 (seconds)"),
        ({("suite", "time_budget"): 1e12}, "suite.time_budget = 1000000000000.0: must be <="),
        (
            {
                ("case", 0, "prune"): {
                    "method": "structured",
                    "sparsity": 0.3,
                    "args": {"ignore": ["nope"]},
                }
            },
            "case[c].prune.args.ignore = 'nope': no such prunable layer (the model has: 0, 2)",
        ),
        (
            {
                ("case", 0, "prune"): {
                    "method": "lrp",
                    "sparsity": 0.3,
                    "args": {"ignore": ["2", "x"]},
                }
            },
            "case[c].prune.args.ignore = 'x': no such prunable layer",
        ),
        (
            {
                ("case", 0, "prune"): {
                    "method": "l1",
                    "sparsity": 0.5,
                    "args": {"strength": math.nan},
                }
            },
            "case[c].prune.args.strength = nan: must be finite",
        ),
        ({("suite", "model_args"): {"hidden": [10**12]}}, "suite.model_args = {'hidden': [10"),
    ],
    ids=lambda v: "-".join(str(p) for p in v) if isinstance(v, tuple) else None,
)
def test_out_of_bounds_and_unknown_are_one_line(changes: dict, expected: str) -> None:
    assert expected in _spec_error(changes)


def test_time_budget_stops_a_case_in_one_line(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path, "s", epochs=100_000)
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen", "--harness-time-budget", "2")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        ["s::mag-50: ran past its time budget of 2 s (training, epoch * of 100000); raise*"]
    )
    assert not (p.path / "baselines" / "s" / "mag-50.json").exists()
    res = p.runpytest("suites", "--harness-time-budget", "nan")
    res.stderr.fnmatch_lines(["*--harness-time-budget=nan: must be seconds > 0*"])
    assert res.ret == pytest.ExitCode.USAGE_ERROR


def test_time_budget_the_tighter_wins() -> None:
    import tomllib

    from conftest import TINY_SUITE

    from harness._util import BudgetError
    from harness.runner import run_case
    from harness.spec import suite_from_dict

    data = tomllib.loads(TINY_SUITE)
    data["suite"]["time_budget"] = 1e-9
    suite = suite_from_dict(data)
    with pytest.raises(BudgetError, match="time budget of 1e-09 s"):
        run_case(suite, suite.cases[0], time_budget=3600)
    assert suite.spec_hash(suite.cases[0]) == suite_from_dict(tomllib.loads(TINY_SUITE)).spec_hash(
        suite.cases[0]
    )  # a budget changes no result: not part of the spec hash


def test_baseline_fold_count_must_match_the_suite(pytester: pytest.Pytester) -> None:
    p = pytester

    def add_fold(m: dict) -> None:  # three values, mean unchanged: only the count is off
        m["folds"] = [*m["folds"], m["mean"]]

    path = _regen_then_edit(p, add_fold)
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [f"s::mag-50: {path}: metrics.pruned.accuracy.folds has 3 values; the suite runs 2 folds"]
    )
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {
                ("suite", "dataset"): "synthetic:classification",
                ("suite", "dataset_args"): {"n_samples": 10**12},
            },
            "n_samples * n_features = 20000000000000: at most 1000000000",
        ),
        (
            {("suite", "dataset"): "mnist1d", ("suite", "dataset_args"): {"num_samples": 10**9}},
            "num_samples = 1000000000: at most 1000000",
        ),
        ({("edge",): {"sets": ["gaussian_noise:1e308"]}}, "'1e308': at most 1e+06 in magnitude"),
    ],
    ids=["synthetic", "mnist1d", "edge"],
)
def test_huge_sizes_are_one_line(changes: dict, expected: str) -> None:
    assert expected in _spec_error(changes)


# --- full and read-only file systems (a real tmpfs where it can be mounted), SIGKILL in regen


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, filled up: every write to it fails with ENOSPC. Needs the right to mount
    (root, as on CI runners' containers); skipped elsewhere."""
    where = tmp_path / "full"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    try:
        (where / "baselines" / "s").mkdir(parents=True)
        (where / "outbox").mkdir()
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where: Path) -> None:
    with (where / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    with pytest.raises(OSError, match="No space left"):
        (where / "probe").write_bytes(b"x" * 4096)


def test_full_disk_regen_keeps_the_old_baseline(full_fs: Path) -> None:
    store = BaselineStore(full_fs / "baselines")
    old = Baseline.from_result(_result("aa"), threads=1)
    path = store.save(old)
    before = path.read_bytes()
    _fill(full_fs)
    with pytest.raises(BaselineError) as err:
        store.save(Baseline.from_result(_result("bb"), threads=1))
    assert str(err.value) == f"{path}: cannot be written (No space left on device)"
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.json"]  # no temporary file


def test_full_disk_while_mlflow_is_down_keeps_the_session(
    pytester: pytest.Pytester, full_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox on a full disk, its fallback blocked, the server unreachable: the session
    still ends with its verdicts and says which results are only in the report."""
    p = pytester
    _suite(p.path, "s")
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    shutil.rmtree(p.path / ".harness")  # the disk cache of the first run: the disk is full now
    (p.path / ".harness").symlink_to(full_fs)
    _fill(full_fs)
    tmp = p.path / "tmp"  # writable, but its fallback outbox is blocked by a file
    tmp.mkdir()
    (tmp / f"prune-harness-outbox-{os.getuid()}").write_text("blocked")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    res = p.runpytest_subprocess("suites", "--harness-mlflow-uri", "http://127.0.0.1:9")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(
        [
            "*MLflow at http://127.0.0.1:9 failed*",
            "*s__mag-50-*: not logged to MLflow and no outbox could be written (*No space left*",
            "*~session-end: not logged to MLflow and no outbox could be written*",
        ]
    )
    res.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_sigkill_during_regen_leaves_old_or_new_never_broken(pytester: pytest.Pytester) -> None:
    p = pytester
    _suite(p.path, "s")
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    path = p.path / "baselines" / "s" / "mag-50.json"
    store = BaselineStore(p.path / "baselines")
    cmd = [sys.executable, "-m", "harness.cli", "run", "suites/s.toml", "--regen", "--no-mlflow"]
    for delay in (1.0, 2.0, 3.0, 4.0, 6.0):
        proc = subprocess.Popen(
            cmd, cwd=p.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert store.load("s", "mag-50") is not None  # old or new: always whole and valid
        leftovers = [f.name for f in path.parent.iterdir() if f.name != "mag-50.json"]
        assert all(n.startswith(".mag-50.json.") and n.endswith(".tmp") for n in leftovers)
    ignored = p.path / ".gitignore"
    ignored.write_text((Path(__file__).parents[1] / ".gitignore").read_text())
    subprocess.run(["git", "init", "-q"], cwd=p.path, check=True)
    probe = path.parent / ".mag-50.json.123.abcd.tmp"
    probe.write_text("{}")
    check = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=p.path, check=False)
    assert check.returncode == 0  # a temporary file a kill leaves is never committed


def test_nan_for_extreme_inputs_fails_under_the_default_rules(bad_models: pytest.Pytester) -> None:
    p = bad_models
    path = _suite(p.path, "s", model="bad_models:nan_for_extremes", model_args="{}")
    text = path.read_text()
    path.write_text(text.replace('[gate]\n"pruned.accuracy" = { max_drop = 0.05 }\n', ""))
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["s::mag-50: regressed", "property_failures: now *, allowed <= 0*"])
