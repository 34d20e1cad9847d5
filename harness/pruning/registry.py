"""Name registry of pruning techniques (the names used in suite files)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from harness.pruning.base import Pruner
    from harness.spec import PruneSpec

_REGISTRY: dict[str, type[Pruner]] = {}
_BUILTIN_MODULES = (
    "harness.pruning.magnitude",
    "harness.pruning.structured",
    "harness.pruning.taylor",
    "harness.pruning.snip",
    "harness.pruning.regularized",
    "harness.pruning.student",
    "harness.pruning.obd",
)
P = TypeVar("P", bound="type[Pruner]")


def register(cls: P) -> P:
    """Class decorator: make a :class:`Pruner` available under ``cls.name``."""
    old = _REGISTRY.get(cls.name)
    if old is not None and _qualname(old) != _qualname(cls):  # a re-import replaces itself
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_builtins() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> type[Pruner]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown pruning method {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def create(spec: PruneSpec) -> Pruner:
    return get(spec.method)(spec)
