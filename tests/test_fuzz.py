"""A hypothesis-driven fuzzer over the files a user (or an attacker) hands the harness: suite
TOML and suite tables, baseline JSON, outbox records. The property everywhere: a valid result or
one clear line (the module's own error type, no newline), never another exception.

The budget is bounded and deterministic (``derandomize``) so CI is repeatable; raise it locally
with ``HARNESS_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.baseline import Baseline, BaselineError, BaselineStore
from harness.gate import evaluate
from harness.results import CaseResult, MetricSummary
from harness.spec import SpecError, SuiteSpec, load_suite, suite_from_dict

EXAMPLES = int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**31, 2**63, 10**400])  # 5,000 digits: the text fuzzer
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["..", ".", "-k", "a/b", "$(touch x)", "npz:../../etc/passwd", "é" * 200])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict) -> dict:
    """``base`` with 1-3 values replaced, keys deleted or keys added, anywhere in the tree."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            node[path[-1]] = draw(VALUES)
        elif action == "delete":
            del node[path[-1]]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=12))] = draw(VALUES)
    return data


def _one_line(err: BaseException) -> None:
    text = str(err)
    assert text and "\n" not in text, repr(text)


# --- baselines


def _result() -> CaseResult:
    metrics = {
        "pruned.accuracy": MetricSummary.of([0.9, 0.8]),
        "pruned.f1_macro": MetricSummary.of([0.85, 0.8]),
        "dense.f1_macro": MetricSummary.of([0.9, 0.85]),
    }
    return CaseResult("s", "c", "abc", "ff00", ({}, {}), metrics, 1.0, {"name": "x"})


BASELINE = Baseline.from_result(_result(), threads=1).to_dict()


def _check_baseline_text(root: Path, text: str) -> None:
    from harness.spec import RuleSpec

    path = root / "s" / "c.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    try:
        baseline = BaselineStore(root).load("s", "c")
    except BaselineError as err:
        _one_line(err)
        return
    assert baseline is not None
    rules = (
        RuleSpec("pruned.accuracy", max_drop=0.01),
        RuleSpec("pruned.f1_macro", max_drop=0.01),
        RuleSpec("vs_dense.f1_macro", max_drop=0.05),
    )
    evaluate(_result(), baseline, rules)  # judges without raising


@FUZZ
@given(data=mutated(BASELINE))
def test_fuzz_baseline_structure(tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:
    text = json.dumps(data, allow_nan=True)
    _check_baseline_text(tmp_path_factory.mktemp("b"), text)


@FUZZ
@given(
    cut=st.integers(0, 4000),
    insert=st.sampled_from(["", "[" * 100_000, "{", "1" * 5000, "NaN", "\x00", "\ud800", "}"]),
)
def test_fuzz_baseline_text(
    tmp_path_factory: pytest.TempPathFactory, cut: int, insert: str
) -> None:
    text = json.dumps(BASELINE, indent=2)
    cut = min(cut, len(text))
    broken = text[:cut] + insert + text[cut:]
    root = tmp_path_factory.mktemp("b")
    try:
        _check_baseline_text(root, broken)
    except UnicodeEncodeError:  # a lone surrogate cannot even be written as UTF-8
        (root / "s" / "c.json").write_bytes(broken.encode("utf-8", "surrogatepass"))
        with pytest.raises(BaselineError) as err:
            BaselineStore(root).load("s", "c")
        _one_line(err.value)


# --- suites

SUITE: dict = {
    "suite": {
        "name": "w",
        "dataset": "sklearn:wine",
        "model": "harness.models:mlp",
        "model_args": {"hidden": [8]},
        "seed": 0,
    },
    "cv": {"folds": 3, "repeats": 1},
    "train": {"epochs": 2, "lr": 0.01, "scheduler": "cosine", "batch_size": 32},
    "latency": {"batch": 16, "repeats": 3},
    "checks": {"examples": 5},
    "gate": {"pruned.f1_macro": {"max_drop": 0.02}, "pruned.accuracy": {"max_drop": 0.02}},
    "edge": {"sets": ["gaussian_noise:0.1"]},
    "case": [
        {
            "name": "mag-50",
            "prune": {"method": "magnitude", "sparsity": 0.5},
            "finetune": {"epochs": 1},
        },
        {
            "name": "struct-30",
            "prune": {"method": "structured", "sparsity": 0.3, "args": {"ignore": ["0"]}},
            "gate": {"pruned.accuracy": {"max_drop": 0.05}},
        },
    ],
}


def test_the_fuzzed_suite_is_valid_to_start_with() -> None:
    assert isinstance(suite_from_dict(copy.deepcopy(SUITE)), SuiteSpec)


@FUZZ
@given(data=mutated(SUITE))
def test_fuzz_suite_tables(data: dict) -> None:
    try:
        spec = suite_from_dict(data)
    except SpecError as err:
        _one_line(err)
        return
    assert isinstance(spec, SuiteSpec)
    for case in spec.cases:  # a suite that validates is one the runner can describe
        assert len(spec.spec_hash(case)) == 16
        spec.rules(case)


def test_toml_writer_round_trips() -> None:
    assert tomllib.loads(tomli_w.dumps(SUITE)) == SUITE


TOML_INSERTS = [
    *["", "=", "[", "]]", '"', "\n[suite]\n", "nan", "1e400", "\x00", "é", "{a={b={c=1}}}"],
    *["1" * 5000, "[" * 5000, "x = " + "[" * 5000],  # beyond int parsing, deep nesting
]


@FUZZ
@given(
    cut=st.integers(0, 2000),
    drop=st.integers(0, 20),
    insert=st.sampled_from(TOML_INSERTS),
)
def test_fuzz_suite_text(
    tmp_path_factory: pytest.TempPathFactory, cut: int, drop: int, insert: str
) -> None:
    text = tomli_w.dumps(SUITE)
    cut = min(cut, len(text))
    path = tmp_path_factory.mktemp("s") / "suites" / "w.toml"
    path.parent.mkdir()
    path.write_text(text[:cut] + insert + text[cut + drop :], encoding="utf-8")
    try:
        load_suite(path)
    except SpecError as err:
        _one_line(err)
        assert str(path.name) in str(err)


# --- outbox records (what mlflow-sync reads back)


def _record() -> dict:
    from harness.results import Outcome, Status, Verdict

    outcome = Outcome(_result(), Verdict("s", "c", Status.PASS), {"seed": "0"}, "suites/s.toml")
    return {
        "session": {"id": "f" * 32, "name": "fuzz", "tags": {}},
        "outcome": json.loads(outcome.to_json()),
    }


RECORD = _record()


@settings(FUZZ, max_examples=max(10, EXAMPLES // 5))
@given(data=mutated(RECORD))
def test_fuzz_outbox_records(tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:
    from harness import tracking

    root = tmp_path_factory.mktemp("o")
    outbox = root / "outbox"
    outbox.mkdir()
    (outbox / "1-s__c-0.json").write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
    store = tmp_path_factory.getbasetemp() / "fuzz-outbox.db"  # one store: migrations are slow
    report = tracking.sync_outbox(f"sqlite:///{store}", outbox)
    for line in report.failed:
        assert "\n" not in line and line.startswith(str(outbox)), line
    assert report.synced + report.skipped + len(report.failed) == 1
