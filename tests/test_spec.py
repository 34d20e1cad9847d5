"""Suite specs: TOML/dict loading, defaults, rule merging, spec hashes and one-line SpecErrors.

Everything here is real: real TOML files in ``tmp_path``, the real dataset and model registries,
the real pytest plugin (through ``pytester``) and the real CLI. Datasets are tiny (sklearn's wine,
178 samples) or written by the test, and no model is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import spec
from harness.cli import main
from harness.data import load_dataset
from harness.resolution import resolve
from harness.spec import (
    DEFAULT_RULES,
    LatencySpec,
    RuleSpec,
    SpecError,
    SuiteSpec,
    TrainSpec,
)


# The tests below check suites as the faces see them: loaded (structure), then resolved
# against their dataset, model and methods. The split itself is tested at the end of the file.
def load_suite(path: str | Path) -> SuiteSpec:
    return resolve(spec.load_suite(path))


def suite_from_dict(data: Mapping[str, Any], source: str = "<python>") -> SuiteSpec:
    return resolve(spec.suite_from_dict(data, source))


REPO = Path(__file__).resolve().parents[1]
DELETE = object()  # marker for _with(): remove the key

# A small valid suite: wine has 3 classes of 59, 71 and 48 samples, 13 features.
BASE: dict[str, Any] = {
    "suite": {
        "name": "tiny",
        "dataset": "sklearn:wine",
        "model": "harness.models:mlp",
        "model_args": {"hidden": [8]},
    },
    "cv": {"folds": 3},
    "train": {"epochs": 2, "lr": 0.01},
    "gate": {
        "pruned.f1_macro": {"max_drop": 0.02},
        "pruned.accuracy": {"max_drop": 0.02},
    },
    "case": [
        {
            "name": "mag-50",
            "prune": {"method": "magnitude", "sparsity": 0.5},
            "finetune": {"epochs": 1},
        },
        {
            "name": "struct-30",
            "prune": {"method": "structured", "sparsity": 0.3},
            "gate": {"pruned.f1_macro": {"max_drop": 0.05}, "param_reduction": {"min": 0.2}},
        },
    ],
}


# --------------------------------------------------------------------------------------------
# Helpers: a TOML writer for the subset used here, and "BASE with one change"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(data: Mapping[str, Any]) -> str:
    """Scalars first, then one ``[table]`` per dict, ``[[case]]`` per case (inline sub-tables)."""
    lines = [
        f"{json.dumps(k)} = {_value(v)}"
        for k, v in data.items()
        if not isinstance(v, Mapping) and k != "case"
    ]
    for key, table in data.items():
        if isinstance(table, Mapping):
            lines.append(f"\n[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in table.items()]
    cases = data.get("case")
    if isinstance(cases, list) and cases and all(isinstance(c, Mapping) for c in cases):
        for case in cases:
            lines.append("\n[[case]]")
            lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in case.items()]
    elif "case" in data:
        lines.insert(0, f"case = {_value(cases)}")
    return "\n".join(lines) + "\n"


def _with(changes: Mapping[tuple[Any, ...], Any], base: Mapping[str, Any] = BASE) -> dict:
    """A deep copy of ``base`` with ``{("train", "epochs"): 5, ...}`` applied (DELETE removes)."""
    data = copy.deepcopy(dict(base))
    for path, value in changes.items():
        node: Any = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = copy.deepcopy(value)
    return data


def write_suite(directory: Path, data: Mapping[str, Any], name: str = "suite.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def spec_error(path: Path) -> str:
    """Load ``path``, expect a SpecError, check it is one line naming the file; return it."""
    with pytest.raises(SpecError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert path.name in message, message
    assert "Traceback" not in message
    return message


def write_csv(path: Path, counts: Mapping[str, int], n_features: int = 2) -> Path:
    """A csv file with a header, ``n_features`` numeric columns and a string label column."""
    rng = np.random.default_rng(0)
    rows = [",".join([f"f{i}" for i in range(n_features)] + ["label"])]
    for label, n in counts.items():
        for _ in range(n):
            rows.append(",".join([f"{x:.4f}" for x in rng.normal(size=n_features)] + [label]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_npz(path: Path, counts: Mapping[int, int], n_features: int = 3) -> Path:
    rng = np.random.default_rng(1)
    y = np.concatenate([np.full(n, label) for label, n in counts.items()])
    X = rng.normal(size=(len(y), n_features)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=X, y=y)
    return path


# --------------------------------------------------------------------------------------------
# 1. Valid suites: TOML and dict, defaults, rule merging, spec hash


def test_valid_suite_loads_from_toml_with_defaults(tmp_path: Path) -> None:
    path = write_suite(tmp_path, BASE)
    suite = load_suite(path)

    assert isinstance(suite, SuiteSpec)
    assert (suite.name, suite.dataset, suite.model) == (
        "tiny",
        "sklearn:wine",
        "harness.models:mlp",
    )
    assert dict(suite.model_args) == {"hidden": [8]}
    assert dict(suite.dataset_args) == {}
    assert (suite.seed, suite.threads, suite.folds) == (0, 1, 3)
    assert suite.train == TrainSpec(epochs=2, lr=0.01)  # everything else from TrainSpec defaults
    assert suite.train.optimizer == "adam" and suite.train.scheduler == "cosine"
    assert suite.train.batch_size == 64
    assert suite.latency == LatencySpec(batch=256, warmup=10, repeats=50)
    assert suite.gate == (
        RuleSpec("pruned.f1_macro", max_drop=0.02),
        RuleSpec("pruned.accuracy", max_drop=0.02),
    )
    assert Path(suite.source).name == "suite.toml"
    assert suite.base_dir.resolve() == tmp_path.resolve()

    assert [c.name for c in suite.cases] == ["mag-50", "struct-30"]
    assert suite.case_names() == "mag-50, struct-30"
    mag = suite.case("mag-50")
    assert (mag.prune.method, mag.prune.sparsity) == ("magnitude", 0.5)
    assert (mag.prune.scope, mag.prune.schedule, mag.prune.steps) == ("global", "oneshot", 1)
    assert dict(mag.prune.args) == {}
    # The case's finetune table inherits everything it does not set from [train].
    assert mag.finetune == TrainSpec(epochs=1, lr=0.01)
    assert mag.gate == ()
    struct = suite.case("struct-30")
    assert struct.finetune is None
    assert struct.gate == (
        RuleSpec("pruned.f1_macro", max_drop=0.05),
        RuleSpec("param_reduction", min=0.2),
    )
    with pytest.raises(KeyError, match="no case named 'nope'"):
        suite.case("nope")


def test_ints_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    data = _with(
        {
            ("train", "lr"): 1,
            ("case", 0, "prune", "sparsity"): 0,
            ("gate", "pruned.f1_macro", "max_drop"): 0,
        }
    )
    suite = load_suite(write_suite(tmp_path, data))
    assert suite.train.lr == 1.0 and isinstance(suite.train.lr, float)
    assert suite.cases[0].prune.sparsity == 0.0 and isinstance(suite.cases[0].prune.sparsity, float)
    assert suite.gate[0].max_drop == 0.0


def test_iterative_schedule_defaults_to_three_steps() -> None:
    data = _with({("case", 0, "prune", "schedule"): "iterative"})
    assert suite_from_dict(data).cases[0].prune.steps == 3
    data = _with({("case", 0, "prune", "schedule"): "iterative", ("case", 0, "prune", "steps"): 5})
    assert suite_from_dict(data).cases[0].prune.steps == 5


def test_dict_and_toml_give_the_same_suite(tmp_path: Path) -> None:
    from_file = load_suite(write_suite(tmp_path, BASE))
    from_dict = suite_from_dict(copy.deepcopy(BASE))
    assert from_dict.source == "<python>"
    assert from_dict.base_dir == Path.cwd()
    assert dataclasses.replace(from_file, source="<python>") == from_dict
    assert [from_dict.spec_hash(c) for c in from_dict.cases] == [
        from_file.spec_hash(c) for c in from_file.cases
    ]


def test_minimal_dict_gets_every_default() -> None:
    suite = suite_from_dict(
        {
            "suite": {"dataset": "sklearn:wine"},
            "case": [{"name": "c", "prune": {"method": "magnitude", "sparsity": 0.5}}],
        }
    )
    assert suite.name == "suite"
    assert suite.model == "harness.models:mlp"
    assert dict(suite.model_args) == {}
    assert (suite.seed, suite.threads, suite.folds) == (0, 1, 5)
    assert suite.train == TrainSpec()
    assert suite.latency == LatencySpec()
    assert suite.gate == ()
    assert suite.cases[0].finetune is None
    assert suite.rules(suite.cases[0]) == DEFAULT_RULES


def test_suite_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    data = _with({("suite", "name"): DELETE})
    assert load_suite(write_suite(tmp_path, data, "my-suite.toml")).name == "my-suite"


@pytest.mark.parametrize("name", ["digits_mlp", "breast_cancer_mlp", "mnist1d_cnn"])
def test_repository_suites_load(name: str) -> None:
    suite = load_suite(REPO / "suites" / f"{name}.toml")
    assert suite.cases
    assert len({suite.spec_hash(c) for c in suite.cases}) == len(suite.cases)


def test_case_rules_override_suite_defaults_per_metric() -> None:
    suite = suite_from_dict(copy.deepcopy(BASE))
    mag, struct = suite.cases
    # No case rules: the suite's [gate] as written.
    assert suite.rules(mag) == suite.gate
    # Case rules replace the suite rule for the same metric, keep the others, add new metrics.
    rules = {r.metric: r for r in suite.rules(struct)}
    assert rules == {
        "pruned.f1_macro": RuleSpec("pruned.f1_macro", max_drop=0.05),
        "pruned.accuracy": RuleSpec("pruned.accuracy", max_drop=0.02),
        "param_reduction": RuleSpec("param_reduction", min=0.2),
    }
    assert len(suite.rules(struct)) == 3


def test_rule_override_replaces_the_whole_rule() -> None:
    data = _with(
        {
            ("gate", "pruned.f1_macro"): {"max_drop": 0.01, "min": 0.8},
            ("case", 0, "gate"): {"pruned.f1_macro": {"max_rel_drop": 0.1}},
        }
    )
    suite = suite_from_dict(data)
    (f1,) = [r for r in suite.rules(suite.cases[0]) if r.metric == "pruned.f1_macro"]
    assert f1 == RuleSpec("pruned.f1_macro", max_rel_drop=0.1)


def test_without_any_gate_the_default_rules_apply() -> None:
    data = _with({("gate",): DELETE, ("case", 1, "gate"): DELETE})
    suite = suite_from_dict(data)
    assert all(suite.rules(c) == DEFAULT_RULES for c in suite.cases)


HASH_CHANGES = {
    "prune-sparsity": {("case", 0, "prune", "sparsity"): 0.6},
    "prune-method": {("case", 0, "prune", "method"): "structured"},
    "prune-scope": {("case", 0, "prune", "scope"): "layer"},
    "prune-schedule": {("case", 0, "prune", "schedule"): "iterative"},
    "prune-args": {
        ("case", 0, "prune", "method"): "structured",
        ("case", 0, "prune", "args"): {"norm": 1},
    },
    "finetune-epochs": {("case", 0, "finetune", "epochs"): 2},
    "finetune-lr": {("case", 0, "finetune", "lr"): 0.5},
    "finetune-removed": {("case", 0, "finetune"): DELETE},
    "train-epochs": {("train", "epochs"): 3},
    "train-lr": {("train", "lr"): 0.02},
    "train-optimizer": {("train", "optimizer"): "sgd"},
    "dataset": {("suite", "dataset"): "sklearn:breast_cancer"},
    "dataset-args": {
        ("suite", "dataset"): "synthetic:classification",
        ("suite", "dataset_args"): {"n_samples": 90},
    },
    "model": {
        ("suite", "model"): "harness.models:cnn1d",
        ("suite", "model_args"): {"channels": [4]},
    },
    "model-args": {("suite", "model_args", "hidden"): [16]},
    "seed": {("suite", "seed"): 1},
    "folds": {("cv", "folds"): 4},
    "latency": {("latency", "repeats"): 5},
    "prune-pattern": {("case", 0, "prune", "pattern"): "2:4"},
    "deploy": {("case", 0, "deploy"): "onnx"},
}

GATE_ONLY_CHANGES = {
    "suite-rule-bound": {("gate", "pruned.f1_macro", "max_drop"): 0.5},
    "suite-rule-added": {("gate", "vs_dense.f1_macro"): {"max_drop": 0.03}},
    "suite-gate-removed": {("gate",): DELETE},
    "case-rule-added": {("case", 0, "gate"): {"pruned.f1_macro": {"min": 0.5}}},
}


@pytest.mark.parametrize("changes", HASH_CHANGES.values(), ids=HASH_CHANGES.keys())
def test_spec_hash_changes_with_settings(changes: dict) -> None:
    before = suite_from_dict(copy.deepcopy(BASE))
    after = suite_from_dict(_with(changes))
    assert after.spec_hash(after.cases[0]) != before.spec_hash(before.cases[0])


@pytest.mark.parametrize("changes", GATE_ONLY_CHANGES.values(), ids=GATE_ONLY_CHANGES.keys())
def test_spec_hash_ignores_gate_rules(changes: dict) -> None:
    before = suite_from_dict(copy.deepcopy(BASE))
    after = suite_from_dict(_with(changes))
    assert after.rules(after.cases[0]) != before.rules(before.cases[0])
    assert after.spec_hash(after.cases[0]) == before.spec_hash(before.cases[0])
    assert after.dense_key() == before.dense_key()


def test_spec_hash_is_per_case_and_stable() -> None:
    a = suite_from_dict(copy.deepcopy(BASE))
    b = suite_from_dict(copy.deepcopy(BASE))
    assert a.spec_hash(a.cases[0]) == b.spec_hash(b.cases[0])
    assert a.spec_hash(a.cases[0]) != a.spec_hash(a.cases[1])
    # Changing another case leaves this case's hash alone.
    c = suite_from_dict(_with({("case", 1, "prune", "sparsity"): 0.4}))
    assert c.spec_hash(c.cases[0]) == a.spec_hash(a.cases[0])
    assert c.spec_hash(c.cases[1]) != a.spec_hash(a.cases[1])


def test_dense_key_ignores_pruning() -> None:
    a = suite_from_dict(copy.deepcopy(BASE))
    b = suite_from_dict(_with({("case", 0, "prune", "sparsity"): 0.9}))
    assert a.dense_key() == b.dense_key()
    c = suite_from_dict(_with({("train", "epochs"): 9}))
    assert a.dense_key() != c.dense_key()


# The spec hash of every reference case, as literals: copied from the committed baselines
# (baselines/<suite>/<case>.json) and never read from them here. A change to what a spec hash
# covers, or to how it is computed, turns every committed baseline spec-changed; this fails first
# and names the cases. When the change is intended, regenerate those baselines and copy their new
# ``spec_hash`` values here.
GOLDEN_SPEC_HASHES: dict[str, dict[str, str]] = {
    "breast-cancer-mlp": {
        "magnitude-80": "a32ecc8f236cbbca",
        "magnitude-90-layer": "f6451e67a891748f",
        "structured-50": "40c1b6edcd291d45",
    },
    "digits-mlp": {
        "auto-90": "e6589a394bf9b74b",
        "energy-aware-60": "6f4ae96041e89bbf",
        "group-lasso-60": "6eb5c24f4c3feb31",
        "l1-90": "02ddca5e6d98e2fa",
        "l2-90": "b9b9878c52939a32",
        "lrp-60": "9e28dd2654279f96",
        "magnitude-50": "c673f96876f07297",
        "magnitude-80": "37282597e5652886",
        "magnitude-90-agp": "6ed7949128b44774",
        "magnitude-90-csr": "ce470d361058dc0b",
        "magnitude-90-distill": "6be4df7d5fafde5a",
        "magnitude-90-iterative": "3f2c595120413c6f",
        "magnitude-90-uniform": "ddaf44232fe811f5",
        "magnitude-90": "cea8111b6d3a5830",
        "magnitude-95-capped": "242a3406cfa17400",
        "obd-90": "18bd740e973f3820",
        "obs-90": "ba753d727f222b01",
        "snip-90": "ed3fb56a10401273",
        "structured-50": "39128d90f3dbf6b5",
        "structured-taylor-60": "d149cc6788016812",
        "wanda-50": "c55a69dffb1a3d21",
        "sparsegpt-50": "a835756781f9fbdd",
        "magnitude-2of4": "f9944f3fb180332d",
        "wanda-2of4": "945cfdaa2fbb0653",
        "sparsegpt-2of4": "73b8cb1b06d6a2ca",
        "magnitude-50-onnx": "3b12976983c710de",
        "magnitude-50-int8": "de9fc881ac358c16",
        "student-80": "c7798adc1e48b783",
        "taylor-90": "21f6036b24fd1436",
    },
    "mnist1d-cnn": {
        "energy-aware-50": "e5721616ebe10ff1",
        "group-lasso-50": "9ab734addf2e5355",
        "lrp-50": "b06163388e16a396",
        "structured-30": "082f377c5c7cd3ee",
        "structured-50": "dec039475fee5860",
        "structured-taylor-50": "fe1796adeb639f56",
    },
    "digits-pretrained": {
        "magnitude-80": "642632e47b8510ed",
        "structured-40": "103bd410545f5252",
        "taylor-70": "03ba1135de0e89ff",
    },
    "digits-resnet": {
        "magnitude-80": "4e99d2e35fb8cf21",
        "structured-40": "005726e848dee659",
        "structured-taylor-40": "5b9c36b9f55e4259",
    },
    "tokens-transformer": {
        "magnitude-70": "6bf0c62100a784bd",
        "structured-50": "d4df7bf614e732c1",
        "structured-taylor-50": "d898fe86e45b6a04",
        "wanda-50": "168a4eef2cc62bb7",
        "sparsegpt-2of4": "8316065ea787792d",
    },
}


REFERENCE_SUITES = sorted((REPO / "suites").glob("*.toml"))


@pytest.mark.parametrize("path", REFERENCE_SUITES, ids=[p.stem for p in REFERENCE_SUITES])
def test_reference_suites_hash_to_their_golden_literals_and_committed_baselines(
    path: Path,
) -> None:
    suite = load_suite(path)
    hashes = {case.name: suite.spec_hash(case) for case in suite.cases}
    assert hashes == GOLDEN_SPEC_HASHES.get(suite.name), f"{path.name}: suite {suite.name!r}"
    for case in suite.cases:
        baseline = REPO / "baselines" / suite.name / f"{case.name}.json"
        committed = json.loads(baseline.read_text(encoding="utf-8"))["spec_hash"]
        assert committed == hashes[case.name], f"{baseline}: spec_hash"


def test_golden_hashes_name_only_reference_suites() -> None:
    assert sorted(GOLDEN_SPEC_HASHES) == sorted(load_suite(p).name for p in REFERENCE_SUITES)


# --------------------------------------------------------------------------------------------
# 2. Every bad input: one SpecError line naming the file, the key and the value

# id -> (changes to BASE, key, the value as shown)
BAD: dict[str, tuple[dict, str, str]] = {
    # unknown keys
    "unknown-top-level-key": ({("bogus",): 1}, "bogus", "1"),
    "unknown-top-level-table": ({("trian",): {"epochs": 1}}, "trian", "{'epochs': 1}"),
    "unknown-suite-key": ({("suite", "dataset_arg"): {}}, "suite.dataset_arg", "{}"),
    "unknown-train-key": ({("train", "epoch"): 3}, "train.epoch", "3"),
    "unknown-cv-key": ({("cv", "fold"): 3}, "cv.fold", "3"),
    "unknown-latency-key": ({("latency", "repeat"): 3}, "latency.repeat", "3"),
    "unknown-case-key": ({("case", 0, "finetuning"): {}}, "case[mag-50].finetuning", "{}"),
    "unknown-prune-key": (
        {("case", 0, "prune", "sparsty"): 0.5},
        "case[mag-50].prune.sparsty",
        "0.5",
    ),
    "unknown-finetune-key": (
        {("case", 0, "finetune", "epoch"): 2},
        "case[mag-50].finetune.epoch",
        "2",
    ),
    "unknown-gate-rule-key": (
        {("gate", "pruned.f1_macro", "max_dorp"): 0.1},
        "gate.pruned.f1_macro.max_dorp",
        "0.1",
    ),
    "unknown-case-gate-rule-key": (
        {("case", 1, "gate", "pruned.f1_macro", "below"): 0.1},
        "case[struct-30].gate.pruned.f1_macro.below",
        "0.1",
    ),
    "unknown-prune-arg": (
        {("case", 0, "prune", "args"): {"nrom": 2}},
        "case[mag-50].prune.args.nrom",  # the method's Args name the key
        "2",
    ),
    # wrong types
    "epochs-string": ({("train", "epochs"): "ten"}, "train.epochs", "'ten'"),
    "epochs-float": ({("train", "epochs"): 2.5}, "train.epochs", "2.5"),
    "epochs-bool": ({("train", "epochs"): True}, "train.epochs", "True"),
    "lr-string": ({("train", "lr"): "1e-3"}, "train.lr", "'1e-3'"),
    "lr-bool": ({("train", "lr"): True}, "train.lr", "True"),
    "sparsity-string": (
        {("case", 0, "prune", "sparsity"): "0.5"},
        "case[mag-50].prune.sparsity",
        "'0.5'",
    ),
    "sparsity-bool": (
        {("case", 0, "prune", "sparsity"): False},
        "case[mag-50].prune.sparsity",
        "False",
    ),
    "sparsity-nan": (
        {("case", 0, "prune", "sparsity"): math.nan},
        "case[mag-50].prune.sparsity",
        "nan",
    ),
    "folds-float": ({("cv", "folds"): 2.5}, "cv.folds", "2.5"),
    "folds-bool": ({("cv", "folds"): True}, "cv.folds", "True"),
    "folds-string": ({("cv", "folds"): "5"}, "cv.folds", "'5'"),
    "max-drop-string": (
        {("gate", "pruned.f1_macro", "max_drop"): "0.01"},
        "gate.pruned.f1_macro.max_drop",
        "'0.01'",
    ),
    "max-drop-bool": (
        {("gate", "pruned.f1_macro", "max_drop"): True},
        "gate.pruned.f1_macro.max_drop",
        "True",
    ),
    "max-drop-inf": (
        {("gate", "pruned.f1_macro", "max_drop"): math.inf},
        "gate.pruned.f1_macro.max_drop",
        "inf",
    ),
    "finetune-lr-string": (
        {("case", 0, "finetune", "lr"): "fast"},
        "case[mag-50].finetune.lr",
        "'fast'",
    ),
    "latency-repeats-float": ({("latency", "repeats"): 1.5}, "latency.repeats", "1.5"),
    "dataset-not-string": ({("suite", "dataset"): 5}, "suite.dataset", "5"),
    "model-args-not-table": ({("suite", "model_args"): [8]}, "suite.model_args", "[8]"),
    "prune-args-not-table": ({("case", 0, "prune", "args"): [1]}, "case[mag-50].prune.args", "[1]"),
    "train-not-table": ({("train",): 3}, "train", "3"),
    "finetune-not-table": ({("case", 0, "finetune"): 3}, "case[mag-50].finetune", "3"),
    "rule-not-table": ({("gate", "pruned.f1_macro"): 0.01}, "gate.pruned.f1_macro", "0.01"),
    "case-name-not-string": ({("case", 0, "name"): 7}, "case[7].name", "7"),
    # sparsity range
    "sparsity-1.0": ({("case", 0, "prune", "sparsity"): 1.0}, "case[mag-50].prune.sparsity", "1.0"),
    "sparsity-negative": (
        {("case", 0, "prune", "sparsity"): -0.1},
        "case[mag-50].prune.sparsity",
        "-0.1",
    ),
    "sparsity-1.5": ({("case", 0, "prune", "sparsity"): 1.5}, "case[mag-50].prune.sparsity", "1.5"),
    "sparsity-1-int": (
        {("case", 1, "prune", "sparsity"): 1},
        "case[struct-30].prune.sparsity",
        "1",  # as written
    ),
    # folds
    "folds-1": ({("cv", "folds"): 1}, "cv.folds", "1"),
    "folds-0": ({("cv", "folds"): 0}, "cv.folds", "0"),
    "folds-negative": ({("cv", "folds"): -3}, "cv.folds", "-3"),
    "folds-more-than-smallest-class": ({("cv", "folds"): 49}, "cv.folds", "49"),
    # dataset
    "unknown-dataset": ({("suite", "dataset"): "sklearn:iris"}, "suite.dataset", "'sklearn:iris'"),
    "unknown-dataset-kind": (
        {("suite", "dataset"): "parquet:x.parquet"},
        "suite.dataset",
        "'parquet:x.parquet'",
    ),
    "missing-npz": (
        {("suite", "dataset"): "npz:missing.npz"},
        "suite.dataset",
        "'npz:missing.npz'",
    ),
    "missing-csv": (
        {("suite", "dataset"): "csv:missing.csv"},
        "suite.dataset",
        "'csv:missing.csv'",
    ),
    "dataset-args-for-builtin": (
        {("suite", "dataset_args"): {"scale": True}},
        "suite.dataset",
        "'sklearn:wine'",
    ),
    "synthetic-bad-args": (
        {
            ("suite", "dataset"): "synthetic:classification",
            ("suite", "dataset_args"): {"n_samples": "many"},
        },
        "suite.dataset",
        "'synthetic:classification'",
    ),
    "mnist1d-unknown-arg": (
        {("suite", "dataset"): "mnist1d", ("suite", "dataset_args"): {"num_sample": 10}},
        "suite.dataset",
        "'mnist1d'",
    ),
    # model
    "unknown-model-module": (
        {("suite", "model"): "no_such_module_for_tests:mlp"},
        "suite.model",
        "'no_such_module_for_tests:mlp'",
    ),
    "unknown-model-callable": (
        {("suite", "model"): "harness.models:no_such_factory"},
        "suite.model",
        "'harness.models:no_such_factory'",
    ),
    "model-without-colon": (
        {("suite", "model"): "harness.models.mlp"},
        "suite.model",
        "'harness.models.mlp'",
    ),
    "model-not-callable": (
        {("suite", "model"): "harness.spec:OPTIMIZERS"},
        "suite.model",
        "'harness.spec:OPTIMIZERS'",
    ),
    "model-args-unknown-kwarg": (
        {("suite", "model_args", "depth"): 3},
        "suite.model_args",
        "{'hidden': [8], 'depth': 3}",
    ),
    "model-args-bad-value": (
        {("suite", "model_args", "dropout"): 2.0},
        "suite.model_args",
        "{'hidden': [8], 'dropout': 2.0}",
    ),
    "model-args-bad-type": (
        {("suite", "model_args", "hidden"): 8},
        "suite.model_args",
        "{'hidden': 8}",
    ),
    "model-args-too-many-layers": (
        {
            ("suite", "model"): "harness.models:cnn1d",
            ("suite", "model_args"): {"channels": [4, 4, 4, 4, 4]},
        },
        "suite.model_args",
        "{'channels': [4, 4, 4, 4, 4]}",
    ),
    "model-returns-non-module": (
        {("suite", "model"): "builtins:dict"},
        "suite.model_args",
        "{'hidden': [8]}",
    ),
    # pruning
    "unknown-method": (
        {("case", 0, "prune", "method"): "lottery"},
        "case[mag-50].prune.method",
        "'lottery'",
    ),
    "missing-method": (
        {("case", 0, "prune", "method"): DELETE},
        "case[mag-50].prune.method",
        "<missing>",
    ),
    "missing-sparsity": (
        {("case", 0, "prune", "sparsity"): DELETE},
        "case[mag-50].prune.sparsity",
        "<missing>",
    ),
    "unknown-scope": (
        {("case", 0, "prune", "scope"): "network"},
        "case[mag-50].prune.scope",
        "'network'",
    ),
    "unknown-schedule": (
        {("case", 0, "prune", "schedule"): "gradual"},
        "case[mag-50].prune.schedule",
        "'gradual'",
    ),
    "oneshot-steps-3": ({("case", 0, "prune", "steps"): 3}, "case[mag-50].prune.steps", "3"),
    "explicit-oneshot-steps-2": (
        {("case", 0, "prune", "schedule"): "oneshot", ("case", 0, "prune", "steps"): 2},
        "case[mag-50].prune.steps",
        "2",
    ),
    "iterative-steps-0": (
        {("case", 0, "prune", "schedule"): "iterative", ("case", 0, "prune", "steps"): 0},
        "case[mag-50].prune.steps",
        "0",
    ),
    "structured-bad-norm": (
        {("case", 1, "prune", "args"): {"norm": 3}},
        "case[struct-30].prune.args.norm",
        "3",
    ),
    # gate
    "unknown-metric": (
        {("gate", "pruned.f2_macro"): {"max_drop": 0.1}},
        "gate.pruned.f2_macro",
        "{'max_drop': 0.1}",
    ),
    "unknown-metric-model": (
        {("gate", "sparse.accuracy"): {"min": 0.5}},
        "gate.sparse.accuracy",
        "{'min': 0.5}",
    ),
    "unknown-vs-dense-metric": (
        {("gate", "vs_dense.speedup"): {"max_drop": 0.1}},
        "gate.vs_dense.speedup",
        "{'max_drop': 0.1}",
    ),
    "unknown-metric-in-case": (
        {("case", 1, "gate", "pruned.acc"): {"min": 0.5}},
        "case[struct-30].gate.pruned.acc",
        "{'min': 0.5}",
    ),
    "rule-without-bound": ({("gate", "pruned.f1_macro"): {}}, "gate.pruned.f1_macro", "{}"),
    "case-rule-without-bound": (
        {("case", 1, "gate", "param_reduction"): {}},
        "case[struct-30].gate.param_reduction",
        "{}",
    ),
    "negative-max-drop": (
        {("gate", "pruned.f1_macro", "max_drop"): -0.01},
        "gate.pruned.f1_macro.max_drop",
        "-0.01",
    ),
    "negative-max-rel-drop": (
        {("gate", "pruned.accuracy"): {"max_rel_drop": -0.5}},
        "gate.pruned.accuracy.max_rel_drop",
        "-0.5",
    ),
    "negative-max-drop-in-case": (
        {("case", 1, "gate", "pruned.f1_macro", "max_drop"): -1},
        "case[struct-30].gate.pruned.f1_macro.max_drop",
        "-1",
    ),
    # training
    "train-lr-zero": ({("train", "lr"): 0}, "train.lr", "0"),
    "train-lr-negative": ({("train", "lr"): -0.001}, "train.lr", "-0.001"),
    "train-epochs-negative": ({("train", "epochs"): -5}, "train.epochs", "-5"),
    "train-batch-size-zero": ({("train", "batch_size"): 0}, "train.batch_size", "0"),
    "train-unknown-optimizer": (
        {("train", "optimizer"): "rmsprop"},
        "train.optimizer",
        "'rmsprop'",
    ),
    "train-unknown-scheduler": ({("train", "scheduler"): "linear"}, "train.scheduler", "'linear'"),
    "train-negative-weight-decay": (
        {("train", "weight_decay"): -0.1},
        "train.weight_decay",
        "-0.1",
    ),
    "finetune-lr-zero": ({("case", 0, "finetune", "lr"): 0.0}, "case[mag-50].finetune.lr", "0.0"),
    "finetune-lr-negative": (
        {("case", 0, "finetune", "lr"): -1e-3},
        "case[mag-50].finetune.lr",
        "-0.001",
    ),
    "finetune-epochs-negative": (
        {("case", 0, "finetune", "epochs"): -1},
        "case[mag-50].finetune.epochs",
        "-1",
    ),
    # suite / cases
    "missing-dataset": ({("suite", "dataset"): DELETE}, "suite.dataset", "<missing>"),
    "bad-suite-name": ({("suite", "name"): "my suite"}, "suite.name", "'my suite'"),
    "negative-seed": ({("suite", "seed"): -1}, "suite.seed", "-1"),
    "threads-zero": ({("suite", "threads"): 0}, "suite.threads", "0"),
    "latency-batch-zero": ({("latency", "batch"): 0}, "latency.batch", "0"),
    "duplicate-case-names": ({("case", 1, "name"): "mag-50"}, "case[mag-50].name", "'mag-50'"),
    "bad-case-name": ({("case", 0, "name"): "mag 50"}, "case[mag 50].name", "'mag 50'"),
    "missing-case-name": ({("case", 0, "name"): DELETE}, "case[0].name", "<missing>"),
    "missing-prune-table": (
        {("case", 0, "prune"): DELETE},
        "case[mag-50].prune.method",
        "<missing>",
    ),
    "no-cases": ({("case",): DELETE}, "case", "<missing>"),
    "empty-case-list": ({("case",): []}, "case", "<missing>"),
    "case-not-a-table": ({("case",): [1, 2]}, "case[0]", "1"),
    "pattern-not-n-m": (
        {("case", 0, "prune", "pattern"): "2-4"},
        "case[mag-50].prune.pattern",
        "'2-4'",
    ),
    "pattern-unicode-digits": (
        {("case", 0, "prune", "pattern"): "\u00b2:4"},
        "case[mag-50].prune.pattern",
        "'\u00b2:4'",
    ),
    "pattern-n-not-below-m": (
        {("case", 0, "prune", "pattern"): "4:4"},
        "case[mag-50].prune.pattern",
        "'4:4'",
    ),
    "pattern-sparsity-mismatch": (
        {("case", 0, "prune", "pattern"): "2:8"},
        "case[mag-50].prune.sparsity",
        "0.5",
    ),
    "deploy-unknown": ({("case", 0, "deploy"): "tflite"}, "case[mag-50].deploy", "'tflite'"),
}


@pytest.mark.parametrize(("changes", "key", "shown"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line_naming_file_key_and_value(
    tmp_path: Path, changes: dict, key: str, shown: str
) -> None:
    path = write_suite(tmp_path, _with(changes), "bad.toml")
    message = spec_error(path)
    assert f": {key} = {shown}: " in message, message
    assert message.startswith(str(path)), message  # tmp_path is outside the cwd: shown in full


@pytest.mark.parametrize(("changes", "key", "shown"), BAD.values(), ids=BAD.keys())
def test_bad_dict_raises_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict, key: str, shown: str
) -> None:
    monkeypatch.chdir(tmp_path)  # data paths: a dict's resolve against the cwd, a file's next to it
    with pytest.raises(SpecError) as from_file:
        load_suite(write_suite(tmp_path, _with(changes), "bad.toml"))
    with pytest.raises(SpecError) as info:
        suite_from_dict(_with(changes), source="from-python.toml")
    err = info.value
    assert (err.source, err.key) == ("from-python.toml", key)
    assert err.problem == from_file.value.problem != ""
    assert str(err) == f"from-python.toml: {key} = {shown}: {err.problem}"
    assert "\n" not in str(err)


def test_spec_error_is_a_value_error_with_fields() -> None:
    err = SpecError("a.toml", "train.lr", -1.0, "must be > 0")
    assert isinstance(err, ValueError)
    assert str(err) == "a.toml: train.lr = -1.0: must be > 0"
    assert (err.source, err.key, err.value, err.problem) == (
        "a.toml",
        "train.lr",
        -1.0,
        "must be > 0",
    )


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({("train", "epochs"): "ten"}, "train.epochs", "must be an integer"),
        (
            {("case", 0, "prune", "sparsity"): 1.0},
            "case[mag-50].prune.sparsity",
            "must be in [0, 1)",
        ),
        ({("cv", "folds"): 1}, "cv.folds", "must be >= 2"),
        (
            {("cv", "folds"): 49},
            "cv.folds",
            "more folds than the smallest class has samples (48)",
        ),
        (
            {("case", 0, "prune", "steps"): 3},
            "case[mag-50].prune.steps",
            'must be 1 with schedule = "oneshot"',
        ),
        ({("case", 1, "name"): "mag-50"}, "case[mag-50].name", "duplicate case name"),
        ({("case",): DELETE}, "case", "a suite needs at least one [[case]]"),
        ({("gate", "pruned.f1_macro"): {}}, "gate.pruned.f1_macro", "a rule needs one of max_drop"),
        (
            {("gate", "pruned.f1_macro", "max_drop"): -0.01},
            "gate.pruned.f1_macro.max_drop",
            "must be >= 0",
        ),
        ({("train", "lr"): 0}, "train.lr", "must be > 0"),
        (
            {("case", 0, "prune", "method"): "lottery"},
            "case[mag-50].prune.method",
            "unknown method (known: auto, energy-aware",
        ),
        (
            {("gate", "pruned.f2_macro"): {"max_drop": 0.1}},
            "gate.pruned.f2_macro",
            "unknown metric (",
        ),
        ({("suite", "dataset"): "sklearn:iris"}, "suite.dataset", "unknown dataset (known: "),
        ({("suite", "dataset"): "npz:missing.npz"}, "suite.dataset", "data file not found: "),
        (
            {("suite", "model"): "no_such_module_for_tests:mlp"},
            "suite.model",
            "model module does not import",
        ),
        ({("bogus",): 1}, "bogus", "unknown key"),
    ],
    ids=[
        "type",
        "sparsity",
        "folds",
        "folds-vs-class",
        "steps",
        "duplicate",
        "no-cases",
        "no-bound",
        "max-drop",
        "lr",
        "method",
        "metric",
        "dataset",
        "data-file",
        "module",
        "key",
    ],
)
def test_problem_is_explained(changes: dict, key: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        suite_from_dict(_with(changes), source="s.toml")
    assert info.value.key == key
    assert problem in info.value.problem


def test_missing_data_file_names_the_resolved_path(tmp_path: Path) -> None:
    path = write_suite(tmp_path, _with({("suite", "dataset"): "csv:data/missing.csv"}))
    message = spec_error(path)
    missing = tmp_path / "data" / "missing.csv"
    assert message.endswith(
        f": suite.dataset = 'csv:data/missing.csv': data file not found: {missing}"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[suite\nname = 'x'\n",
        "[suite]\ndataset = \n",
        "[suite]\nname = 'a'\nname = 'b'\n",
        "[train]\nepochs = ten\n",
    ],
    ids=["unclosed-table", "missing-value", "duplicate-key", "bare-word-value"],
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    message = spec_error(path)
    assert ": <toml> = <invalid>: invalid TOML: " in message
    assert "line" in message  # where the parser stopped


@pytest.mark.parametrize("what", ["missing", "directory", "not-utf8"])
def test_unreadable_file(tmp_path: Path, what: str) -> None:
    path = tmp_path / "suite.toml"
    if what == "directory":
        path.mkdir()
    elif what == "not-utf8":
        path.write_bytes(b"[suite]\nname = '\xff\xfe'\n")
    message = spec_error(path)
    assert f": <file> = {str(path)!r}: cannot read: " in message


@pytest.mark.parametrize(
    ("data_file", "write"),
    [("small.csv", "csv"), ("small.npz", "npz")],
    ids=["csv", "npz"],
)
def test_more_folds_than_smallest_class(tmp_path: Path, data_file: str, write: str) -> None:
    if write == "csv":
        write_csv(tmp_path / data_file, {"a": 10, "b": 3, "c": 8})
    else:
        write_npz(tmp_path / data_file, {0: 10, 1: 3, 2: 8})
    good = _with({("suite", "dataset"): f"{write}:{data_file}", ("cv", "folds"): 3})
    assert load_suite(write_suite(tmp_path, good, "ok.toml")).folds == 3
    bad = _with({("suite", "dataset"): f"{write}:{data_file}", ("cv", "folds"): 5})
    message = spec_error(write_suite(tmp_path, bad, "bad.toml"))
    assert ": cv.folds = 5: more folds than the smallest class has samples (3)" in message


# Model modules written into tmp_path: each is imported through the suite's `model` key.
BROKEN_MODULES = {
    "raises-import-error": ("raise ImportError('needs libfancy')\n", "needs libfancy"),
    "imports-missing-module": (
        "import no_such_dependency_for_tests\n",
        "no_such_dependency_for_tests",
    ),
    "syntax-error": ("def factory(in_features, n_classes:\n    pass\n", "SyntaxError"),
    "raises-runtime-error": ("raise RuntimeError('boom at import')\n", "boom at import"),
    "missing-callable": ("def other(in_features, n_classes):\n    pass\n", "factory"),
    "not-callable": ("factory = 42\n", "not callable"),
}


@pytest.mark.parametrize(("source", "mentions"), BROKEN_MODULES.values(), ids=BROKEN_MODULES.keys())
def test_model_module_that_does_not_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    source: str,
    mentions: str,
) -> None:
    modname = "usermodel_" + request.node.callspec.id.replace("-", "_")
    (tmp_path / f"{modname}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = f"{modname}:factory"
    path = write_suite(tmp_path, _with({("suite", "model"): ref}), "bad.toml")
    message = spec_error(path)
    assert f": suite.model = {ref!r}: " in message
    assert mentions in message


def test_user_model_module_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usermodel_ok.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def factory(in_features, n_classes, width=4):
            return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(),
                                 nn.Linear(width, n_classes))
    """),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _with(
        {("suite", "model"): "usermodel_ok:factory", ("suite", "model_args"): {"width": 6}}
    )
    suite = load_suite(write_suite(tmp_path, data))
    assert suite.model == "usermodel_ok:factory"
    assert dict(suite.model_args) == {"width": 6}
    bad = _with({("suite", "model"): "usermodel_ok:factory", ("suite", "model_args"): {"depth": 6}})
    message = spec_error(write_suite(tmp_path, bad, "bad.toml"))
    assert ": suite.model_args = {'depth': 6}: " in message
    assert "usermodel_ok:factory rejected model_args {'depth': 6}: " in message
    assert "unexpected keyword argument 'depth'" in message


# --------------------------------------------------------------------------------------------
# Inputs that once escaped as raw exceptions or multi-line messages


@pytest.mark.parametrize(
    ("model", "model_args"),
    [("harness.models:mlp", {"hidden": [-1]}), ("harness.models:cnn1d", {"kernel_size": -1})],
    ids=["mlp-negative-width", "cnn1d-negative-kernel"],
)
def test_factory_runtime_error_is_a_spec_error(
    tmp_path: Path, model: str, model_args: dict
) -> None:
    data = _with({("suite", "model"): model, ("suite", "model_args"): model_args})
    message = spec_error(write_suite(tmp_path, data, "bad.toml"))
    rejected = f"{model} rejected model_args {model_args!r}: "
    assert f": suite.model_args = {model_args!r}: {rejected}" in message


def test_mnist1d_bad_arg_type_is_a_spec_error(tmp_path: Path) -> None:
    data = _with(
        {("suite", "dataset"): "mnist1d", ("suite", "dataset_args"): {"num_samples": "many"}}
    )
    message = spec_error(write_suite(tmp_path, data, "bad.toml"))
    rejected = "mnist1d rejected dataset_args {'num_samples': 'many'}: "
    assert f": suite.dataset = 'mnist1d': {rejected}" in message


def test_corrupt_npz_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    data = _with({("suite", "dataset"): "npz:corrupt.npz"})
    message = spec_error(write_suite(tmp_path, data, "bad.toml"))
    assert ": suite.dataset = 'npz:corrupt.npz': " in message
    assert f"{tmp_path / 'corrupt.npz'}: not a readable .npz file" in message


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        (
            {("suite", "dataset"): "<sklearn\nwine>"},
            ": suite.dataset = '<sklearn\\nwine>': unknown dataset (known: ",
        ),
        ({("bad\nkey",): 1}, ": bad\\nkey = 1: unknown key"),
    ],
    ids=["value-starting-with-lt", "key-with-newline"],
)
def test_newline_in_user_text_stays_one_line(tmp_path: Path, changes: dict, shown: str) -> None:
    message = spec_error(write_suite(tmp_path, _with(changes), "bad.toml"))
    assert shown in message  # the line break shown escaped, in the key or the value


def test_per_class_rule_for_missing_class_is_rejected(tmp_path: Path) -> None:
    data = _with({("gate", "pruned.recall.class_7"): {"max_drop": 0.01}})
    message = spec_error(write_suite(tmp_path, data, "bad.toml"))
    assert message.endswith(
        ": gate.pruned.recall.class_7 = {'max_drop': 0.01}: the dataset has 3 classes"
    )


# --------------------------------------------------------------------------------------------
# 3. Data files relative to the suite file


def test_npz_and_csv_are_resolved_against_the_suite_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suites = tmp_path / "project" / "suites"
    write_npz(suites / "data" / "train.npz", {0: 6, 1: 5, 2: 7}, n_features=4)
    write_csv(tmp_path / "project" / "shared.csv", {"cat": 6, "dog": 9}, n_features=3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not depend on the working directory

    npz_suite = load_suite(
        write_suite(suites, _with({("suite", "dataset"): "npz:data/train.npz"}), "npz.toml")
    )
    ds = load_dataset(npz_suite.dataset, npz_suite.dataset_args, npz_suite.base_dir)
    assert ds.X.shape == (18, 4) and ds.X.dtype == np.float32
    assert ds.n_classes == 3 and ds.n_features == 4
    assert np.bincount(ds.y).tolist() == [6, 5, 7]

    csv_suite = load_suite(
        write_suite(suites, _with({("suite", "dataset"): "csv:../shared.csv"}), "csv.toml")
    )
    ds = load_dataset(csv_suite.dataset, csv_suite.dataset_args, csv_suite.base_dir)
    assert ds.X.shape == (15, 3)
    assert ds.class_names == ("cat", "dog")
    assert np.bincount(ds.y).tolist() == [6, 9]

    # The same relative name next to the working directory is not what is loaded.
    write_csv(elsewhere / "shared.csv", {"x": 2, "y": 2})
    assert load_dataset(csv_suite.dataset, csv_suite.dataset_args, csv_suite.base_dir).X.shape == (
        15,
        3,
    )


def test_absolute_data_path_and_csv_without_header(tmp_path: Path) -> None:
    data_file = tmp_path / "data" / "plain.csv"
    data_file.parent.mkdir()
    data_file.write_text("".join(f"{i},{i % 3},{i % 2}\n" for i in range(12)), encoding="utf-8")
    suite = load_suite(
        write_suite(tmp_path / "suites", _with({("suite", "dataset"): f"csv:{data_file}"}))
    )
    ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
    assert ds.X.shape == (12, 2)
    assert ds.n_classes == 2


def test_npz_with_lowercase_x_and_dict_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "lower.npz", x=rng.normal(size=(9, 2, 2)), y=np.array([0, 1, 2] * 3))
    monkeypatch.chdir(tmp_path)  # a spec from a dict resolves paths against the cwd
    flat = {("suite", "dataset"): "npz:lower.npz", ("suite", "dataset_args"): {"shape": [4]}}
    suite = suite_from_dict(_with(flat))  # the MLP takes flat rows: shape flattens the samples
    assert suite.base_dir == Path.cwd()
    ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
    assert ds.X.shape == (9, 4)
    assert load_dataset(suite.dataset, {}, suite.base_dir).X.shape == (9, 2, 2)  # as in the file


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("1,2,0\n3,4\n", "row 2 has 2 columns, expected 3"),
        ("1,abc,0\n2,3,1\n", "non-numeric feature"),
        ("1,nan,0\n2,3,1\n", "NaN or infinity"),
        ("1,2,0\n3,4,0\n", "needs at least two classes"),
        ("a,b,label\n", "no data rows"),
    ],
    ids=["ragged", "non-numeric", "nan", "one-class", "header-only"],
)
def test_bad_csv_contents(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "data.csv").write_text(content, encoding="utf-8")
    message = spec_error(write_suite(tmp_path, _with({("suite", "dataset"): "csv:data.csv"})))
    assert ": suite.dataset = 'csv:data.csv': " in message
    assert problem in message


def test_npz_without_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", X=np.zeros((4, 2)))
    message = spec_error(write_suite(tmp_path, _with({("suite", "dataset"): "npz:nolabels.npz"})))
    assert ": suite.dataset = 'npz:nolabels.npz': " in message
    assert "needs arrays 'X' and 'y'" in message


# --------------------------------------------------------------------------------------------
# 4. The pytest plugin, end to end


GOOD_SUITE = _with({("suite", "name"): "good"})


def test_plugin_reports_a_bad_suite_in_one_line(pytester: pytest.Pytester) -> None:
    suites = pytester.path / "suites"
    write_suite(suites, GOOD_SUITE, "good.toml")
    write_suite(suites, _with({("case", 0, "prune", "sparsity"): 1.5}), "bad.toml")
    result = pytester.runpytest("suites", "--harness-no-mlflow", "-p", "no:cacheprovider")
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    line = "suites/bad.toml: case[mag-50].prune.sparsity = 1.5: must be in [0, 1)"
    assert line in output.splitlines(), output
    result.assert_outcomes(errors=1)


def test_plugin_invalid_toml_in_one_line(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "bad.toml").write_text("[suite\n", encoding="utf-8")
    result = pytester.runpytest("suites", "--harness-no-mlflow", "-p", "no:cacheprovider")
    assert result.ret != 0
    output = result.stdout.str()
    assert "Traceback" not in output
    assert any("bad.toml: <toml> = <invalid>: invalid TOML" in ln for ln in output.splitlines())


def test_plugin_collects_only_suite_files(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "suites", GOOD_SUITE, "good.toml")
    pytester.makepyprojecttoml('[project]\nname = "demo"\n\n[tool.ruff]\nline-length = 99\n')
    (pytester.path / "other").mkdir()
    (pytester.path / "other" / "config.toml").write_text("this is = = not a suite\n")
    write_suite(pytester.path / "other", _with({("suite", "name"): "elsewhere"}), "suite.toml")
    (pytester.path / "suites" / "notes.txt").write_text("not toml either\n")

    result = pytester.runpytest(
        "--collect-only", "-q", "--harness-no-mlflow", "-p", "no:cacheprovider"
    )
    assert result.ret == 0, result.stdout.str()
    collected = [ln for ln in result.stdout.lines if "::" in ln]
    assert collected == ["suites/good.toml::mag-50", "suites/good.toml::struct-30"]
    output = result.stdout.str()
    assert "pyproject" not in output and "config.toml" not in output
    assert "error" not in output.lower()


# --------------------------------------------------------------------------------------------
# 5. The CLI


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (to_toml(_with({("train", "epochs"): "ten"})), "train.epochs = 'ten': must be an integer"),
        ("[suite\n", "<toml> = <invalid>: invalid TOML"),
        (to_toml(_with({("cv", "folds"): 1})), "cv.folds = 1: must be >= 2"),
    ],
    ids=["wrong-type", "invalid-toml", "folds"],
)
@pytest.mark.parametrize("command", ["run", "baselines"])
def test_cli_bad_suite_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    expected: str,
    command: str,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content, encoding="utf-8")
    argv = [command, str(bad), "--no-mlflow"] if command == "run" else [command, str(bad)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    line = captured.err.rstrip("\n")
    assert line.startswith("prune-harness: ")
    assert str(bad) in line and expected in line
    assert "Traceback" not in captured.err


def test_cli_methods_lists_the_techniques(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    techniques, _, options = out.partition("Case options (combine with any method):")
    names = {ln.split()[0] for ln in techniques.splitlines() if ln and not ln[0].isspace()}
    from harness.pruning import get
    from harness.pruning import names as registered

    assert names == set(registered())
    assert {
        "magnitude",
        "structured",
        "taylor",
        "structured-taylor",
        "snip",
        "obd",
        "obs",
        "lrp",
        "l1",
        "l2",
        "group-lasso",
        "energy-aware",
        "student",
        "auto",
    } <= names
    for name in names:  # every technique with its one-line summary and its reference
        assert f"{name.ljust(len(max(names, key=len)))}  {get(name).summary}" in techniques
        assert f"({get(name).reference})" in techniques
    for key in ('schedule = "agp"', 'schedule = "iterative"', "distill", 'deploy = "csr"'):
        assert key in options


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-k", "a" * 101])
def test_suite_and_case_names_cannot_leave_their_directory(tmp_path: Path, name: str) -> None:
    for key in (("suite", "name"), ("case", 0, "name")):
        with pytest.raises(SpecError, match=r"name = .*: use a letter or digit, then letters"):
            suite_from_dict(_with({key: name}))


def test_a_file_stem_that_is_not_a_name_is_refused(tmp_path: Path) -> None:
    data = _with({("suite", "name"): DELETE})
    with pytest.raises(SpecError, match=r"suite.name = '\.\.': use a letter or digit"):
        load_suite(write_suite(tmp_path, data, "...toml"))


# --------------------------------------------------------------------------------------------
# 6. [edge] sets, case edge, rule policy / alpha, [cv] repeats / seed and their hashes
#
# Suites written as TOML text on sklearn's digits (an image dataset, for the image-only edge sets).

DIGITS_TOML = """\
[suite]
name = "digits"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }

[cv]
folds = 3

[train]
epochs = 2
lr = 1e-2

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }
finetune = { epochs = 1, lr = 1e-3 }
"""


def _suite(
    extra: str = "", text: str = DIGITS_TOML, source: str = "suites/digits.toml"
) -> SuiteSpec:
    return suite_from_dict(tomllib.loads(text + textwrap.dedent(extra)), source)


def _with_cv(line: str, text: str = DIGITS_TOML) -> str:
    return text.replace("folds = 3\n", f"folds = 3\n{line}\n")


def _case_key(extra: str) -> str:
    """``extra`` added to the (only) [[case]] table."""
    return DIGITS_TOML + textwrap.dedent(extra)


def _toml_error(text: str, source: str = "suites/digits.toml") -> SpecError:
    with pytest.raises(SpecError) as info:
        suite_from_dict(tomllib.loads(text), source)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    return info.value


def test_edge_sets_parse_for_the_suite_and_per_case() -> None:
    text = DIGITS_TOML.replace(
        "[[case]]", '[edge]\nsets = ["gaussian_noise:0.1", "blur", "hardest:0.2"]\n\n[[case]]'
    )
    text += textwrap.dedent(
        """
        [[case]]
        name = "own-edge"
        prune = { method = "magnitude", sparsity = 0.5 }
        edge = ["extremes"]

        [[case]]
        name = "no-edge"
        prune = { method = "magnitude", sparsity = 0.5 }
        edge = []
        """
    )
    suite = suite_from_dict(tomllib.loads(text), "suites/digits.toml")
    assert suite.edge == ("gaussian_noise:0.1", "blur", "hardest:0.2")
    inherits, own, none = suite.cases
    assert inherits.edge is None and suite.edge_sets(inherits) == suite.edge
    assert own.edge == ("extremes",) and suite.edge_sets(own) == ("extremes",)
    assert none.edge == () and suite.edge_sets(none) == ()
    assert _suite().edge == ()


def _edge_error(sets: str, dataset: str = "sklearn:digits") -> SpecError:
    text = DIGITS_TOML.replace("sklearn:digits", dataset).replace(
        "[[case]]", f"[edge]\nsets = {sets}\n\n[[case]]"
    )
    return _toml_error(text)


def test_edge_unknown_kind() -> None:
    err = _edge_error('["gaussian_noise", "fog:0.3"]')
    assert err.key == "edge.sets" and err.value == "fog:0.3"
    assert "unknown kind 'fog'" in str(err)


def test_edge_image_only_kind_on_tabular_data() -> None:
    err = _edge_error('["blur"]', dataset="sklearn:breast_cancer")
    assert err.key == "edge.sets" and err.value == "blur"
    assert "blur needs image or signal data (sklearn:breast_cancer is tabular)" in str(err)


@pytest.mark.parametrize(
    "sets", ['["extremes", "extremes"]', '["gaussian_noise:0.1", "gaussian_noise:0.10"]']
)
def test_edge_duplicate_metric_names(sets: str) -> None:
    err = _edge_error(sets)
    assert err.key == "edge.sets"
    assert "same metric name" in str(err)


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        ('"extremes"', "must be an array"),
        ("[1]", "must be an array of strings"),
        ('["gaussian_noise:-1"]', "sigma must be >= 0"),
        ('["shift:8"]', "must be below 8"),
    ],
)
def test_edge_other_bad_values(sets: str, problem: str) -> None:
    err = _edge_error(sets)
    assert err.key == "edge.sets" and problem in str(err)


def test_edge_unknown_key_in_the_table() -> None:
    err = _toml_error(DIGITS_TOML.replace("[[case]]", '[edge]\nset = ["blur"]\n\n[[case]]'))
    assert err.key == "edge.set" and "unknown key" in str(err)


def test_case_edge_is_validated_under_the_case_key() -> None:
    err = _toml_error(_case_key('edge = ["blur", "nope"]\n'))
    assert err.key == "case[mag-50].edge" and err.value == "nope"
    err = _toml_error(_case_key('edge = ["blur:1", "blur:1.0"]\n'))
    assert err.key == "case[mag-50].edge" and "same metric name 'blur_1'" in str(err)
    # "blur" (the default sigma) and "blur:1" are two sets with two names
    assert _suite(text=_case_key('edge = ["blur", "blur:1"]\n')).cases[0].edge == ("blur", "blur:1")


def test_missing_npz_file_names_the_key(tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    (suites / "edge").mkdir(parents=True)
    text = DIGITS_TOML.replace("[[case]]", '[edge]\nsets = ["npz:edge/hard.npz"]\n\n[[case]]')
    path = suites / "digits.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_suite(path)
    err = info.value
    assert err.key == "edge.sets" and err.value == "npz:edge/hard.npz"
    assert "file not found" in str(err) and "\n" not in str(err)
    # relative to the suite file: once it exists there, the suite loads
    ds = load_dataset("sklearn:digits")
    np.savez(suites / "edge" / "hard.npz", X=ds.X[:20], y=ds.y[:20])
    assert load_suite(path).edge == ("npz:edge/hard.npz",)


def test_npz_file_with_wrong_features_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    np.savez(tmp_path / "edge" / "bad.npz", X=np.zeros((5, 3)), y=np.zeros(5))
    path = tmp_path / "digits.toml"
    path.write_text(
        DIGITS_TOML.replace("[[case]]", '[edge]\nsets = ["npz:edge/bad.npz"]\n\n[[case]]')
    )
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert info.value.key == "edge.sets" and "3 features per row" in str(info.value)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('{ max_drop = 0.01, policy = "bayesian" }', "policy", "must be one of threshold, "),
        ('{ max_drop = 0.01, policy = "significant", alpha = 0.0 }', "alpha", "(0, 1)"),
        ('{ max_drop = 0.01, policy = "significant", alpha = 1 }', "alpha", "(0, 1)"),
        ('{ max_drop = 0.01, policy = "significant", alpha = 1.5 }', "alpha", "(0, 1)"),
        ("{ max_drop = 0.01, alpha = -0.1 }", "alpha", "(0, 1)"),
        ("{ max_drop = 0.01, policy = 1 }", "policy", "must be one of threshold, significant"),
        ('{ min = 0.5, policy = "significant" }', "policy", "needs max_drop"),
        ('{ max_rel_drop = 0.1, policy = "non_inferior" }', "policy", "needs max_drop"),
        ('{ policy = "significant" }', "policy", "needs max_drop"),
    ],
)
def test_policy_and_alpha_validation(body: str, key: str, problem: str) -> None:
    err = _toml_error(DIGITS_TOML + f'\n[gate]\n"pruned.f1_macro" = {body}\n')
    assert err.key == f"gate.pruned.f1_macro.{key}"
    assert problem in str(err)


def test_policy_and_alpha_parse_in_suite_and_case_rules() -> None:
    suite = _suite(
        """
        [gate]
        "pruned.f1_macro" = { max_drop = 0.01, policy = "significant", alpha = 0.1 }
        "vs_dense.recall.class_*" = { max_drop = 0.05, policy = "non_inferior" }
        "pruned.accuracy" = { max_drop = 0.01 }
        """
    )
    rules = {r.metric: r for r in suite.gate}
    assert rules["pruned.f1_macro"] == RuleSpec(
        "pruned.f1_macro", max_drop=0.01, policy="significant", alpha=0.1
    )
    assert rules["vs_dense.recall.class_*"].policy == "non_inferior"
    assert rules["vs_dense.recall.class_*"].alpha == 0.05
    assert rules["pruned.accuracy"].policy == "threshold"
    case = _suite(
        text=_case_key('gate = { "pie_rate" = { max_drop = 0.02, policy = "significant" } }\n')
    )
    assert case.cases[0].gate == (RuleSpec("pie_rate", max_drop=0.02, policy="significant"),)


def test_cv_repeats_and_seed() -> None:
    suite = _suite(text=_with_cv("repeats = 3\nseed = 7"))
    assert (suite.repeats, suite.fold_seed, suite.cv_seed) == (3, 7, 7)
    default = _suite()
    assert (default.repeats, default.fold_seed, default.cv_seed) == (1, None, 0)
    for line, key, problem in (
        ("repeats = 0", "cv.repeats", "must be > 0"),
        ("repeats = -2", "cv.repeats", "must be > 0"),
        ("repeats = 1.5", "cv.repeats", "must be an integer"),
        ("seed = -1", "cv.seed", "must be >= 0"),
        ('seed = "7"', "cv.seed", "must be an integer"),
    ):
        err = _toml_error(_with_cv(line))
        assert err.key == key and problem in str(err), str(err)


def _old_digest(obj: Any) -> str:
    """The hash as it was computed before the new keys (harness.spec at the previous commit)."""

    def plain(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in sorted(o.items())}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _old_spec_hash(suite: SuiteSpec) -> str:
    case = suite.cases[0]
    dense = _old_digest(
        {
            "dataset": suite.dataset,
            "dataset_args": dict(suite.dataset_args),
            "model": suite.model,
            "model_args": dict(suite.model_args),
            "seed": suite.seed,
            "threads": suite.threads,
            "folds": suite.folds,
            "train": dataclasses.asdict(suite.train),
        }
    )
    return _old_digest(
        {
            "dense": dense,
            "latency": dataclasses.asdict(suite.latency),
            "prune": {  # the table as it was before `pattern`
                k: v for k, v in dataclasses.asdict(case.prune).items() if k != "pattern"
            },
            "finetune": dataclasses.asdict(case.finetune) if case.finetune else None,
        }
    )


def test_spec_hash_of_a_suite_without_the_new_keys_is_unchanged() -> None:
    plain = _suite()
    case = plain.cases[0]
    assert plain.spec_hash(case) == _old_spec_hash(plain)  # existing baselines stay valid
    explicit = _suite(text=_with_cv("repeats = 1"))
    assert explicit.spec_hash(explicit.cases[0]) == plain.spec_hash(case)
    assert explicit.dense_key() == plain.dense_key()
    # gate policies are not part of the hash
    gated = _suite('\n[gate]\n"pruned.f1_macro" = { max_drop = 0.01, policy = "significant" }\n')
    assert gated.spec_hash(gated.cases[0]) == plain.spec_hash(case)
    # an empty edge list is no edge set
    no_edge = _suite(text=DIGITS_TOML.replace("[[case]]", "[edge]\nsets = []\n\n[[case]]"))
    assert no_edge.spec_hash(no_edge.cases[0]) == plain.spec_hash(case)


def _edged_with_case_edge(case_edge: str) -> str:
    text = DIGITS_TOML.replace("[[case]]", '[edge]\nsets = ["blur"]\n\n[[case]]')
    return text + f"edge = {case_edge}\n"


def test_spec_hash_changes_with_the_new_keys() -> None:
    plain = _suite()
    base_hash = plain.spec_hash(plain.cases[0])
    edged = _suite(text=DIGITS_TOML.replace("[[case]]", '[edge]\nsets = ["blur"]\n\n[[case]]'))
    assert edged.spec_hash(edged.cases[0]) != base_hash
    assert edged.dense_key() == plain.dense_key()  # the dense models are the same
    other = _suite(text=DIGITS_TOML.replace("[[case]]", '[edge]\nsets = ["blur:2"]\n\n[[case]]'))
    assert other.spec_hash(other.cases[0]) != edged.spec_hash(edged.cases[0])
    # a case that opts out of the suite's sets hashes like a suite without any
    opt_out = _suite(text=_edged_with_case_edge("[]"))
    assert opt_out.spec_hash(opt_out.cases[0]) == base_hash
    repeated = _suite(text=_with_cv("repeats = 2"))
    assert repeated.dense_key() != plain.dense_key()
    assert repeated.spec_hash(repeated.cases[0]) != base_hash
    seeded = _suite(text=_with_cv("seed = 3"))
    assert seeded.dense_key() != plain.dense_key()
    assert seeded.spec_hash(seeded.cases[0]) != base_hash


# --------------------------------------------------------------------------------------------
# Structure and resolution: loading checks the spec as data, resolution against what it names


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({("suite", "dataset"): "npz:missing.npz"}, "suite.dataset", "data file not found"),
        ({("suite", "model"): "nowhere:mlp"}, "suite.model", "model module does not import"),
        ({("suite", "model_args", "depth"): 3}, "suite.model_args", "rejected model_args"),
        ({("case", 0, "prune", "method"): "magic"}, "case[mag-50].prune.method", "unknown method"),
        (
            {("case", 1, "prune", "args"): {"norm": 3}},
            "case[struct-30].prune.args.norm",
            "must be one of 1, 2",
        ),
        ({("cv", "folds"): 60}, "cv.folds", "more folds than the smallest class"),
        ({("edge", "sets"): ["blur"]}, "edge.sets", "blur needs image or signal data"),
    ],
)
def test_loading_is_structural_and_resolution_names_what_does_not_fit(
    tmp_path: Path, changes: dict, key: str, problem: str
) -> None:
    path = write_suite(tmp_path, _with(changes), "s.toml")
    suite = spec.load_suite(path)  # the structure is fine: nothing imported, loaded or built
    with pytest.raises(SpecError) as info:
        resolve(suite)
    assert info.value.source.endswith("s.toml") and info.value.key == key
    assert problem in info.value.problem, str(info.value)
    assert "\n" not in str(info.value)


def test_run_case_resolves_a_spec_built_in_python_first() -> None:
    from harness.runner import run_case

    suite = spec.suite_from_dict(_with({("case", 0, "prune", "method"): "magic"}), "<python>")
    with pytest.raises(SpecError, match=r"^<python>: case\[mag-50\]\.prune\.method = 'magic'"):
        run_case(suite, suite.cases[0])


# --------------------------------------------------------------------------------------------
# A case's own model


def test_a_case_may_run_its_own_model_args_with_its_own_dense_model() -> None:
    data = _with({("case", 1, "model_args"): {"hidden": [16]}})
    suite = suite_from_dict(data)
    base = suite_from_dict(copy.deepcopy(BASE))
    own, plain = suite.cases[1], suite.cases[0]
    assert own.model_args == {"hidden": [16]} and plain.model_args is None
    assert suite.for_case(plain) is suite
    assert suite.for_case(own).model_args == {"hidden": [16]}
    assert suite.for_case(own).dense_key() != suite.dense_key()
    assert suite.spec_hash(plain) == base.spec_hash(base.cases[0])  # the others keep theirs
    assert suite.spec_hash(own) != base.spec_hash(base.cases[1])


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({("case", 1, "model_args"): {"depth": 3}}, "case[struct-30].model_args", "rejected"),
        ({("case", 1, "model"): "nowhere:mlp"}, "case[struct-30].model", "does not import"),
        ({("case", 1, "model"): "mlp"}, "case[struct-30].model", "module:callable"),
    ],
)
def test_a_case_model_that_does_not_build_is_one_line(
    changes: dict, key: str, problem: str
) -> None:
    with pytest.raises(SpecError) as info:
        suite_from_dict(_with(changes), source="s.toml")
    assert info.value.key == key and problem in info.value.problem, str(info.value)


def test_epochs_zero_means_the_model_as_it_is_and_dense_keys_are_set_only_when_used() -> None:
    suite = suite_from_dict(_with({("train", "epochs"): 0, ("cv", "standardize"): False}))
    assert suite.train.epochs == 0 and suite.standardize is False
    base = suite_from_dict(copy.deepcopy(BASE))
    assert suite.dense_key() != base.dense_key()  # raw features train other dense models
    with pytest.raises(SpecError) as info:
        suite_from_dict(_with({("cv", "standardize"): "no"}), source="s.toml")
    assert (info.value.key, info.value.problem) == ("cv.standardize", "must be true or false")
    with pytest.raises(SpecError) as info:
        suite_from_dict(_with({("dense", "checkpoint"): "d.pt", ("dense", "strict"): 1}))
    assert (info.value.key, info.value.problem) == ("dense.strict", "unknown key")


def test_pattern_parses_to_n_and_m_and_needs_its_sparsity() -> None:
    suite = suite_from_dict(_with({("case", 0, "prune", "pattern"): " 2:4 "}))
    assert suite.cases[0].prune.nm == (2, 4)
    assert suite.cases[1].prune.nm is None  # no pattern: unstructured / structured as before
    eighths = _with(
        {("case", 0, "prune", "pattern"): "1:8", ("case", 0, "prune", "sparsity"): 0.875}
    )
    assert suite_from_dict(eighths).cases[0].prune.nm == (1, 8)
