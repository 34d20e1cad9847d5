"""Pruning techniques behind one small interface (:class:`Pruner`) and a name registry."""

from harness.pruning.base import PruneContext, Pruner, prunable_modules
from harness.pruning.registry import create, get, names, register

__all__ = ["PruneContext", "Pruner", "create", "get", "names", "prunable_modules", "register"]
