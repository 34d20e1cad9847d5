"""Same-machine comparison with a base commit (``--harness-base REF``, docs/base.md).

A baseline committed in ``baselines/`` was measured on some other machine: latency rules are
skipped against it and, where bits cannot match (GPUs, arm64, native numerics), quality rules are
judged by the noise-aware cross-hardware policy. Measuring the base revision here, in the same
job, gives a baseline from this very machine, so every rule applies as written.

The base revision is checked out as a detached git worktree under
``<rootdir>/.harness/base/<sha12>/tree`` and its suites run there in a subprocess with
``--harness-regen`` into ``<rootdir>/.harness/base/<sha12>-<machine digest>/baselines``: the
results are cached per base commit and machine (:func:`machine`), and a marker written last
(atomically) says which cases are complete, so an interrupted run is rerun and another machine
never reuses them. The subprocess imports the base revision's own ``harness`` package when the
worktree has one (prune-harness gating itself), else the installed one.

Nothing here imports pytest; the plugin parses its arguments and hands over target paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness._util import HarnessError, one_line, write_json_atomic

__all__ = [
    "BASE_DIR",
    "ENV_CHILD",
    "Base",
    "BaseError",
    "BaseRun",
    "child_environment",
    "command",
    "imported_plugin",
    "machine",
    "machine_digest",
    "measure",
    "resolve",
    "supports",
]

BASE_DIR = Path(".harness") / "base"
MARKER = "complete.json"  # written last: the cases whose base results are complete
LOG = "run.log"  # the base run's output
ENV_CHILD = "PRUNE_HARNESS_BASE_RUN"  # set in the base run: it never starts a base run itself
SCHEMA = 1
# not passed to the base run: options for this session (a PYTEST_ADDOPTS with --harness-base
# would recurse), its job summary, and xdist's per-worker variables
_DROPPED = (
    "PYTEST_ADDOPTS",
    "GITHUB_STEP_SUMMARY",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "PYTEST_CURRENT_TEST",
)
_GIT_TIMEOUT_S = 600.0  # a worktree of a large repository takes a while


class BaseError(HarnessError):
    """The base revision cannot be measured (not a commit, git failed, the base run failed);
    one line naming the option's value."""


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as err:
        raise BaseError("git is not installed (or not on PATH)") from err
    except (OSError, subprocess.SubprocessError) as err:
        raise BaseError(f"git {' '.join(args)} failed ({err})") from err


def _last_line(text: str, prefer: str = "") -> str:
    """The last non-blank line of ``text``; with ``prefer``, the last one containing it (any
    case) where there is one (the error of a run's output, not its closing banner)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    chosen = [line for line in lines if prefer and prefer in line.lower()] or lines
    return one_line(chosen[-1])[:300] if chosen else ""


@dataclass(frozen=True)
class Base:
    """A base commit of the checkout at ``root`` and where its results for this machine live.

    Attributes
    ----------
    ref, sha : str
        The revision as given and the full commit sha it resolves to.
    root : Path
        The session's rootdir (inside the git checkout whose top level is ``toplevel``).
    hardware : str
        The digest of :func:`machine`: results are kept per base commit and machine.
    """

    ref: str
    sha: str
    root: Path
    toplevel: Path
    hardware: str

    @property
    def sha12(self) -> str:
        return self.sha[:12]

    @property
    def tree(self) -> Path:
        """The detached worktree of the base commit."""
        return self.root / BASE_DIR / self.sha12 / "tree"

    @property
    def base_root(self) -> Path:
        """The base revision's rootdir: the worktree, or its folder that ``root`` is in the
        checkout."""
        return self.tree / self.root.relative_to(self.toplevel)

    @property
    def cache(self) -> Path:
        return self.root / BASE_DIR / f"{self.sha12}-{self.hardware}"

    @property
    def baselines(self) -> Path:
        """The baseline directory the session compares with."""
        return self.cache / "baselines"

    @property
    def marker(self) -> Path:
        return self.cache / MARKER


def resolve(root: Path, ref: str, *, hardware: str, where: str = "base") -> Base:
    """The commit ``ref`` (a branch, ``origin/main``, a sha, ``HEAD~1``) names in the git
    checkout ``root`` is in.

    Raises
    ------
    BaseError
        One line, ``<where>=<ref>: not a commit of this repository (...)``, when ``ref`` is no
        commit there or ``root`` is not in a git checkout.
    """
    root = Path(root).resolve()

    def not_a_commit(why: str) -> BaseError:
        return BaseError(f"{where}={ref}: not a commit of this repository ({why})")

    if not ref.strip() or ref.startswith("-"):
        raise not_a_commit("a revision does not start with '-' and is not empty")
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
    except BaseError as err:
        raise not_a_commit(str(err)) from err
    if top.returncode != 0:
        raise not_a_commit(f"{root} is not in a git checkout")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    sha = found.stdout.strip()
    if found.returncode != 0 or len(sha) < 40:
        detail = _last_line(found.stderr) or "unknown revision; fetch it first (fetch-depth: 0)"
        raise not_a_commit(detail)
    return Base(ref, sha, root, Path(top.stdout.strip()).resolve(), hardware)


def machine(device: str | None = None) -> dict[str, Any]:
    """What results measured here depend on, beyond the code: the hardware fingerprint of
    :func:`harness.provenance.environment` (architecture, CPU, instruction-set level, numerics
    mode and pinned variables, torch build; with ``device`` the session's accelerator), the
    machine type and core count latencies depend on, and the accelerators present (a suite may
    pick a GPU itself). Imports torch."""
    import torch

    from harness import devices
    from harness.provenance import environment

    try:
        name = devices.name(devices.resolve(device)) if device is not None else "cpu"
    except devices.DeviceError:  # collection says so, naming the option
        name = device or "cpu"
    env = environment(1, device=name)
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "hardware": env["hardware"],
        "machine": env["machine"],
        "cpu_count": env["cpu_count"],
        "accelerators": gpus,
    }


def machine_digest(info: Mapping[str, Any]) -> str:
    """12 hex digits of the canonical JSON of :func:`machine`'s answer."""
    text = json.dumps(info, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cases_of(path: Path) -> tuple[str, list[str]] | None:
    """(suite name, case names) of a suite file read as plain TOML, or None when it does not
    parse (the run reports that itself). The suite name defaults to the file's stem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    suite = data.get("suite")
    name = suite.get("name") if isinstance(suite, dict) else None
    cases = data.get("case")
    names = (
        [c["name"] for c in cases if isinstance(c, dict) and isinstance(c.get("name"), str)]
        if isinstance(cases, list)
        else []
    )
    return (name if isinstance(name, str) else path.stem), names


@dataclass(frozen=True)
class BaseRun:
    """What :func:`measure` did: the base commit, the selected cases it has results for
    (``cases``), those it has none for (``missing``: new in head, or failed in the base run),
    how many cases ran now (0: all from the cache) and how long that took."""

    base: Base
    cases: int
    missing: tuple[str, ...] = ()
    ran: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        how = "cached" if self.ran == 0 else f"ran in {self.seconds:.0f} s"
        return f"gating against base {self.base.sha12} (measured here, {self.cases} cases; {how})"


def supports(base_root: Path, option: str) -> bool:
    """Whether the base run knows ``option``: the base revision's own plugin (when its
    worktree has one) must name it; the installed harness knows every option."""
    plugin = base_root / "harness" / "plugin.py"
    if not plugin.is_file():
        return True
    try:
        return f'"{option}"' in plugin.read_text(encoding="utf-8")  # as addoption names it
    except (OSError, UnicodeDecodeError):
        return False


def _known(base_root: Path, option: str) -> bool:
    return not option.startswith("--harness-") or supports(base_root, option)


def child_environment(base_root: Path, environ: Mapping[str, str], *, sha: str) -> dict[str, str]:
    """The base run's environment: this session's (numerics pins and mode, thread variables,
    CUDA settings carry over) with the worktree first on ``PYTHONPATH``, so that its own
    ``harness/`` is imported where it has one; the base commit as ``GITHUB_SHA`` (the commit
    its baselines record); no ``PYTEST_ADDOPTS``, job summary or xdist worker variables; and
    :data:`ENV_CHILD`, so that it never measures a base itself."""
    env = {k: v for k, v in environ.items() if k not in _DROPPED}
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(base_root), *rest])
    env["GITHUB_SHA"] = sha
    env[ENV_CHILD] = "1"
    return env


def command(base: Base, targets: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    """The base run: the targets' cases regenerated into the base's baseline directory, without
    MLflow or pytest's cache, plus ``options`` (the session's numerics, device, executor,
    cache)."""
    return [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        "--harness-regen",
        "--harness-baselines",
        str(base.baselines),
        "--harness-no-mlflow",
        *options,
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(base.base_root),
        "--continue-on-collection-errors",
        "-q",
    ]


def imported_plugin(base_root: Path, env: Mapping[str, str]) -> Path | None:
    """The ``harness.plugin`` file a process with ``env`` in ``base_root`` imports."""
    code = "import sys, harness.plugin as p; sys.stdout.write(p.__file__ or '')"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=base_root,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout).resolve() if out.returncode == 0 and out.stdout else None


def _worktree(base: Base, where: str) -> None:
    """The detached worktree of the base commit, reused when it is there and clean."""
    tree = base.tree
    _git(base.toplevel, "worktree", "prune")  # worktrees whose folders were deleted
    if (tree / ".git").exists():
        head = _git(tree, "rev-parse", "HEAD").stdout.strip()
        if head == base.sha:
            dirty = _git(tree, "status", "--porcelain", "--untracked-files=no").stdout.strip()
            if dirty:
                _git(tree, "reset", "--hard", "--quiet", base.sha)
            return
    if tree.exists():  # another commit's, or a folder a crash left
        _git(base.toplevel, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
        _git(base.toplevel, "worktree", "prune")
    tree.parent.mkdir(parents=True, exist_ok=True)
    added = _git(base.toplevel, "worktree", "add", "--detach", "--quiet", str(tree), base.sha)
    if added.returncode != 0:
        raise BaseError(
            f"{where}={base.ref}: git worktree add {tree} failed "
            f"({_last_line(added.stderr) or f'exit {added.returncode}'})"
        )


def _read_marker(base: Base) -> set[str]:
    """The cases the marker says are complete; none when it is absent or not ours."""
    try:
        data = json.loads(base.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("sha") != base.sha:
        return set()
    covered = data.get("covered")
    return {c for c in covered if isinstance(c, str)} if isinstance(covered, list) else set()


def _targets(wanted: Sequence[str], all_cases: Mapping[str, list[str]]) -> list[str]:
    """Node ids to run, a whole file where every one of its cases is wanted (shorter)."""
    by_file: dict[str, list[str]] = {}
    for node in wanted:
        path, _, case = node.partition("::")
        by_file.setdefault(path, []).append(case)
    out: list[str] = []
    for path, cases in by_file.items():
        if sorted(cases) == sorted(all_cases.get(path, [])):
            out.append(path)
        else:
            out.extend(f"{path}::{c}" for c in cases)
    return out


def _run(
    base: Base, targets: Sequence[str], options: Sequence[str], env: dict[str, str], where: str
) -> float:
    """Run the base revision's ``targets`` in its worktree; the seconds it took."""
    own = base.base_root / "harness" / "plugin.py"
    if own.is_file() and imported_plugin(base.base_root, env) != own.resolve():
        raise BaseError(
            f"{where}={base.ref}: the base run would not import the base revision's own "
            f"harness ({own}); check PYTHONPATH"
        )
    base.cache.mkdir(parents=True, exist_ok=True)
    log = base.cache / LOG
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(
                command(base, targets, options),
                cwd=base.base_root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        except OSError as err:
            raise BaseError(f"{where}={base.ref}: the base run did not start ({err})") from err
    if proc.returncode not in (0, 1):  # 1: a case failed its own rules; its baseline is written
        try:
            tail = _last_line(log.read_text(encoding="utf-8", errors="replace"), "error")
        except OSError:
            tail = ""
        raise BaseError(
            f"{where}={base.ref}: the base run at {base.sha12} failed "
            f"(exit {proc.returncode}{': ' + tail if tail else ''}); its output: {log}"
        )
    return time.monotonic() - start


def measure(
    base: Base,
    cases: Sequence[str],
    *,
    options: Sequence[tuple[str, ...]] = (),
    environ: Mapping[str, str] | None = None,
    info: Mapping[str, Any] | None = None,
    where: str = "base",
    on_run: Callable[[int], None] | None = None,
) -> BaseRun:
    """Make sure the base revision's results for ``cases`` (node ids relative to the rootdir)
    are in ``base.baselines``: from the cache where the marker says they are complete, else by
    running them in the base revision's worktree (:func:`command`, :func:`child_environment`);
    one process at a time per base commit (a file lock). Cases the base revision does not have
    are left out (they report as ``new``), and so are cases whose base run wrote no baseline (a
    base case that errors); both are rerun by the next session. ``info`` (:func:`machine`) is
    recorded in the marker; ``on_run`` is called with the number of cases before a base run.
    ``options`` are ``(option, *values)`` for the base run; a ``--harness-*`` option the base
    revision does not know (:func:`supports`) is left out.

    Raises
    ------
    BaseError
        If git fails, the base run would not import the base revision's own ``harness``, or the
        base run fails as a whole (an exit status other than 0 and 1; its output is in
        ``run.log`` next to the baselines).
    """
    from filelock import FileLock

    if not cases:  # a session without suite cases: no worktree, nothing to measure
        return BaseRun(base, cases=0)
    lock = base.root / BASE_DIR / f"{base.sha12}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        _worktree(base, where)
        in_base: dict[str, list[str]] = {}
        suites: dict[str, str] = {}
        for path in dict.fromkeys(c.partition("::")[0] for c in cases):
            found = _cases_of(base.base_root / path)
            if found is not None:
                suites[path], in_base[path] = found

        def stored(node: str) -> bool:
            path, _, case = node.partition("::")
            return (base.baselines / suites[path] / f"{case}.json").is_file()

        wanted = [c for c in cases if c.partition("::")[2] in in_base.get(c.partition("::")[0], [])]
        # other sessions' cases are kept as the marker says; this one's are checked on disk
        covered = {c for c in _read_marker(base) if c.partition("::")[0] not in suites or stored(c)}
        todo = [c for c in wanted if c not in covered]
        seconds = 0.0
        if todo:
            if on_run is not None:
                on_run(len(todo))
            env = child_environment(
                base.base_root, os.environ if environ is None else environ, sha=base.sha
            )
            known = [part for o in options if _known(base.base_root, o[0]) for part in o]
            seconds = _run(base, _targets(todo, in_base), known, env, where)
            covered |= {c for c in todo if stored(c)}
            write_json_atomic(
                base.marker,
                {
                    "schema": SCHEMA,
                    "sha": base.sha,
                    "ref": base.ref,
                    "machine": dict(info) if info is not None else {},
                    "covered": sorted(covered),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
    have = [c for c in wanted if c in covered]
    return BaseRun(
        base,
        cases=len(have),
        missing=tuple(c for c in cases if c not in covered),
        ran=len(todo),
        seconds=seconds,
    )
