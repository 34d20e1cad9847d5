"""The validation machinery (harness.schema) and the spec dataclasses built on it: checked
however they are built, with one-line errors naming the source and the key."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from harness.schema import SpecError, Table, from_dict, option, validate
from harness.spec import (
    CaseSpec,
    ChecksSpec,
    DistillSpec,
    LatencySpec,
    PruneSpec,
    RuleSpec,
    SuiteSpec,
    TrainSpec,
)


@dataclass(frozen=True)
class Demo:
    count: int = option(1, check=lambda v: None if v > 0 else "must be > 0")
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    limit: float | None = None

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.mode == "b" and self.limit is None:
            yield "limit", self.limit, 'needs a value with mode = "b"'


def _raises(text: str) -> Any:
    return pytest.raises(SpecError, match=f"^{re.escape(text)}$")


def test_python_construction_is_checked_and_named() -> None:
    with _raises("<python>: Demo.count = 0: must be > 0"):
        Demo(count=0)
    with _raises("<python>: Demo.mode = 'c': must be one of a, b"):
        Demo(mode="c")  # type: ignore[arg-type]
    with _raises("<python>: Demo.count = True: must be an integer"):
        Demo(count=True)
    with _raises("<python>: Demo.rate = inf: must be finite"):
        Demo(rate=float("inf"))
    with _raises('<python>: Demo.limit = None: needs a value with mode = "b"'):
        Demo(mode="b")


def test_replace_is_checked_too() -> None:
    with _raises("<python>: Demo.count = -3: must be > 0"):
        dataclasses.replace(Demo(), count=-3)


def test_values_are_normalized_so_hashes_do_not_depend_on_how_a_spec_was_built() -> None:
    built = Demo(rate=1, names=["x", "y"])  # type: ignore[arg-type]
    assert built.rate == 1.0 and isinstance(built.rate, float)
    assert built.names == ("x", "y")
    assert TrainSpec(lr=1) == TrainSpec(lr=1.0)
    assert dataclasses.asdict(TrainSpec(lr=1))["lr"].__class__ is float


def test_tables_name_the_file_and_the_key() -> None:
    with _raises("s.toml: t.count = 0: must be > 0"):
        from_dict(Demo, {"count": 0}, source="s.toml", path="t")
    with _raises("s.toml: t.extra = 1: unknown key"):
        from_dict(Demo, {"extra": 1}, source="s.toml", path="t")
    with _raises("s.toml: t.names = ['a', 2]: must be an array of strings"):
        from_dict(Demo, {"names": ["a", 2]}, source="s.toml", path="t")
    with _raises('s.toml: t.limit = None: needs a value with mode = "b"'):
        from_dict(Demo, {"mode": "b"}, source="s.toml", path="t")
    assert from_dict(Demo, {"count": 2, "names": ["a"]}, source="s", path="t") == Demo(
        count=2, names=("a",)
    )


def test_defaults_of_a_table_can_come_from_another_instance() -> None:
    base = Demo(count=7, rate=0.25)
    built = Table({"rate": 0.75}, "s", "t").build(Demo, defaults=base)
    assert (built.count, built.rate) == (7, 0.75)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainSpec(epochs=-1), "<python>: TrainSpec.epochs = -1: must be >= 0"),
        (
            lambda: TrainSpec(optimizer="rmsprop"),
            "<python>: TrainSpec.optimizer = 'rmsprop': must be one of adam, adamw, sgd",
        ),
        (
            lambda: TrainSpec(scheduler="plateau", gamma=2.0),
            '<python>: TrainSpec.gamma = 2.0: must be > 0 and < 1 with scheduler = "plateau"',
        ),
        (
            lambda: PruneSpec("magnitude", 1.0),
            "<python>: PruneSpec.sparsity = 1.0: must be in [0, 1)",
        ),
        (
            lambda: PruneSpec("magnitude", 0.5, steps=3),
            '<python>: PruneSpec.steps = 3: must be 1 with schedule = "oneshot"',
        ),
        (
            lambda: RuleSpec("pruned.bogus", max_drop=0.1),
            "<python>: RuleSpec.metric = 'pruned.bogus': unknown metric",
        ),
        (
            lambda: RuleSpec("pruned.f1_macro", policy="significant"),
            "<python>: RuleSpec.policy = 'significant': needs max_drop",
        ),
        (lambda: DistillSpec(alpha=2.0), "<python>: DistillSpec.alpha = 2.0: must be in [0, 1]"),
        (lambda: LatencySpec(batch=0), "<python>: LatencySpec.batch = 0: must be > 0"),
        (lambda: ChecksSpec(radius=0.0), "<python>: ChecksSpec.radius = 0.0: must be > 0"),
        (
            lambda: CaseSpec("a b", PruneSpec("magnitude", 0.5)),
            "<python>: CaseSpec.name = 'a b': ",
        ),
        (
            lambda: CaseSpec("a", PruneSpec("magnitude", 0.5), edge=("nonsense",)),
            "<python>: CaseSpec.edge = ('nonsense',): edge set 'nonsense': unknown kind",
        ),
        (
            lambda: CaseSpec("a", PruneSpec("magnitude", 0.5), distill=DistillSpec()),
            "<python>: CaseSpec.distill = {'temperature': 4.0, 'alpha': 0.7}: needs a finetune",
        ),
        (
            lambda: SuiteSpec("s", "sklearn:digits", "harness.models:mlp", ()),
            "<python>: SuiteSpec.cases = <missing>: a suite needs at least one [[case]]",
        ),
        (
            lambda: SuiteSpec("s", "sklearn:digits", "mlp", (CaseSpec("a", PruneSpec("m", 0)),)),
            "<python>: SuiteSpec.model = 'mlp': must look like \"module:callable\"",
        ),
        (
            lambda: SuiteSpec(
                "s",
                "sklearn:digits",
                "harness.models:mlp",
                (CaseSpec("a", PruneSpec("m", 0)), CaseSpec("a", PruneSpec("m", 0))),
            ),
            "<python>: SuiteSpec.case[a].name = 'a': duplicate case name",
        ),
        (
            lambda: SuiteSpec(
                "s",
                "sklearn:digits",
                "harness.models:mlp",
                (CaseSpec("a", PruneSpec("m", 0)),),
                folds=1,
            ),
            "<python>: SuiteSpec.folds = 1: must be >= 2",
        ),
    ],
)
def test_every_spec_dataclass_refuses_bad_values_built_in_python(build: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        build()
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_validation_imports_nothing_of_the_ml_stack() -> None:
    import subprocess

    code = (
        "import sys; from harness.spec import *; from harness.schema import *; "
        "SuiteSpec('s', 'sklearn:digits', 'harness.models:mlp', "
        "(CaseSpec('a', PruneSpec('magnitude', 0.5)),)); "
        "heavy = [m for m in ('torch', 'numpy', 'sklearn', 'mlflow') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
