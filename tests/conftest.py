"""Shared fixtures: a tiny, fast suite (digits, 2 folds, a few epochs) for end-to-end runs."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from hypothesis import settings

# No per-example deadline: timings on shared CI runners are noise (a deadline would fail a
# correct test on a busy machine, never find a bug)
settings.register_profile("harness", deadline=None)
settings.load_profile("harness")

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


# What an inner run must not see of the real CI: its job summary, its run tags, its MLflow store.
CI_ENVIRONMENT = ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def warm_imports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run the tiny suite once (with MLflow) in this process, before the first in-process run.

    pytester's in-process runs drop the modules they import when they end; torch and MLflow
    register global state on import and cannot be imported twice, so everything a run imports
    lazily is imported here first. Session-scoped, so it is set up before any function-scoped
    ``pytester`` takes its snapshot of ``sys.modules``; requested only through ``pytester``
    (below), so a session of unit tests trains nothing and imports neither torch nor MLflow here.
    """
    import tomllib

    from harness import tracking
    from harness.session import Recorder, Settings, check_case
    from harness.spec import suite_from_dict

    tmp = tmp_path_factory.mktemp("warm-up")
    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    with pytest.MonkeyPatch.context() as mp:
        for name in CI_ENVIRONMENT:
            mp.delenv(name, raising=False)
        settings = Settings(baselines=tmp / "baselines", regen=True)
        tracker = tracking.MlflowTracker(
            f"sqlite:///{tmp}/warm.db", session_name="warm-up", outbox=tmp / "outbox"
        )
        recorder = Recorder(settings, tracker)
        for case in suite.cases:
            recorder.add(check_case(suite, case, settings))
        recorder.finish()


@pytest.fixture(autouse=True)
def _own_sys_path() -> Iterator[None]:
    """Each test keeps the import path it started with: resolving a suite or running the CLI
    in this process puts the suite's directory and the project root on ``sys.path`` (as it
    should, once per real session), which must not leak into later tests' inner runs."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def _no_ci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs must not write to the real CI's job summary or tag runs with it."""
    for name in CI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pytester(warm_imports: None, pytester: pytest.Pytester) -> pytest.Pytester:
    """pytest's ``pytester``, with :func:`warm_imports` done first.

    Every in-process run (``runpytest``, ``inline_run``) needs it, and overriding the fixture
    here covers every test module that uses one; a test that only runs
    ``runpytest_subprocess`` pays the one warm-up of the session too.
    """
    return pytester


@pytest.fixture
def tiny_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with ``suites/tiny.toml`` (2 cases) and no baselines yet."""
    pytester.mkdir("suites")
    (pytester.path / "suites" / "tiny.toml").write_text(TINY_SUITE, encoding="utf-8")
    return pytester
