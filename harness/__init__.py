"""prune-harness: prune PyTorch models and gate CI on their quality.

Importing the package pins the numeric code paths of this process (portable numerics, see
:mod:`harness.numerics`) before torch is imported, unless ``PRUNE_HARNESS_NUMERICS=native``.

The public API, importable from here (each name loads its module on first use, so
``import harness`` stays light)::

    from harness import load_suite, resolve, run_case, evaluate, check_case

- specs: :func:`load_suite`, :func:`suite_from_dict`, :class:`SuiteSpec`, :class:`CaseSpec`,
  :class:`PruneSpec`, :class:`TrainSpec`, :class:`RuleSpec`, :class:`SpecError`;
  :func:`resolve` checks a spec against its data, model and methods;
- running: :func:`run_case`, :class:`DenseCache`;
- results and judging: :class:`CaseResult`, :class:`MetricSummary`, :class:`Verdict`,
  :class:`Status`, :class:`Outcome`, :func:`evaluate`, :class:`Baseline`,
  :class:`BaselineStore`, :class:`MetricRef`;
- a session: :func:`check_case`, :class:`Settings`.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness import numerics as _numerics

_numerics.configure()

__version__ = "0.1.0"

_EXPORTS = {
    "load_suite": "harness.spec",
    "suite_from_dict": "harness.spec",
    "SuiteSpec": "harness.spec",
    "CaseSpec": "harness.spec",
    "PruneSpec": "harness.spec",
    "TrainSpec": "harness.spec",
    "RuleSpec": "harness.spec",
    "SpecError": "harness.spec",
    "resolve": "harness.resolution",
    "run_case": "harness.runner",
    "DenseCache": "harness.runner",
    "CaseResult": "harness.results",
    "MetricSummary": "harness.results",
    "Verdict": "harness.results",
    "Status": "harness.results",
    "Outcome": "harness.results",
    "MetricRef": "harness.metricnames",
    "evaluate": "harness.gate",
    "Baseline": "harness.baseline",
    "BaselineStore": "harness.baseline",
    "check_case": "harness.session",
    "Settings": "harness.session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
