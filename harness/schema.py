"""The one validation machinery for specs: frozen dataclasses whose fields declare their type
(from the annotation) and their check (``option(check=...)``), validated in ``__post_init__``
however they are built (from a TOML table, in Python, by ``dataclasses.replace``).

Every problem is a :class:`SpecError`: one line ``source: key = value: problem``. Suites use it
(:mod:`harness.spec`), and so do the per-method argument dataclasses of :mod:`harness.pruning`.
This module imports nothing of the ML stack.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, get_args, get_origin

from harness._util import HarnessError, one_line, shown

Check = Callable[[Any], "str | None"]


class Marker(str):
    """A placeholder shown as is in messages (``<missing>``), unlike user values (repr'd)."""


MISSING = Marker("<missing>")


class SpecError(HarnessError):
    """A suite file (or a spec built in Python) is invalid; ``str()`` is one line for the user."""

    def __init__(self, source: str, key: str, value: Any, problem: str) -> None:
        self.source, self.key, self.value, self.problem = source, key, value, problem
        text = str(value) if isinstance(value, Marker) else shown(value)
        text = f"{source}: {one_line(key)} = {text}: {one_line(problem)}"
        super().__init__(text)


def option(default: Any = dataclasses.MISSING, *, check: Check | None = None, **kw: Any) -> Any:
    """A spec field with a default and a check (``None`` or the problem with a value). A
    required field is ``dataclasses.field(metadata=checked(check))`` (type checkers know
    ``field`` without a default means required)."""
    return dataclasses.field(default=default, metadata=checked(check), **kw)


def checked(check: Check | None) -> dict[str, Any]:
    """Field metadata declaring ``check``."""
    return {"check": check} if check is not None else {}


# Where the dataclass being built comes from: (source, key prefix). Python code builds with the
# default, so its errors read ``<python>: TrainSpec.epochs = 0: must be > 0``.
_WHERE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "harness_spec_where", default=None
)


@contextmanager
def located(source: str, path: str) -> Iterator[None]:
    """Validation errors of dataclasses built inside name ``source`` and keys below ``path``."""
    token = _WHERE.set((source, path))
    try:
        yield
    finally:
        _WHERE.reset(token)


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table",
    list: "an array",
}


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(hint))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in get_args(hint) if a is not type(None))
    if origin in (tuple, list):
        return "an array"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a table"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(hint: Any, value: Any) -> tuple[Any, str | None]:
    """``value`` as the annotation ``hint`` wants it (ints become floats for float fields, lists
    tuples for tuple fields), or the problem with it."""
    origin = get_origin(hint)
    if hint is Any:
        return value, None
    if origin in (types.UnionType, typing.Union):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None, None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            out, problem = coerce(arg, value)
            if problem is None:
                return out, None
            problems.append(problem)
        return value, problems[0] if len(problems) == 1 else f"must be {_describe(hint)}"
    if origin is Literal:
        options = get_args(hint)
        if isinstance(value, str) and value in options:
            return value, None
        # other options (Literal[1, 2]) match by type too: true is not 1, 2.0 is not 2
        if any(type(value) is type(o) and value == o for o in options if not isinstance(o, str)):
            return value, None
        return value, f"must be one of {', '.join(str(o) for o in options)}"
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list | tuple):
            return value, "must be an array"
        item = args[0] if args else Any
        out = []
        for v in value:
            c, problem = coerce(item, v)
            if problem is not None:
                return value, f"must be an array of {_describe(item).removeprefix('a ')}s"
            out.append(c)
        return tuple(out), None
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return value, "must be a table"
        return value, None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return value, None if isinstance(value, hint) else f"must be a {hint.__name__}"
    if hint is bool:
        return value, None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, None if ok else "must be an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, "must be a number"
        if isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:
                return value, "must be finite"
        return value, None if math.isfinite(value) else "must be finite"
    if hint is str:
        return value, None if isinstance(value, str) else "must be a string"
    return value, None if isinstance(value, hint) else f"must be {_describe(hint)}"


def validate(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` (type, then its declared check), normalize
    values in place (int -> float, list -> tuple), then its cross-field ``problems()``.

    Raises
    ------
    SpecError
        The first problem, at the location set by :func:`located` (``<python>`` otherwise).
    """
    where = _WHERE.get()
    source, path = where if where is not None else ("<python>", type(obj).__name__)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out, problem = coerce(hints(type(obj))[f.name], value)
        if problem is None and (check := f.metadata.get("check")) is not None and out is not None:
            problem = check(out)
        if problem is not None:
            raise SpecError(source, _key(path, f.name), value, problem)
        if out is not value:
            object.__setattr__(obj, f.name, out)
    problems = getattr(obj, "problems", None)
    for key, value, problem in problems() if problems is not None else ():
        raise SpecError(source, _key(path, key), value, problem)


class Table:
    """A TOML table being read: typed ``take`` calls, then ``done`` rejects unknown keys."""

    def __init__(self, data: Any, source: str, path: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(source, path, data, "must be a table")
        self.data, self.source, self.path = dict(data), source, path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return _key(self.path, name)

    def fail(self, name: str, value: Any, problem: str) -> SpecError:
        return SpecError(self.source, self.key(name), value, problem)

    def take(self, name: str, hint: Any, default: Any = ..., check: Check | None = None) -> Any:
        """The value of ``name`` as ``hint`` (an annotation) wants it, checked by ``check``."""
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise SpecError(self.source, self.key(name), MISSING, "required key")
            return default
        value, problem = coerce(hint, self.data[name])
        if problem is None and check is not None and value is not None:
            problem = check(value)
        if problem is not None:
            raise self.fail(name, self.data[name], problem)
        return value

    def take_field(self, cls: type, name: str, key: str | None = None, default: Any = ...) -> Any:
        """The value of ``cls``'s field ``name`` (TOML key ``key``): its annotation, its check,
        and its default unless ``default`` is given."""
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        if default is ...:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
        return self.take(key or name, hints(cls)[name], default, f.metadata.get("check"))

    def sub(self, name: str) -> Table:
        self.seen.add(name)
        return Table(self.data.get(name, {}), self.source, self.key(name))

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                raise self.fail(name, self.data[name], "unknown key")

    def build(self, cls: type, defaults: Any = None, **given: Any) -> Any:
        """An instance of the spec dataclass ``cls`` from this table: every field not in
        ``given`` is read by :meth:`take_field` (defaults from ``defaults``, an instance, if
        given), unknown keys refused, cross-field problems named with this table's keys."""
        values = dict(given)
        for f in dataclasses.fields(cls):
            if f.name in values or not f.init:
                continue
            default = getattr(defaults, f.name) if defaults is not None else ...
            values[f.name] = self.take_field(cls, f.name, default=default)
        self.done()
        with located(self.source, self.path):
            return cls(**values)


def from_dict(cls: type, data: Any, *, source: str, path: str, defaults: Any = None) -> Any:
    """Build the spec dataclass ``cls`` from a dict (a TOML table), validated."""
    return Table(data, source, path).build(cls, defaults)
