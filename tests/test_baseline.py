"""Baseline files: round trip, on-disk format, atomic writes, validation, hardware fingerprint."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.baseline import (
    SCHEMA_VERSION,
    Baseline,
    BaselineError,
    BaselineStore,
    environment,
    git_commit,
    same_hardware,
)
from harness.provenance import cpu_id
from harness.runner import CaseResult, MetricSummary


def _baseline(**changes: Any) -> Baseline:
    fields: dict[str, Any] = {
        "suite": "tiny",
        "case": "mag-50",
        "spec_hash": "0123456789abcdef",
        "env": {
            "python": "3.11.9",
            "cpu": "Test CPU",
            "machine": "x86_64",
            "cpu_count": 2,
            "threads": 1,
            "packages": {"numpy": "2.0", "prune-harness": None},
        },
        "commit": "deadbeef",
        "created": "2024-05-01T12:00:00Z",
        "metrics": {
            "pruned.f1_macro": MetricSummary((0.9, 0.8), 0.85, 0.07071067811865474),
            "pruned.params": MetricSummary((1000.0, 1000.0), 1000.0, 0.0),
            "speedup": MetricSummary((1.25,), 1.25, 0.0),
        },
    }
    fields.update(changes)
    return Baseline(**fields)


def test_round_trip(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "baselines")
    original = _baseline()
    path = store.save(original)
    assert path == tmp_path / "baselines" / "tiny" / "mag-50.json"
    assert store.path("tiny", "mag-50") == path
    loaded = store.load("tiny", "mag-50")
    assert loaded == original
    assert loaded is not None and loaded.value("pruned.f1_macro") == 0.85
    assert loaded.value("pruned.nothing") is None
    assert store.list() == [path]


def test_missing_baseline_loads_as_none(tmp_path: Path) -> None:
    assert BaselineStore(tmp_path).load("tiny", "nothing") is None


def test_file_format_sorted_keys_indent_2(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    path = store.save(_baseline())
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert set(data) == {
        "schema_version",
        "suite",
        "case",
        "spec_hash",
        "env",
        "commit",
        "created",
        "metrics",
    }
    assert data["schema_version"] == SCHEMA_VERSION
    assert (data["suite"], data["case"], data["spec_hash"]) == (
        "tiny",
        "mag-50",
        "0123456789abcdef",
    )
    assert data["commit"] == "deadbeef" and data["created"] == "2024-05-01T12:00:00Z"
    assert data["env"]["cpu"] == "Test CPU"
    assert data["metrics"]["pruned.f1_macro"] == {
        "folds": [0.9, 0.8],
        "mean": 0.85,
        "std": 0.07071067811865474,
    }
    for summary in data["metrics"].values():
        assert set(summary) == {"folds", "mean", "std"}


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.save(_baseline())
    store.save(_baseline(commit="second"))  # overwrite in place
    obtained = store.save_obtained(_baseline())
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["mag-50.json"]
    assert obtained == tmp_path / ".obtained" / "tiny" / "mag-50.json"
    assert sorted(p.name for p in obtained.parent.iterdir()) == ["mag-50.json"]
    assert store.list() == [tmp_path / "tiny" / "mag-50.json"]  # .obtained is not a baseline
    loaded = store.load("tiny", "mag-50")
    assert loaded is not None and loaded.commit == "second"


def test_saved_files_get_the_umask_mode_not_a_private_one(tmp_path: Path) -> None:
    # mkstemp-style temporaries are 0600; a baseline reviewed in PRs is an ordinary file
    old = os.umask(0o022)
    try:
        path = BaselineStore(tmp_path).save(_baseline())
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    bad = _baseline(metrics={"pruned.f1_macro": MetricSummary((float("nan"),), float("nan"), 0.0)})
    with pytest.raises(ValueError, match="JSON"):
        store.save(bad)
    assert list(tmp_path.rglob("*")) == []  # no file (the JSON fails before anything is made)


def _write(tmp_path: Path, content: str) -> BaselineStore:
    path = tmp_path / "tiny" / "mag-50.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return BaselineStore(tmp_path)


def _valid_dict() -> dict[str, Any]:
    return _baseline().to_dict()


def _broken(change: str) -> dict[str, Any]:
    data = copy.deepcopy(_valid_dict())
    if change == "schema_version":
        data["schema_version"] = SCHEMA_VERSION + 1
    elif change == "schema_version_string":
        data["schema_version"] = str(SCHEMA_VERSION)
    elif change == "metric_string":
        data["metrics"]["pruned.f1_macro"] = "0.85"
    elif change == "mean_string":
        data["metrics"]["pruned.f1_macro"]["mean"] = "0.85"
    elif change == "fold_string":
        data["metrics"]["pruned.f1_macro"]["folds"] = [0.9, "0.8"]
    elif change == "missing_mean":
        del data["metrics"]["pruned.f1_macro"]["mean"]
    elif change == "metrics_list":
        data["metrics"] = []
    elif change == "env_string":
        data["env"] = "linux"
    elif change.startswith("missing:"):
        del data[change.removeprefix("missing:")]
    return data


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("schema_version", "schema_version"),
        ("schema_version_string", "schema_version"),
        ("metric_string", "metrics.pruned.f1_macro"),
        ("mean_string", "metrics.pruned.f1_macro"),
        ("fold_string", "metrics.pruned.f1_macro"),
        ("missing_mean", "metrics.pruned.f1_macro"),
        ("metrics_list", "metrics"),
        ("env_string", "env"),
        ("missing:schema_version", "schema_version"),
        ("missing:suite", "suite"),
        ("missing:case", "case"),
        ("missing:spec_hash", "spec_hash"),
        ("missing:commit", "commit"),
        ("missing:created", "created"),
        ("missing:env", "env"),
        ("missing:metrics", "metrics"),
    ],
)
def test_malformed_files_raise_one_line_naming_the_file(
    tmp_path: Path, change: str, key: str
) -> None:
    store = _write(tmp_path, json.dumps(_broken(change)))
    with pytest.raises(BaselineError) as info:
        store.load("tiny", "mag-50")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{store.path('tiny', 'mag-50')}: {key} = ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json at all", "not readable JSON (Expecting value: line 1 column 1"),
        ('{"schema_version": 1,', "not readable JSON (Expecting property name enclosed in"),
        ("", "not readable JSON (Expecting value: line 1 column 1"),
        ("[1, 2]", "<root> = 'list': must be a JSON object"),
        ("null", "<root> = 'NoneType': must be a JSON object"),
    ],
)
def test_not_a_json_object_raises(tmp_path: Path, content: str, problem: str) -> None:
    store = _write(tmp_path, content)
    with pytest.raises(BaselineError) as info:
        store.load("tiny", "mag-50")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{store.path('tiny', 'mag-50')}: {problem}")


def test_invalid_utf8_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny" / "mag-50.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(BaselineError, match="not readable JSON"):
        BaselineStore(tmp_path).load("tiny", "mag-50")


def test_integer_values_are_accepted_as_floats(tmp_path: Path) -> None:
    data = _valid_dict()
    data["metrics"]["pruned.params"] = {"folds": [1000, 1000], "mean": 1000, "std": 0}
    loaded = _write(tmp_path, json.dumps(data)).load("tiny", "mag-50")
    assert loaded is not None
    assert loaded.metrics["pruned.params"] == MetricSummary((1000.0, 1000.0), 1000.0, 0.0)


def test_from_result_copies_the_result() -> None:
    metrics = {"pruned.f1_macro": MetricSummary((0.5, 0.7), 0.6, 0.1414)}
    result = CaseResult(
        "s",
        "c",
        "hash",
        "digest",
        ({"pruned.f1_macro": 0.5}, {"pruned.f1_macro": 0.7}),
        metrics,
        1.0,
    )
    b = Baseline.from_result(result, threads=3)
    assert (b.suite, b.case, b.spec_hash) == ("s", "c", "hash")
    assert b.metrics == metrics and b.metrics is not metrics
    assert b.env["threads"] == 3
    assert b.created.endswith("Z") and len(b.created) == len("2024-05-01T12:00:00Z")
    assert b.commit == git_commit()  # this checkout's commit (or $GITHUB_SHA)


def test_environment_fingerprint() -> None:
    env = environment(2)
    for key in (
        "python",
        "torch",
        "platform",
        "machine",
        "cpu",
        "cpu_count",
        "threads",
        "packages",
    ):
        assert key in env
    assert env["threads"] == 2
    assert set(env["packages"]) == {
        "numpy",
        "scikit-learn",
        "scipy",
        "torch-pruning",
        "prune-harness",
    }
    json.dumps(env)  # serializable


def test_same_hardware() -> None:
    env = environment(1)
    assert same_hardware(env, environment(1))
    other_software = {**env, "python": "0.0", "torch": "0.0", "packages": {}}
    assert same_hardware(env, other_software)
    assert not same_hardware(env, environment(2))  # thread count is part of the hardware
    for key, value in (
        ("cpu", "Another CPU"),
        ("cpu_id", "GenuineIntel 6/143/8"),  # a bare "AMD EPYC" names several generations
        ("machine", "riscv"),
        ("cpu_count", 999),
    ):
        assert not same_hardware(env, {**env, key: value})
    assert not same_hardware(env, {})


def test_cpu_id_reads_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
    info.write_text(
        block.format(n=0) + "model name\t: AMD EPYC\nstepping\t: 1\n\n" + block.format(n=1)
    )
    assert cpu_id(info) == "AuthenticAMD 25/1/1"
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")
    assert cpu_id(info) == ""  # no vendor: no id, and the key is left out


def test_an_obtained_file_cannot_overwrite_another_cases_baseline(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    other = store.save(_baseline(case="mag-50.obtained"))  # a valid case name
    before = other.read_bytes()
    store.save_obtained(_baseline())  # case mag-50 failed its baseline
    assert other.read_bytes() == before


@pytest.mark.parametrize(
    "suite, case",
    [
        ("..", "package"),
        ("tiny", ".."),
        ("tiny", "../x"),
        (".hidden", "a"),
        ("tiny", "-k"),
        ("tiny", "a" * 101),
    ],
)
def test_names_that_could_leave_the_directory_are_refused(
    tmp_path: Path, suite: str, case: str
) -> None:
    store = BaselineStore(tmp_path / "baselines")
    with pytest.raises(BaselineError, match=r"name .*: use a letter or digit"):
        store.save(_baseline(suite=suite, case=case))
    assert list(tmp_path.rglob("*.json")) == []


def test_a_symlinked_directory_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "tiny").symlink_to(outside, target_is_directory=True)
    store = BaselineStore(tmp_path / "baselines")
    with pytest.raises(BaselineError, match=r"outside .* symbolic link"):
        store.save(_baseline())
    with pytest.raises(BaselineError, match="outside"):
        store.load("tiny", "mag-50")
    assert list(outside.iterdir()) == []


def test_temporary_and_obtained_files_are_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[1]
    paths = [
        "baselines/digits-mlp/.magnitude-90.json.123.abcd1234.tmp",
        "baselines/.obtained/digits-mlp/magnitude-90.json",
    ]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True)
    assert out.stdout.split() == paths


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.update(schema_version=True), "schema_version = True: expected 1"),
        (lambda d: d["metrics"]["pruned.f1_macro"].update(mean=-math.inf), "must be finite"),
        (lambda d: d["metrics"]["pruned.f1_macro"].update(mean=0.5), "is not the mean of its"),
        (lambda d: d.update(case="other"), "case = 'other': does not match the file's location"),
        (lambda d: d.update(suite="other"), "suite = 'other': does not match the file's"),
    ],
)
def test_edited_baselines_are_refused_in_one_line(tmp_path: Path, edit: Any, problem: str) -> None:
    store = BaselineStore(tmp_path)
    path = store.save(_baseline())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json writes -Infinity as it is
    with pytest.raises(BaselineError, match=re.escape(problem)) as err:
        store.load("tiny", "mag-50")
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
