"""Name registry of pruning techniques (the names used in suite files)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from harness.pruning.base import Pruner
    from harness.spec import PruneSpec

_REGISTRY: dict[str, type[Pruner]] = {}
_BUILTIN_MODULES = ("harness.pruning.magnitude", "harness.pruning.structured")
P = TypeVar("P", bound="type[Pruner]")


def register(cls: P) -> P:
    """Class decorator: make a :class:`Pruner` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


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
        raise KeyError(f"unknown pruning method {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def create(spec: PruneSpec) -> Pruner:
    return get(spec.method)(spec)
