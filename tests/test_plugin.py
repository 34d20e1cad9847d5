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
