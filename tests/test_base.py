"""``--harness-base REF``: head gated against the base commit measured on the same machine
(``harness.base``). The end-to-end test builds a real git repository with a tiny suite and runs
pytest in it; the rest checks the parts without torch.

The base commit of these repositories has no ``harness/`` package, so their base runs import
the installed harness (this checkout's editable install) like the head; that the base run
prefers a worktree's own ``harness/`` is checked on its environment
(:func:`test_the_base_run_imports_the_worktrees_own_harness_first`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import base as base_mod
from harness.base import Base, BaseError, child_environment, command, measure, resolve, supports

SUITE = textwrap.dedent(
    """\
    [suite]
    name = "mini"
    dataset = "sklearn:digits"
    model = "netlib:net"
    model_args = { hidden = [8] }

    [cv]
    folds = 2

    [train]
    epochs = 2
    lr = 0.02

    [latency]
    batch = 8
    warmup = 0
    repeats = 2

    [checks]
    properties = false
    differential = false

    [gate]
    "pruned.accuracy" = { max_drop = 0.02 }
    "pruned.latency_batch_ms_p50" = { max_rel_drop = 100.0 }

    [[case]]
    name = "mag"
    prune = { method = "magnitude", sparsity = 0.5 }
    """
)
# the user's model code: the head commit's change makes the pruned model worse with the same
# spec (a model factory's source is not part of the spec hash, so the verdict is a regression)
NETLIB = textwrap.dedent(
    """\
    from harness.models import mlp


    def net(in_features, n_classes, hidden=(8,)):
        return mlp(in_features=in_features, n_classes=n_classes, hidden=list(hidden))
    """
)
NEW_CASE = '\n[[case]]\nname = "mag-new"\nprune = { method = "magnitude", sparsity = 0.6 }\n'


_IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false")


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *_IDENTITY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)
    return _git(root, "rev-parse", "HEAD")


def _repository(root: Path) -> str:
    """A git repository with the tiny suite; the sha of its first commit."""
    _git(root, "init", "-q")
    (root / ".gitignore").write_text(".harness/\nrep/\n")
    (root / "suites").mkdir()
    (root / "suites" / "mini.toml").write_text(SUITE)
    (root / "netlib.py").write_text(NETLIB)
    return _commit(root, "base")


def _pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest session in ``root`` in a subprocess (``pytester``'s fixture here would first
    warm up in-process runs, which these tests do not need)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _report(root: Path) -> dict:
    return json.loads((root / "rep" / "mini__mag" / "report.json").read_text())


def test_head_is_gated_against_the_base_measured_here(tmp_path: Path) -> None:
    root = tmp_path
    sha = _repository(root)
    (root / "README").write_text("a change that leaves the suite as it is\n")
    _commit(root, "unchanged suite")
    args = ("--harness-base", "HEAD~1", "--harness-no-mlflow")

    first = _pytest(root, *args, "--harness-report", "rep")
    out = first.stdout
    assert first.returncode == 0 and "1 passed" in out, out + first.stderr
    assert f"measuring 1 case(s) at base {sha[:12]} (HEAD~1) on this machine" in out
    assert f"prune-harness: gating against base {sha[:12]} (measured here, 1 cases; ran in" in out
    [cache] = (root / ".harness" / "base").glob(f"{sha[:12]}-*")
    marker = cache / "complete.json"
    assert json.loads(marker.read_text())["covered"] == ["suites/mini.toml::mag"]
    stored = json.loads((cache / "baselines" / "mini" / "mag.json").read_text())
    assert stored["commit"] == sha  # the base commit, not head's
    assert not (root / "baselines").exists()  # the committed baselines are not touched
    # same machine: the latency rule is applied against the base, not skipped
    checks = {c["key"]: c for c in _report(root)["verdict"]["checks"]}
    latency = checks["pruned.latency_batch_ms_p50"]
    assert latency["passed"] is True and latency["reference"] is not None, latency
    # and nothing skipped or told apart by hardware; the advisory speedup flag, a same-run
    # timing of this tiny model (batch 8, 2 repeats), may be raised on a busy machine
    notes = _report(root)["verdict"]["notes"]
    assert not [n for n in notes if not n.startswith("speedup not real")], notes

    # the second session reuses the cached base (the marker is not rewritten); an xdist worker
    # compares with the same directory (with baselines/ it would find none and fail as new)
    written = marker.stat().st_mtime_ns
    second = _pytest(root, *args, "-n", "1")
    assert second.returncode == 0 and "1 passed" in second.stdout, second.stdout + second.stderr
    assert f"gating against base {sha[:12]} (measured here, 1 cases; cached)" in second.stdout
    assert marker.stat().st_mtime_ns == written

    # worse model code at head, and a case the base does not have
    (root / "netlib.py").write_text(NETLIB.replace("hidden=list(hidden)", "hidden=[1]"))
    (root / "suites" / "mini.toml").write_text(SUITE + NEW_CASE)
    _commit(root, "worse model")
    third = _pytest(root, "--harness-base", sha[:10], *args[2:])
    out = third.stdout
    assert third.returncode == 1 and "2 failed" in out, out + third.stderr
    assert "(measured here, 1 cases; cached)" in out  # the same base commit and machine
    assert "mini::mag: regressed" in out
    assert "pruned.accuracy: baseline " in out and "(max_drop 0.02 vs baseline)" in out
    assert "mini::mag-new: new" in out
    assert f"verdicts compare with base {sha[:12]} ({sha[:10]}) measured on this machine" in out
    assert f"1 case(s) have no result at base {sha[:12]}" in out
    assert marker.stat().st_mtime_ns == written


def test_a_ref_that_is_no_commit_is_one_usage_line(tmp_path: Path) -> None:
    _repository(tmp_path)
    run = _pytest(tmp_path, "--harness-base", "no-such-branch", "--harness-no-mlflow")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --harness-base=no-such-branch: not a commit of this repository (" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".harness").exists()


def test_a_rootdir_outside_git_is_one_usage_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mini.toml").write_text(SUITE)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even inside a checkout
    run = _pytest(tmp_path, "--harness-base", "main", "--harness-no-mlflow")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    err = run.stderr
    assert "ERROR: --harness-base=main: not a commit of this repository (" in err
    assert "is not in a git checkout)" in err and "Traceback" not in err


def test_base_together_with_regen_is_one_usage_line(tmp_path: Path) -> None:
    _repository(tmp_path)
    run = _pytest(tmp_path, "--harness-base", "HEAD", "--harness-regen")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    err = run.stderr
    assert "ERROR: --harness-base=HEAD and --harness-regen: " in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_base_run_imports_the_worktrees_own_harness_first(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "harness").mkdir(parents=True)
    (tree / "harness" / "__init__.py").write_text("")
    (tree / "harness" / "plugin.py").write_text('"""the base revision\'s plugin"""\n')
    environ = {
        "PYTHONPATH": "/elsewhere",
        "PYTEST_ADDOPTS": "--harness-base main",  # would recurse
        "GITHUB_STEP_SUMMARY": "/summary",  # the job summary is head's
        "GITHUB_SHA": "f" * 40,
        "PRUNE_HARNESS_NUMERICS": "native",
        "PATH": "/usr/bin:/bin",
    }
    env = child_environment(tree, environ, sha="a" * 40)
    assert env["PYTHONPATH"].split(":") == [str(tree), "/elsewhere"]
    assert "PYTEST_ADDOPTS" not in env and "GITHUB_STEP_SUMMARY" not in env
    assert env["GITHUB_SHA"] == "a" * 40 and env[base_mod.ENV_CHILD] == "1"
    assert env["PRUNE_HARNESS_NUMERICS"] == "native"  # the session's numerics carry over
    # a process with that environment imports the worktree's harness, not the editable install
    run_env = child_environment(tree, dict(os.environ), sha="a" * 40)
    assert base_mod.imported_plugin(tree, run_env) == (tree / "harness" / "plugin.py").resolve()


def test_the_base_run_passes_only_options_its_revision_knows(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "harness").mkdir(parents=True)
    assert supports(tree, "--harness-device")  # no plugin.py: the installed harness runs
    (tree / "harness" / "plugin.py").write_text('"--harness-device", "--harness-cache-results"\n')
    assert supports(tree, "--harness-device") and not supports(tree, "--harness-no-cache")
    assert not supports(tree, "--harness-cache")  # an option, not a prefix of one
    base = Base("main", "a" * 40, tmp_path, tmp_path, "0123456789ab")
    argv = command(base, ["suites/x.toml"], ["--harness-device", "cpu"])
    assert argv[1:4] == ["-m", "pytest", "suites/x.toml"]
    assert argv[argv.index("--harness-baselines") + 1] == str(
        tmp_path / ".harness" / "base" / "aaaaaaaaaaaa-0123456789ab" / "baselines"
    )
    assert "--harness-regen" in argv and "--harness-no-mlflow" in argv
    assert argv[argv.index("--rootdir") + 1] == str(tmp_path / ".harness/base/aaaaaaaaaaaa/tree")


def test_the_cache_is_complete_only_when_its_marker_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mini.toml").write_text(SUITE)
    (tmp_path / "suites" / "other.toml").write_text(SUITE.replace('"mini"', '"other"'))
    (tmp_path / "harness").mkdir()  # the base revision's own plugin knows one of the options
    (tmp_path / "harness" / "plugin.py").write_text('"--harness-device"\n')
    _commit(tmp_path, "base")
    base = resolve(tmp_path, "HEAD", hardware="0123456789ab")
    runs: list[list[str]] = []
    passed: list[list[str]] = []

    def fake_run(b: Base, targets: list[str], options: list[str], env: object, where: str) -> float:
        runs.append(list(targets))
        passed.append(list(options))
        for target in targets:  # each suite's name is its file's stem here
            folder = b.baselines / Path(target.partition("::")[0]).stem
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "mag.json").write_text("{}")
        return 0.5

    monkeypatch.setattr(base_mod, "_run", fake_run)
    cases = ["suites/mini.toml::mag", "suites/mini.toml::only-in-head", "suites/new.toml::x"]
    options = [("--harness-device", "cpu"), ("--harness-no-cache",), ("-n", "2")]
    first = measure(base, cases, options=options)
    assert (base.tree / "suites" / "mini.toml").is_file()  # the detached worktree
    assert passed == [["--harness-device", "cpu", "-n", "2"]]
    assert runs == [["suites/mini.toml"]]  # every case of the file that exists in the base
    assert (first.cases, first.ran) == (1, 1)
    assert first.missing == ("suites/mini.toml::only-in-head", "suites/new.toml::x")
    assert "ran in 0 s" in first.line()
    second = measure(base, cases)
    assert (second.ran, runs) == (0, [["suites/mini.toml"]]) and "cached" in second.line()
    base.marker.write_text("{not json")  # a run cut off while writing: rerun
    assert measure(base, cases).ran == 1
    (base.baselines / "mini" / "mag.json").unlink()  # a result gone: rerun
    assert measure(base, cases).ran == 1
    assert measure(base, ["suites/other.toml::mag"]).ran == 1  # another session's selection
    assert measure(base, cases).ran == 0  # ... leaves the marker's other cases complete
    shutil.rmtree(base.tree)  # a deleted worktree is pruned and added again
    assert measure(base, cases).ran == 0 and (base.tree / "suites" / "mini.toml").is_file()
    assert runs[3] == ["suites/other.toml"] and len(runs) == 4
    with pytest.raises(BaseError, match=r"^base=nope: not a commit of this repository \("):
        resolve(tmp_path, "nope", hardware="")
