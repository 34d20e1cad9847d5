"""CI shards: split a session's cases over N jobs by their measured cost.

``--harness-shard K/N`` keeps the cases of shard K (1-based) of N. The assignment is greedy
longest-processing-time (LPT): cases sorted by cost (descending, then node id), each given to the
currently lightest shard (ties to the lowest index). A case's cost is its stored duration
(``baselines/durations.json``, rewritten by ``--harness-regen``), else the median of the known
durations of the cases being split (1.0 s if none is known). The result depends only on the node
ids and the durations, never on their order, a dict's order or hashing: every machine and every
xdist worker computes the same shards. Pure Python: no torch, no pytest.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness._util import HarnessError, one_line, shown, write_json_atomic

if TYPE_CHECKING:
    from harness.results import Outcome

__all__ = [
    "DURATIONS_FILE",
    "SCHEMA_VERSION",
    "SHARD_PLAN_FILE",
    "Assignment",
    "MergedReports",
    "Shard",
    "ShardError",
    "ShardPlan",
    "ShardReports",
    "assign",
    "load_durations",
    "merge_durations",
    "merge_reports",
    "read_shard",
    "save_durations",
]

DURATIONS_FILE = "durations.json"  # in the baseline directory: baselines/durations.json
SCHEMA_VERSION = 1
DEFAULT_COST = 1.0  # seconds, for every case when no duration is known at all
DURATIONS_MAX_BYTES = 16 * 1024 * 1024
_SHARD = re.compile(r"(\d{1,9})/(\d{1,9})")


class ShardError(HarnessError):
    """A bad shard value or durations file: one line naming where it came from."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"{self}: N must be at least 1")
        if not 1 <= self.index <= self.count:
            raise ShardError(f"{self}: K must be between 1 and N")

    @classmethod
    def parse(cls, value: str, where: str = "--harness-shard") -> Shard:
        """``"K/N"`` as a shard; ``where`` names the value's origin in the error.

        Raises
        ------
        ShardError
            ``{where}={value}: ...`` when it is not two integers ``1 <= K <= N``.
        """
        text = str(value).strip()
        match = _SHARD.fullmatch(text)
        if match is None:
            raise ShardError(
                f"{where}={one_line(str(value))}: must be K/N, two integers with 1 <= K <= N "
                "(e.g. 1/3)"
            )
        index, count = int(match[1]), int(match[2])
        if count < 1:
            raise ShardError(f"{where}={text}: N must be at least 1")
        if not 1 <= index <= count:
            raise ShardError(f"{where}={text}: K must be between 1 and N")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Assignment:
    """Which shard runs each case. ``shard_of``: node id -> shard index (1-based);
    ``costs``: node id -> the cost it was assigned by; ``estimated``: the node ids whose cost is
    the median rule's (no stored duration); ``loads``: the summed cost per shard (index 0 is
    shard 1)."""

    count: int
    shard_of: Mapping[str, int]
    costs: Mapping[str, float]
    estimated: frozenset[str]
    loads: tuple[float, ...]

    def members(self, index: int) -> list[str]:
        """The node ids of shard ``index`` (1-based), sorted."""
        return sorted(n for n, k in self.shard_of.items() if k == index)

    @property
    def makespan(self) -> float:
        """The load of the heaviest shard."""
        return max(self.loads, default=0.0)


def _fallback_cost(known: Iterable[float]) -> float:
    values = sorted(known)
    return statistics.median(values) if values else DEFAULT_COST


def cost_of(node_ids: Iterable[str], durations: Mapping[str, float]) -> dict[str, float]:
    """The cost of every node id: its stored seconds, else the median of the stored seconds of
    the others given (1.0 s if none has one)."""
    ids = sorted(set(node_ids))
    known = {n: float(durations[n]) for n in ids if n in durations}
    fallback = _fallback_cost(known.values())
    return {n: known.get(n, fallback) for n in ids}


def assign(
    node_ids: Iterable[str], count: int, durations: Mapping[str, float] | None = None
) -> Assignment:
    """Split ``node_ids`` over ``count`` shards by greedy LPT on their cost.

    Parameters
    ----------
    node_ids
        The cases' node ids (``suites/digits_mlp.toml::magnitude-90``); order and duplicates do
        not matter.
    count
        N, the number of shards (>= 1).
    durations
        Stored seconds per node id; ids not in it cost the median of those that are (1.0 s if
        none is).

    Returns
    -------
    Assignment
        The shard of every case. LPT's makespan is at most 4/3 of the optimum.
    """
    if count < 1:
        raise ShardError(f"shards: N = {count}: must be at least 1")
    ids = sorted(set(node_ids))
    durations = durations or {}
    known = {n: float(durations[n]) for n in ids if n in durations}
    costs = cost_of(ids, durations)
    heap = [(0.0, k) for k in range(count)]  # (load, index): the lightest, then the lowest
    loads = [0.0] * count
    shard_of: dict[str, int] = {}
    for node in sorted(ids, key=lambda n: (-costs[n], n)):
        load, k = heapq.heappop(heap)
        shard_of[node] = k + 1
        loads[k] = load + costs[node]
        heapq.heappush(heap, (loads[k], k))
    return Assignment(
        count=count,
        shard_of=shard_of,
        costs=costs,
        estimated=frozenset(n for n in ids if n not in known),
        loads=tuple(loads),
    )


@dataclass(frozen=True)
class ShardPlan:
    """What one shard runs: its cases (node ids) out of ``total``, their estimated seconds, and
    how many of them had no stored duration (costed at ``fallback`` seconds each). Travels from
    xdist workers to the controller and into the report directory as a plain dict."""

    shard: Shard
    cases: tuple[str, ...]
    total: int
    seconds: float
    estimated: int = 0
    fallback: float = DEFAULT_COST
    deselected: int = 0  # items this shard dropped (cases of other shards, other tests)

    @classmethod
    def of(cls, shard: Shard, assignment: Assignment, *, deselected: int = 0) -> ShardPlan:
        """Shard ``shard`` of ``assignment``."""
        if shard.count != assignment.count:
            raise ShardError(f"{shard}: the assignment has {assignment.count} shards")
        cases = tuple(assignment.members(shard.index))
        guessed = [n for n in cases if n in assignment.estimated]
        return cls(
            shard=shard,
            cases=cases,
            total=len(assignment.shard_of),
            seconds=assignment.loads[shard.index - 1],
            estimated=len(guessed),
            fallback=assignment.costs[guessed[0]] if guessed else DEFAULT_COST,
            deselected=deselected,
        )

    def line(self) -> str:
        """``prune-harness: shard K/N: M of T cases (estimated S s)``, and how many of its
        cases have no stored duration."""
        text = (
            f"prune-harness: shard {self.shard}: {len(self.cases)} of {self.total} cases "
            f"(estimated {_secs(self.seconds)} s)"
        )
        if self.estimated:
            text += (
                f"; {self.estimated} without a stored duration ({DURATIONS_FILE}), "
                f"costed at {_secs(self.fallback)} s each"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": str(self.shard),
            "cases": list(self.cases),
            "total": self.total,
            "seconds": self.seconds,
            "estimated": self.estimated,
            "fallback": self.fallback,
            "deselected": self.deselected,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "shard plan") -> ShardPlan:
        """The plan ``to_dict`` wrote; one :class:`ShardError` line naming ``where`` if not."""
        try:
            shard = Shard.parse(str(data["shard"]), f"{where}: shard")
            cases = tuple(str(c) for c in data["cases"])
            return cls(
                shard=shard,
                cases=cases,
                total=int(data["total"]),
                seconds=float(data["seconds"]),
                estimated=int(data.get("estimated", 0)),
                fallback=float(data.get("fallback", DEFAULT_COST)),
                deselected=int(data.get("deselected", 0)),
            )
        except ShardError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ShardError(f"{where}: not a shard plan ({type(err).__name__}: {err})") from err


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def load_durations(path: Path) -> dict[str, float]:
    """The stored seconds per case node id in ``path`` ({} when the file does not exist).

    Raises
    ------
    ShardError
        One line naming the file, key and value when it is unreadable or malformed.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ShardError(f"{path}: cannot be read ({err.strerror or err})") from err
    if size > DURATIONS_MAX_BYTES:
        raise ShardError(f"{path}: {size} bytes, more than {DURATIONS_MAX_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ShardError(f"{path}: not valid JSON ({one_line(str(err))[:160]})") from err
    if not isinstance(data, dict):
        raise ShardError(f"{path}: must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ShardError(
            f"{path}: schema_version = {shown(version)}: this harness reads {SCHEMA_VERSION}"
        )
    cases = data.get("cases")
    if not isinstance(cases, dict):
        raise ShardError(f"{path}: cases = {shown(cases)}: must be an object of node id -> seconds")
    out: dict[str, float] = {}
    for node, seconds in cases.items():
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ShardError(
                f"{path}: cases.{one_line(node)[:200]} = {shown(seconds)}: must be seconds >= 0"
            )
        out[node] = float(seconds)
    return out


def save_durations(path: Path, durations: Mapping[str, float]) -> None:
    """Write ``durations`` to ``path`` atomically (a temporary file, then ``os.replace``), as
    ``{"schema_version": 1, "cases": {node id: seconds}}`` with sorted keys and indent 2."""
    write_json_atomic(path, {"schema_version": SCHEMA_VERSION, "cases": _rounded(durations)})


def _rounded(durations: Mapping[str, float]) -> dict[str, float]:
    """Milliseconds are plenty for a cost, and keep the committed file's diffs small."""
    return {n: round(float(s), 3) for n, s in sorted(durations.items())}


def merge_durations(path: Path, measured: Mapping[str, float]) -> dict[str, float]:
    """Add ``measured`` (node id -> seconds of the cases just run) to the durations in
    ``path``, keeping every other entry, and write the file; returns what was written.

    Raises
    ------
    ShardError
        If the existing file is malformed (it is then left as it is).
    OSError
        If the file cannot be written.
    """
    durations = _rounded({**load_durations(path), **measured})
    save_durations(path, durations)
    return durations


# --- merging the shards' report directories (prune-harness merge-reports) ---------------------

SHARD_PLAN_FILE = "shard.json"  # in a shard's report directory: its ShardPlan
CASE_REPORT = "report.json"  # in each case folder <suite>__<case>/ of a report directory
REPORT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ShardReports:
    """The case reports of one shard's report directory (``--harness-report``), with its
    plan (``shard.json``) when it was a shard. ``cases``: (case folder, outcome)."""

    directory: Path
    plan: ShardPlan | None
    cases: tuple[tuple[Path, Outcome], ...]

    def unreported(self) -> list[str]:
        """Node ids the shard selected but reported no result for (the case crashed, or its
        job was cut off): one line each."""
        if self.plan is None:
            return []
        reported = [(Path(o.source).as_posix(), o.result.case) for _, o in self.cases]

        def found(node: str) -> bool:
            path, _, case = node.partition("::")
            return any(
                c == case and (source == path or source.endswith(f"/{path}"))
                for source, c in reported
            )

        return [
            f"{node}: selected by shard {self.plan.shard} ({self.directory}) but no result "
            "reported (see that shard's log)"
            for node in self.plan.cases
            if not found(node)
        ]


@dataclass(frozen=True)
class MergedReports:
    """Every case of the shards once, sorted by suite and case. ``folders``: each outcome's
    case folder in its shard's directory; ``unreported``: cases a shard selected but did not
    report (they did not pass)."""

    shards: tuple[ShardReports, ...]
    outcomes: tuple[Outcome, ...]
    folders: tuple[Path, ...]
    unreported: tuple[str, ...]


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > REPORT_MAX_BYTES:
            raise ShardError(f"{path}: {size} bytes, more than {REPORT_MAX_BYTES}")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ShardError(f"{path}: cannot be read ({err.strerror or err})") from err
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ShardError(f"{path}: not valid JSON ({one_line(str(err))[:160]})") from err


def read_shard(directory: Path) -> ShardReports:
    """One report directory: its case folders' ``report.json`` and its ``shard.json``.

    Raises
    ------
    ShardError
        One line naming the directory or file: missing, not a directory, unreadable, not a
        case report.
    """
    from harness.results import Outcome

    if not directory.exists():
        raise ShardError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise ShardError(f"{directory}: not a directory")
    plan = None
    if (directory / SHARD_PLAN_FILE).is_file():
        path = directory / SHARD_PLAN_FILE
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ShardError(f"{path}: not a shard plan (a JSON {type(data).__name__})")
        plan = ShardPlan.from_dict(data, str(path))
    cases = []
    try:
        folders = sorted(p for p in directory.iterdir() if (p / CASE_REPORT).is_file())
    except OSError as err:
        raise ShardError(f"{directory}: cannot be listed ({err.strerror or err})") from err
    for folder in folders:
        path = folder / CASE_REPORT
        data = _read_json(path)
        try:
            outcome = Outcome.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ShardError(
                f"{path}: not a case report ({type(err).__name__}: {one_line(str(err))[:160]})"
            ) from err
        cases.append((folder, outcome))
    return ShardReports(directory, plan, tuple(cases))


def merge_reports(directories: Iterable[Path]) -> MergedReports:
    """The shards' report directories as one set of cases.

    Raises
    ------
    ShardError
        One line on bad input: a directory missing or unreadable, no case report at all, a
        case in two directories with different results, shards of different N, a shard given
        twice or missing.
    """
    shards = [read_shard(Path(d)) for d in directories]
    seen: dict[tuple[str, str], tuple[Path, Outcome, Path]] = {}
    for shard in shards:
        for folder, outcome in shard.cases:
            key = (outcome.result.suite, outcome.result.case)
            if key in seen:
                other_dir, other, _ = seen[key]
                if _same(other, outcome):
                    continue  # the same result twice (a directory given twice, a copy)
                raise ShardError(
                    f"{key[0]}::{key[1]}: in {other_dir} and {shard.directory} with different "
                    "results"
                )
            seen[key] = (shard.directory, outcome, folder)
    if not seen:
        raise ShardError(
            f"{', '.join(str(s.directory) for s in shards)}: no case reports "
            f"(<suite>__<case>/{CASE_REPORT}); give the shards' --harness-report directories"
        )
    _check_plans(shards)
    keys = sorted(seen)
    return MergedReports(
        shards=tuple(shards),
        outcomes=tuple(seen[k][1] for k in keys),
        folders=tuple(seen[k][2] for k in keys),
        unreported=tuple(line for s in shards for line in s.unreported()),
    )


def _same(a: Outcome, b: Outcome) -> bool:
    """The same result, wherever its files were written."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("artifacts", None)
    db.pop("artifacts", None)
    return bool(da == db)


def _check_plans(shards: Iterable[ShardReports]) -> None:
    """Shards of one split: the same N, each K once, none missing."""
    plans = [(s.directory, s.plan) for s in shards if s.plan is not None]
    if not plans:
        return
    counts = sorted({p.shard.count for _, p in plans})
    if len(counts) > 1:
        shown_plans = ", ".join(f"{d}: {p.shard}" for d, p in plans)
        raise ShardError(f"shards of different splits ({shown_plans}): give the shards of one")
    by_index: dict[int, Path] = {}
    for directory, plan in plans:
        if plan.shard.index in by_index and by_index[plan.shard.index] != directory:
            raise ShardError(
                f"shard {plan.shard} given twice: {by_index[plan.shard.index]} and {directory}"
            )
        by_index[plan.shard.index] = directory
    count = counts[0]
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in by_index]
    if missing:
        raise ShardError(
            f"shard {', '.join(missing)} missing (given: "
            f"{', '.join(f'{k}/{count}' for k in sorted(by_index))}): merge every shard's "
            "report directory"
        )
