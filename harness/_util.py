"""Small shared rules with no dependencies."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any


class HarnessError(ValueError):
    """A problem with what the user gave (a suite, a model, data, a baseline) or with where
    results go: its message is one line naming the file, key and value. The plugin prints it as
    the case's failure, the CLI as one line with exit code 2; anything else is a bug."""


def one_line(text: str) -> str:
    """``text`` with line breaks escaped: a message stays one line whatever a file holds."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def shown(value: object, limit: int = 160) -> str:
    """How a user's value appears in a message: ``repr``, cut to ``limit`` characters (a
    hostile file may hold huge values: a 5,000-digit integer, deep nesting)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


NAME_MAX = 100  # characters: leaves room for ".json" and a temporary file's prefix and suffix
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = (
    f"a letter or digit, then letters, digits, '-', '_', '.' (at most {NAME_MAX} characters)"
)


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a suite or a case (a file and directory under ``baselines/``),
    or None. One rule for both: it cannot be ``.``, ``..``, hidden, an option (``-k``) or too
    long for a file name, so a name never leaves its directory."""
    if not _NAME.fullmatch(value) or len(value) > NAME_MAX:
        return f"use {NAME_RULE}"
    return None


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by
    ``***``: for every URI the harness prints, logs or stores."""
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: a temporary file next to it (created like any
    other file, so the umask applies; its name starts with "." and ends with ".tmp"), synced,
    then renamed over it. On any error the temporary file is removed and the error raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that got us here
            tmp.unlink(missing_ok=True)
        raise


class BudgetError(HarnessError):
    """A case ran past its time budget."""


_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("harness_deadline", default=None)


@contextmanager
def time_budget(seconds: float | None, *, total: float | None = None) -> Iterator[None]:
    """Within the block, :func:`check_budget` raises :class:`BudgetError` once ``seconds``
    have passed (None: no budget). ``total`` is the budget's whole length, for the message, when
    ``seconds`` is what is left of it (a fold job in a worker)."""
    if seconds is None:
        token = _DEADLINE.set(None)
    else:
        token = _DEADLINE.set((time.monotonic() + seconds, seconds if total is None else total))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_budget(where: str) -> None:
    """Raise :class:`BudgetError` if the current time budget is spent; ``where`` says what was
    running (training loops and the fold loop call it)."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise BudgetError(
            f"ran past its time budget of {deadline[1]:g} s ({where}); raise time_budget "
            "(suite key or --harness-time-budget) or make the case smaller"
        )


def add_import_path(directory: Path) -> None:
    """Put ``directory`` first on ``sys.path`` (once), so user modules next to a suite file or in
    the project's root import under plain ``pytest``, as pytest does for a rootdir conftest."""
    import sys

    entry = str(Path(directory).resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def import_callable(ref: str) -> Callable[..., Any]:
    """Import ``"module:callable"``; raises ``ImportError``/``AttributeError``/``ValueError``."""
    import importlib

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError('must look like "module:callable"')
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref} is not callable")
    return obj


def import_user_callable(ref: str, what: str, error: type[HarnessError]) -> Callable[..., Any]:
    """:func:`import_callable` for a user's ``what`` ("model", "dataset"): every failure is one
    line raised as ``error``."""
    try:
        return import_callable(ref)
    except ImportError as err:
        raise error(f"{what} module does not import ({err})") from err
    except AttributeError as err:
        raise error(f"no such callable ({err})") from err
    except ValueError as err:
        raise error(str(err)) from err
    except Exception as err:  # a user module that raises on import
        raise error(f"{what} module failed on import ({type(err).__name__}: {err})") from err


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as sorted, indented JSON to ``path`` atomically (write_text_atomic)."""
    write_text_atomic(path, json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n")
