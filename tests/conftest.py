"""Shared fixtures: a tiny, fast suite (digits, 2 folds, a few epochs) for end-to-end runs."""

from __future__ import annotations

import pytest

TINY_SUITE = """\
[suite]
name = "tiny"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }
seed = 0

[cv]
folds = 2

[train]
epochs = 3
lr = 1e-2

[latency]
batch = 16
warmup = 1
repeats = 3

[gate]
"pruned.f1_macro" = { max_drop = 0.01 }
"pruned.accuracy" = { max_drop = 0.01 }

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }
finetune = { epochs = 1, lr = 1e-3 }

[[case]]
name = "struct-30"
prune = { method = "structured", sparsity = 0.3 }
"""


def _warm_up() -> None:
    """Run the tiny suite once (with MLflow) in this process.

    pytester's in-process runs drop the modules they import when they end; torch and MLflow
    register global state on import and cannot be imported twice, so everything a run imports
    lazily is imported here first.
    """
    import tempfile
    import tomllib
    from pathlib import Path

    from harness import tracking
    from harness.session import Recorder, Settings, check_case
    from harness.spec import suite_from_dict

    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(baselines=Path(tmp) / "baselines", regen=True)
        tracker = tracking.MlflowTracker(
            f"sqlite:///{tmp}/warm.db", session_name="warm-up", outbox=Path(tmp) / "outbox"
        )
        recorder = Recorder(settings, tracker)
        for case in suite.cases:
            recorder.add(check_case(suite, case, settings, regen_hint="-"))
        recorder.finish()


_warm_up()


@pytest.fixture(autouse=True)
def _no_ci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs must not write to the real CI's job summary or tag runs with it."""
    for name in ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with ``suites/tiny.toml`` (2 cases) and no baselines yet."""
    pytester.mkdir("suites")
    (pytester.path / "suites" / "tiny.toml").write_text(TINY_SUITE, encoding="utf-8")
    return pytester
