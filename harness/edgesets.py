"""Edge-case set declarations: the syntax (``KIND``, ``KIND:PARAM``, ``npz:PATH``), the
parameter rules and the metric-safe names, without the generators (:mod:`harness.data.edge`
builds the sets). Part of the torch-free core: a suite's edge sets are checked structurally
here, against the dataset in :mod:`harness.resolution`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harness.metricnames import EDGE_SET_NAME


class KindInfo(NamedTuple):
    """What a kind accepts: ``(data_kinds, default, description)``."""

    data_kinds: tuple[str, ...]
    default: float | None
    description: str


FLOAT_DATA = ("tabular", "image", "signal")  # perturbations need real-valued inputs
ALL_DATA = (*FLOAT_DATA, "tokens")
GRID_DATA = ("image", "signal")
TOKEN_DATA = ("tokens",)
PATH_KINDS = ("npz", "csv")
NAME_RE = EDGE_SET_NAME


@dataclass(frozen=True)
class EdgeSet:
    """One declared edge set, parsed from a string in the suite file.

    Attributes
    ----------
    kind : str
        A key of :data:`KIND_INFO` (``"gaussian_noise"``, ``"npz"``, ...).
    param : float or None
        The parameter as written; None when none was written (the kind's default applies).
    path : str or None
        The file of a ``npz:PATH`` / ``csv:PATH`` set, as written; None for other kinds.
    """

    kind: str
    param: float | None = None
    path: str | None = None

    @property
    def name(self) -> str:
        """Metric-safe, stable name (``^[a-z0-9_.]+$``), e.g. ``gaussian_noise_0.1``."""
        if self.path is not None:
            stem = re.sub(r"[^a-z0-9_.]+", "_", Path(self.path).stem.lower()) or "_"
            return f"{self.kind}_{stem}"
        if self.param is None:
            return self.kind
        return f"{self.kind}_{_format_param(self.param)}"

    @property
    def text(self) -> str:
        """The canonical suite-file form; ``parse_edge(edge.text) == edge``."""
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        if self.param is None:
            return self.kind
        return f"{self.kind}:{self.param!r}"

    @property
    def value(self) -> float | None:
        """The effective parameter: ``param``, or the kind's default when none was written."""
        return self.param if self.param is not None else KIND_INFO[self.kind].default


def _format_param(value: float) -> str:
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text.replace("-", "m").replace("+", "")


KIND_INFO: dict[str, KindInfo] = {
    "gaussian_noise": KindInfo(FLOAT_DATA, 0.1, "add N(0, sigma) noise in scaled units"),
    "feature_dropout": KindInfo(
        FLOAT_DATA, 0.2, "set each value to the training mean with probability p"
    ),
    "extremes": KindInfo(FLOAT_DATA, 5.0, "multiply scaled values by scale (out of range)"),
    "scale_drift": KindInfo(FLOAT_DATA, 1.5, "multiply every scaled feature by factor"),
    "shift_drift": KindInfo(FLOAT_DATA, 0.5, "add delta to every scaled feature"),
    "shift": KindInfo(GRID_DATA, 1.0, "translate images/signals by pixels, zero fill"),
    "blur": KindInfo(GRID_DATA, 1.0, "gaussian blur with sigma pixels"),
    "occlusion": KindInfo(GRID_DATA, 0.25, "zero a random contiguous patch covering fraction"),
    "contrast": KindInfo(GRID_DATA, 0.5, "scale each sample around its mean by factor"),
    "minority": KindInfo(
        ALL_DATA, 0.3, "samples of the rarest classes covering fraction of classes"
    ),
    "hardest": KindInfo(ALL_DATA, 0.1, "the fraction of samples with the smallest dense margin"),
    "imbalanced": KindInfo(ALL_DATA, 10.0, "resample to class frequencies falling 1 .. 1/ratio"),
    "npz": KindInfo(ALL_DATA, None, "user file with arrays X, y (npz:PATH)"),
    "csv": KindInfo(FLOAT_DATA, None, "user file, label last (csv:PATH)"),
    "token_dropout": KindInfo(TOKEN_DATA, 0.1, "replace each token by id 0 with probability p"),
    "truncate": KindInfo(TOKEN_DATA, 0.5, "keep the first fraction of each sequence, pad the rest"),
    "substitute": KindInfo(TOKEN_DATA, 0.1, "replace each token by a random id with probability p"),
}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _at_least(low: float, what: str) -> Callable[[float], str | None]:
    return lambda v: None if v >= low else f"{what} must be >= {low:g}"


def _positive(what: str) -> Callable[[float], str | None]:
    return lambda v: None if v > 0 else f"{what} must be > 0"


def _fraction(what: str, closed_low: bool) -> Callable[[float], str | None]:
    if closed_low:
        return lambda v: None if 0 <= v <= 1 else f"{what} must be in [0, 1]"
    return lambda v: None if 0 < v <= 1 else f"{what} must be in (0, 1]"


def _integer(what: str) -> Callable[[float], str | None]:
    return lambda v: None if v == int(v) else f"{what} must be a whole number"


PARAM_MAX = 1e6  # any parameter: beyond it inputs overflow float32 (standardized units)
PARAM_RULES: dict[str, Callable[[float], str | None]] = {
    "gaussian_noise": _at_least(0, "sigma"),
    "feature_dropout": _fraction("probability p", closed_low=True),
    "extremes": _positive("scale"),
    "scale_drift": _positive("factor"),
    "shift_drift": lambda v: None,
    "shift": _integer("pixels"),
    "blur": _at_least(0, "sigma"),
    "occlusion": _fraction("fraction", closed_low=False),
    "contrast": _at_least(0, "factor"),
    "minority": _fraction("fraction", closed_low=False),
    "hardest": _fraction("fraction", closed_low=False),
    "imbalanced": _at_least(1, "ratio"),
    "token_dropout": _fraction("probability p", closed_low=True),
    "truncate": _fraction("fraction", closed_low=False),
    "substitute": _fraction("probability p", closed_low=True),
}


def known_kinds() -> str:
    """The accepted forms, comma-separated, for messages."""
    return ", ".join(f"{k}:PATH" if k in PATH_KINDS else k for k in KIND_INFO)


def parse_edge(text: str) -> EdgeSet:
    """Parse ``KIND``, ``KIND:PARAM`` or ``npz:PATH`` / ``csv:PATH``.

    Parameters
    ----------
    text : str
        The string from the suite file, e.g. ``"gaussian_noise:0.1"``, ``"extremes"``,
        ``"npz:edge/hard.npz"``.

    Returns
    -------
    EdgeSet
        With ``param`` None when no parameter is written.

    Raises
    ------
    ValueError
        One line naming the text, the problem and the known kinds.
    """

    def fail(problem: str) -> ValueError:
        return ValueError(f"edge set {text!r}: {problem} (known: {known_kinds()})")

    if not isinstance(text, str):
        raise fail("must be a string")
    kind, colon, rest = text.strip().partition(":")
    kind, rest = kind.strip(), rest.strip()
    if kind not in KIND_INFO:
        raise fail(f"unknown kind {kind!r}")
    if kind in PATH_KINDS:
        if not rest:
            raise fail(f"{kind} needs a file path ({kind}:PATH)")
        return EdgeSet(kind, None, rest)
    if not colon:
        return EdgeSet(kind)
    number = _number(rest) if rest else None
    if number is None:
        raise fail(f"parameter {rest!r} is not a finite number")
    if abs(number) > PARAM_MAX:
        raise fail(f"parameter {rest!r}: at most {PARAM_MAX:g} in magnitude (the harness's bound)")
    problem = PARAM_RULES[kind](number)
    if problem:
        raise fail(f"{kind}: {problem}")
    return EdgeSet(kind, number + 0.0)  # -0.0 -> 0.0: one name per value
