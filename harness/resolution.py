"""Resolution: a structurally valid spec (:mod:`harness.spec`) checked against the real things it
names: the dataset loads, the model factory imports and builds for it, the folds fit the
smallest class, rule classes exist, edge sets suit the data (user files load), each case's method
exists and its arguments fit the method's ``Args``, and ``ignore`` names real layers. The suite
file's directory goes first on ``sys.path`` (user modules next to it import).

Every problem is one :class:`~harness.spec.SpecError` line naming the suite file and the key, as
for structural problems. This is the step that imports the ML stack; faces call it when they
collect a suite, and :func:`harness.runner.run_case` before it runs one.
"""

from __future__ import annotations

from typing import Any

from harness._util import add_import_path
from harness.edgesets import parse_edge
from harness.metricnames import rule_target
from harness.spec import RULE_KEYS, CaseSpec, RuleSpec, SpecError, SuiteSpec

__all__ = ["resolve"]


def resolve(suite: SuiteSpec) -> SuiteSpec:
    """Check ``suite`` against its dataset, model, methods and edge sets; returns it.

    Raises
    ------
    SpecError
        The first problem, naming ``suite.source`` and the key.
    """
    import numpy as np

    from harness import inputs
    from harness.data import load_dataset
    from harness.data import registry as data_registry
    from harness.data.edge import check_edge
    from harness.models import ModelError, build, probe
    from harness.models import resolve as import_model

    source, base = suite.source, suite.base_dir
    if not source.startswith("<"):  # a suite file: user modules next to it import
        add_import_path(base)

    def fail(key: str, value: Any, problem: str) -> SpecError:
        return SpecError(source, key, value, problem)

    from harness.devices import DeviceError
    from harness.devices import resolve as resolve_device

    try:
        resolve_device(suite.device)
    except DeviceError as err:
        said = str(err).partition(": ")[2] or str(err)
        raise fail("suite.device", suite.device, said) from None
    if (problem := data_registry.check(suite.dataset, suite.dataset_args, base)) is not None:
        raise fail("suite.dataset", suite.dataset, problem)
    ds = load_dataset(suite.dataset, suite.dataset_args, base)

    def built(ref: str, args: Any, where: str) -> Any:
        try:
            import_model(ref)
        except ModelError as err:
            raise fail(f"{where}.model", ref, str(err)) from err
        try:
            model = build(ref, ds.spec, ds.n_classes, args)
        except ModelError as err:
            raise fail(f"{where}.model_args", dict(args), str(err)) from err
        except MemoryError:
            problem = "out of memory building the model"
            raise fail(f"{where}.model_args", dict(args), problem) from None
        try:  # the model takes the data's inputs (shape, dtype) and returns (N, classes)
            sample = inputs.map_arrays(inputs.take(ds.X, slice(0, 2)), np.array)  # writable
            probe(model, ref, sample, ds.n_classes, finite=False)
        except ModelError as err:
            raise fail(f"{where}.model", ref, str(err)) from err
        return model

    model = built(suite.model, suite.model_args, "suite")
    if suite.checkpoint is not None:
        from harness.models import checkpoint_path, load_checkpoint

        try:
            load_checkpoint(model, checkpoint_path(suite.checkpoint, base))
        except ModelError as err:
            raise fail("dense.checkpoint", suite.checkpoint, str(err)) from err
    smallest = data_registry.smallest_class(suite.dataset, suite.dataset_args, base)
    if suite.test is not None:
        from harness.data.split import split_test

        try:
            rest, _ = split_test(
                ds,
                suite.test,
                seed=suite.split_seed,
                base=base,
                args=suite.dataset_args,
            )
        except data_registry.DatasetError as err:
            raise fail("cv.test", suite.test, str(err)) from None
        smallest = int(np.bincount(rest.y, minlength=ds.n_classes).min())
    if suite.folds > smallest:
        raise fail(
            "cv.folds", suite.folds, f"more folds than the smallest class has samples ({smallest})"
        )
    _check_rules(suite.gate, "gate", ds.n_classes, fail)
    for text in suite.edge:
        if (problem := check_edge(parse_edge(text), ds, base)) is not None:
            raise fail("edge.sets", text, problem)
    for case in suite.cases:
        where = f"case[{case.name}]"
        own = suite.for_case(case)
        case_model = model if own is suite else built(own.model, own.model_args, where)
        _check_method(case, where, source)
        if case.deploy is not None:  # before any training: the runtime exists, the case fits it
            from harness.deploy import check as check_deploy

            device = resolve_device(suite.device)
            if problem := check_deploy(case.deploy, device=device, pattern=case.prune.pattern):
                raise fail(f"{where}.deploy", case.deploy, problem)
        _check_ignore(case, where, case_model, fail)
        _check_rules(case.gate, f"{where}.gate", ds.n_classes, fail)
        for text in case.edge or ():
            if (problem := check_edge(parse_edge(text), ds, base)) is not None:
                raise fail(f"{where}.edge", text, problem)
    return suite


def _check_rules(rules: tuple[RuleSpec, ...], path: str, n_classes: int, fail: Any) -> None:
    for rule in rules:
        ref, _ = rule_target(rule.metric)
        if isinstance(ref.cls, int) and ref.cls >= n_classes:
            body = {k: getattr(rule, k) for k in RULE_KEYS if getattr(rule, k) is not None}
            raise fail(f"{path}.{rule.metric}", body, f"the dataset has {n_classes} classes")


def _check_method(case: CaseSpec, where: str, source: str) -> None:
    from harness.pruning import registry

    method = case.prune.method
    if method not in registry.names():
        raise SpecError(
            source,
            f"{where}.prune.method",
            method,
            f"unknown method (known: {', '.join(registry.names())})",
        )
    registry.get(method).parse_spec(case.prune, source=source, path=f"{where}.prune")
    if method in OPTIONAL:
        import importlib.util

        module, extra = OPTIONAL[method]
        try:
            missing = importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # blocked (sys.modules[module] = None) or broken
            missing = True
        if missing:
            raise SpecError(
                source,
                f"{where}.prune.method",
                method,
                f"needs {module}, which is not installed (pip install 'prune-harness[{extra}]')",
            )


# methods built on an optional dependency: method -> (module, the extra that installs it)
OPTIONAL = {"lrp": ("captum", "lrp")}


def _check_ignore(case: CaseSpec, where: str, model: Any, fail: Any) -> None:
    """Every name in ``prune.args.ignore`` is a prunable layer of the model (a typo would
    otherwise prune the layer it meant to keep)."""
    from harness.pruning import registry
    from harness.pruning.base import prunable_modules

    names = case.prune.args.get("ignore")
    if not isinstance(names, list | tuple):
        return
    known = [n for n, _ in prunable_modules(model)]
    for name in names:
        if name not in known:
            raise fail(
                f"{where}.prune.args.ignore",
                name,
                f"no such prunable layer (the model has: {', '.join(known)})",
            )
    kept = set(names) | ({known[-1]} if registry.get(case.prune.method).structured else set())
    if known and kept >= set(known):
        what = "every prunable layer" + (
            " (the classifier is always kept)" if known[-1] not in names else ""
        )
        raise fail(
            f"{where}.prune.args.ignore", list(names), f"names {what}: nothing left to prune"
        )
