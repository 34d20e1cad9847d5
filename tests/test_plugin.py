"""The plugin end to end with pytester (in-process runs: ``pytester`` comes with the
session's ``warm_imports`` done first, see conftest.py): edge-case metrics and pruning-identified
exemplars recorded in the baseline and gated. These train real (tiny) models on real data."""

from __future__ import annotations

import json

import pytest

NO_MLFLOW = "--harness-no-mlflow"
EDGE_RULE = "pruned.edge.gaussian_noise_0.1.f1_macro"


def test_plugin_edge_metrics_exemplars_in_the_baseline_and_the_gate(
    tiny_project: pytest.Pytester,
) -> None:
    p = tiny_project
    suite = p.path / "suites" / "tiny.toml"
    text = suite.read_text()
    text = text.replace(
        '"pruned.accuracy" = { max_drop = 0.01 }\n',
        '"pruned.accuracy" = { max_drop = 0.01 }\n'
        '"pie_rate" = { max_drop = 0.01 }\n'
        f'"{EDGE_RULE}" = {{ max_drop = 0.01 }}\n'
        "\n[edge]\n"
        'sets = ["gaussian_noise:0.1", "hardest"]\n',
    )
    suite.write_text(text)
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen", "-k", "mag-50")
    res.assert_outcomes(passed=1)

    path = p.path / "baselines" / "tiny" / "mag-50.json"
    data = json.loads(path.read_text())
    for name in ("gaussian_noise_0.1", "hardest"):
        for model in ("dense", "pruned"):
            for metric in ("accuracy", "f1_macro"):
                assert len(data["metrics"][f"{model}.edge.{name}.{metric}"]["folds"]) == 2
    count = data["metrics"]["pie_count"]["mean"]
    assert data["metrics"]["pie_rate"]["mean"] == pytest.approx(count / 1797)
    if count:
        ids = data["pie"]["ids"]
        assert len(ids) == count and ids == sorted(ids)
    else:
        assert "pie" not in data

    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(passed=1)

    edited = data["metrics"][EDGE_RULE]
    edited["folds"] = [v + 0.1 for v in edited["folds"]]  # a consistent edit: folds and mean
    edited["mean"] += 0.1
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "tiny::mag-50: regressed",
            f"{EDGE_RULE}: baseline *, now *, allowed >= * (max_drop 0.01 vs baseline)",
        ]
    )
    res.stdout.no_fnmatch_line("pie_rate:*")
    res.stdout.no_fnmatch_line("pruned.f1_macro:*")


USER_MODELS = """
from torch import nn


def small_net(in_features, n_classes, width=16):
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, n_classes))
"""
USER_DATA = """
import numpy as np


def blobs(n=120):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return {"X": rng.normal(size=(n, 5)) + 2 * y[:, None], "y": y, "class_names": ["a", "b", "c"]}
"""
USER_SUITE = """
[suite]
name = "mine"
dataset = "{dataset}"
model = "project_models:small_net"
model_args = {{ width = 8 }}

[cv]
folds = 2

[train]
epochs = 2

[latency]
batch = 8
warmup = 0
repeats = 2

[checks]
properties = false
differential = false

[gate]
"pruned.f1_macro" = {{ max_drop = 0.01 }}

[[case]]
name = "mag"
prune = {{ method = "magnitude", sparsity = 0.5, args = {{ ignore = ["2"] }} }}
"""


def test_user_modules_in_the_project_root_and_next_to_the_suite_import_under_plain_pytest(
    pytester: pytest.Pytester,
) -> None:
    """`pytest` (not `python -m pytest`) puts neither the working directory nor the suite's on
    sys.path; the harness does, for the model factory and a callable dataset."""
    pytester.makepyfile(project_models=USER_MODELS)  # the project root (the rootdir)
    suites = pytester.mkdir("suites")
    (suites / "suite_data.py").write_text(USER_DATA)  # next to the suite file
    (suites / "mine.toml").write_text(USER_SUITE.format(dataset="suite_data:blobs"))
    res = pytester.runpytest_subprocess(NO_MLFLOW, "--harness-regen", "-p", "no:randomly")
    res.assert_outcomes(passed=1)
    baseline = json.loads((pytester.path / "baselines" / "mine" / "mag.json").read_text())
    assert baseline["metrics"]["dense.params"]["mean"] == 5 * 8 + 8 + 8 * 3 + 3
    # the ignored classifier stays dense: the 50 % apply to the first layer only
    assert baseline["metrics"]["pruned.nonzero_params"]["mean"] == 5 * 8 / 2 + 8 + 8 * 3 + 3
    again = pytester.runpytest_subprocess(NO_MLFLOW, "-p", "no:randomly")
    again.assert_outcomes(passed=1)


def test_a_user_dataset_that_fails_is_one_collection_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(project_models=USER_MODELS)
    suites = pytester.mkdir("suites")
    (suites / "mine.toml").write_text(USER_SUITE.format(dataset="missing_data:blobs"))
    res = pytester.runpytest_subprocess(NO_MLFLOW)
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.stdout.fnmatch_lines(
        [
            "*suites/mine.toml: suite.dataset = 'missing_data:blobs': dataset module does not "
            "import (No module named 'missing_data')*"
        ]
    )
    assert "Traceback" not in res.stdout.str()
