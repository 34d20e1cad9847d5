"""Property-based and differential checks of a fold's dense and pruned models.

Each property is a search with :func:`hypothesis.find` for a counterexample; hypothesis shrinks
what it finds to a minimal input, which is reported as a :class:`Finding` (plain lists and
dicts, ready for JSON). The searches are seeded (``random.Random(seed)``, derandomized), never
read or write hypothesis' example database and run under :func:`torch.inference_mode` with the
model in evaluation mode; the model's parameters and train/eval flags are left as they were.

Inputs are any :data:`harness.inputs.Inputs`: float32 rows ``(N, d)``, float samples of any
shape (images ``(N, C, H, W)``, signals ``(N, C, L)``), int token ids ``(N, L)``, or a mapping
of named arrays passed as keyword arguments (``{"input_ids", "attention_mask", ...}``). Float
samples are generated and perturbed as flat vectors of ``prod(sample_shape)`` values, reshaped
before the call, so an ``(N, 1, 8, 8)`` dataset is searched exactly like an ``(N, 64)`` one.
Token ids (an int array, or the ``input_ids`` field) are always in ``[0, vocab)``, ``vocab``
being the dataset's vocabulary size (by default the largest id of the validation rows + 1); an
``attention_mask`` field (of the token field's shape) is generated as a prefix of ones of
length 1 to ``L``, never all zeros; other int (or bool) fields are taken from validation rows
as they are.

Properties of one model (:func:`property_checks`):

``finite_outputs``
    batches of 1 to 4 extreme samples give finite logits: float features in
    ``[-extreme, extreme]``; token sequences of one id (often the largest, ``vocab - 1``, or 0)
    but for a few drawn ids, with masks all ones, of one token, or a prefix in between;
``valid_probabilities``
    the softmax of those logits lies in ``[0, 1]`` and every row sums to 1 within ``1e-6``;
``batch_invariance``
    a validation row gives the same logits (within ``1e-4 * (1 + max|logit|)``) and the same
    prediction alone and inside a batch of 2 to 32 validation rows;
``deterministic``
    the same input (a validation row plus a small perturbation, see below with radius 0.1)
    twice gives identical logits.

Dense against pruned (:func:`differential_check`): the disagreement rate on random points near
the validation rows, and a minimal (smallest perturbation) input on which the predictions
differ. A perturbation of radius ``r`` adds to every float value a number in ``[-r, r]`` and
substitutes ids in ``[0, vocab)`` at up to ``max(1, round(r * L))`` (Python's rounding, at most
``L``) of a sequence's unmasked positions (all positions without a mask, or where a row's
mask is all zeros); masks and other int fields are those of the validation row. Random points
substitute 1 to that many distinct positions. :func:`run_checks` runs both, once per fold.

Findings record their input so that it replays: ``Finding.input`` holds one list per sample,
the sample flattened (row-major; float32 values as floats, ids and masks as ints), and for
named inputs a dict ``{field: such lists}``. Where a sample is not a flat vector, the finding's
``detail["sample_shape"]`` gives its shape (a dict of shapes for named inputs):
``np.asarray(finding.input[...]).reshape(-1, *shape)`` restores the batch.

Cost is bounded per search: ``max_examples`` generated examples, then at most
``SHRINK_CALLS * max_examples`` calls for shrinking (counted, not timed, so results do not
depend on the machine). Extreme inputs are searched sparse first (zeros, or id 0, but for a few
values) so that a minimal example names the features that matter. The differential search also
starts from the disagreements the random points found: hypothesis rarely hits a small
disagreement region by itself, but shrinks a known one towards its validation row.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, find, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisSideeffectWarning, NoSuchExample
from hypothesis.extra.numpy import arrays
from torch import nn

from harness import inputs
from harness.inputs import MASK_FIELD, TOKEN_FIELD, Inputs

__all__ = [
    "CheckReport",
    "Finding",
    "differential_check",
    "property_checks",
    "run_checks",
]

T = TypeVar("T")

# A finding's input: one flattened sample per list (floats, or ints for ids and masks); a dict
# of such lists, one per field, for named inputs.
Rows: TypeAlias = "list[list[float]] | list[list[int]]"
FindingInput: TypeAlias = "Rows | dict[str, Rows]"

CHECKS = (
    "finite_outputs",
    "valid_probabilities",
    "batch_invariance",
    "deterministic",
    "dense_pruned_disagreement",
)
PROB_TOL = 1e-6  # |row sum of the softmax - 1|
BATCH_RTOL = 1e-4  # batch invariance: |alone - in batch| <= BATCH_RTOL * (1 + max|logit|)
MAX_BATCH = 32  # batch invariance: batches of 2..MAX_BATCH rows
MAX_EXTREME_ROWS = 4  # finite / valid probabilities: 1..MAX_EXTREME_ROWS rows per input
SHRINK_CALLS = 4  # shrinking may call the property 4 * max_examples times
RAY_STEPS = 32  # differential search: known disagreements are shrunk in 1/32 steps
JITTER = 0.1  # deterministic: perturbation of a validation row, entries in [-JITTER, JITTER]

_HEALTH = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
)


@dataclass(frozen=True)
class Finding:
    """One violated property, or one dense/pruned disagreement, with its minimal input.

    Attributes
    ----------
    check : str
        ``"finite_outputs"``, ``"valid_probabilities"``, ``"batch_invariance"``,
        ``"deterministic"`` or ``"dense_pruned_disagreement"``.
    message : str
        One line: what failed, on which input.
    input : list of list of float or int, or dict of them
        The minimal (shrunk) input, one list per sample, the sample flattened (float32 values
        as Python floats, token ids and masks as ints); for named inputs a dict with one such
        list of lists per field.
    detail : dict
        JSON-ready particulars (logits, predictions, sample index, perturbation norm, ...);
        non-finite numbers appear as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.
        ``"sample_shape"`` (a list, or a dict of lists for named inputs) is there when a
        sample is not a flat vector: reshape each list of :attr:`input` to it to replay.
    """

    check: str
    message: str
    input: FindingInput
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"check", "message", "input", "detail"}``."""
        return {
            "check": self.check,
            "message": self.message,
            "input": self.input,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CheckReport:
    """The checks of one fold.

    Attributes
    ----------
    findings : tuple of Finding
        Property violations of the pruned model, at most one (minimal) example per property.
    disagreement_rate : float
        Fraction of random points near the validation rows on which dense and pruned predict
        different classes.
    disagreements : tuple of Finding
        The minimal disagreeing input found by hypothesis (zero or one finding).
    """

    findings: tuple[Finding, ...]
    disagreement_rate: float
    disagreements: tuple[Finding, ...]

    @property
    def failures(self) -> int:
        """Number of property checks that failed."""
        return len({f.check for f in self.findings})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the report."""
        return {
            "failures": self.failures,
            "findings": [f.to_dict() for f in self.findings],
            "disagreement_rate": self.disagreement_rate,
            "disagreements": [f.to_dict() for f in self.disagreements],
        }


# --------------------------------------------------------------------------- helpers


@contextmanager
def _evaluating(*models: nn.Module) -> Iterator[None]:
    """Evaluation mode and inference mode; every module's ``training`` flag is restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _tensor(v: np.ndarray, device: Any) -> torch.Tensor:
    """A copy of ``v`` on ``device`` (float32 for floats, the integer / bool dtype as is)."""
    if v.dtype.kind == "f":
        return torch.tensor(v, dtype=torch.float32, device=device)
    return torch.tensor(v, device=device)


def _forward(model: nn.Module, x: Inputs, device: Any = None) -> np.ndarray:
    """Logits of ``model`` for a copy of the batch ``x`` (an array, or named arrays passed as
    keyword arguments), as float64 (call inside :func:`_evaluating`). The batch goes to
    ``device``, by default that of the model's first parameter."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
    if isinstance(x, Mapping):
        batch: inputs.Batch = {k: _tensor(v, device) for k, v in x.items()}
    else:
        batch = _tensor(x, device)
    out = inputs.forward(model, batch)
    return np.asarray(out.detach().to(device="cpu", dtype=torch.float64).numpy())


def _settings(max_examples: int) -> settings:
    return settings(
        settings.get_profile("default"),  # not whatever profile the environment loaded
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=_HEALTH,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
    )


class _OutOfBudget(BaseException):
    """Ends a search whose call budget is spent (a ``BaseException``, so hypothesis does not
    take it for a failure of the property and lets it through)."""


def _search(
    strategy: st.SearchStrategy[T], fails: Callable[[T], bool], *, seed: int, max_examples: int
) -> T | None:
    """The minimal value of ``strategy`` for which ``fails`` holds, or ``None``.

    Hypothesis generates up to ``max_examples`` values; once one fails, shrinking gets at most
    ``SHRINK_CALLS * max_examples`` further calls of ``fails``, after which the smallest
    failing value so far is returned (hypothesis only tries values smaller than its current
    one, so that is the last one that failed). Calls are counted, not timed, so the result is
    the same on every machine.
    """
    last: list[T] = []
    calls = 0
    limit = (1 + SHRINK_CALLS) * max_examples

    def condition(value: T) -> bool:
        nonlocal calls, limit
        calls += 1
        if calls > limit:
            raise _OutOfBudget
        if not fails(value):
            return False
        if not last:
            limit = min(limit, calls + SHRINK_CALLS * max_examples)
        last[:] = [value]
        return True

    try:
        with warnings.catch_warnings(), _private_storage():
            # run-time use, e.g. a conftest that runs a suite while pytest starts up
            warnings.simplefilter("ignore", HypothesisSideeffectWarning)
            return find(
                strategy, condition, settings=_settings(max_examples), random=random.Random(seed)
            )
    except NoSuchExample:
        return None
    except _OutOfBudget:
        return last[0] if last else None


@contextmanager
def _private_storage() -> Iterator[None]:
    """Hypothesis keeps caches (the constants it mines from loaded modules) under
    ``./.hypothesis``; during the harness's searches they go to a folder of the system's
    temporary directory instead, so a gate run writes nothing into the user's working tree.
    The user's own setting (``HYPOTHESIS_STORAGE_DIRECTORY``) is left alone."""
    from hypothesis import configuration

    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    key = "__hypothesis_home_directory"
    before = vars(configuration).get(key)
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "prune-harness-hypothesis")
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


def _f32_bound(value: float) -> float:
    """The largest float32 magnitude that is at most ``|value|`` (hypothesis needs bounds
    that are representable at ``width=32``)."""
    bound = np.float32(abs(value))
    if float(bound) > abs(value):
        bound = np.nextafter(bound, np.float32(0))
    return float(bound)


def _vectors(d: int, bound: float) -> st.SearchStrategy[np.ndarray]:
    """float32 vectors of length ``d`` with entries in ``[-bound, bound]``."""
    b = _f32_bound(bound)
    elements = st.floats(-b, b, allow_nan=False, allow_infinity=False, width=32)
    return arrays(np.float32, d, elements=elements)


def _extreme_inputs(d: int, extreme: float, *, sparse: bool) -> st.SearchStrategy[np.ndarray]:
    """Batches of 1..MAX_EXTREME_ROWS float32 rows with features in ``[-extreme, extreme]``:
    ``sparse`` ones are zero but for a few drawn features, dense ones hold one drawn value
    everywhere but for a few others."""
    b = _f32_bound(extreme)
    elements = st.floats(-b, b, allow_nan=False, allow_infinity=False, width=32)
    fill = st.just(0.0) if sparse else None
    return st.integers(1, MAX_EXTREME_ROWS).flatmap(
        lambda rows: arrays(np.float32, (rows, d), elements=elements, fill=fill)
    )


# --------------------------------------------------------------------------- input layouts

FLOAT, TOKENS, MASK, FIXED = "float", "tokens", "mask", "fixed"  # what a field is to the checks


@dataclass(frozen=True)
class _Field:
    """One array of the inputs: ``name`` (``""`` for a plain array), the sample ``shape``,
    the ``dtype`` and its ``role``: ``FLOAT`` values (generated and perturbed), ``TOKENS``
    (ids in ``[0, vocab)``, generated and substituted), ``MASK`` (the attention mask of the
    token field: prefixes of ones) or ``FIXED`` (taken from validation rows as they are)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    role: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Layout:
    """How the checks see a dataset's inputs: its fields, whether they are named (a mapping
    passed as keyword arguments) and the token vocabulary."""

    fields: tuple[_Field, ...]
    named: bool
    vocab: int | None

    @property
    def plain_floats(self) -> bool:
        """One float array (of any sample shape): the original, bit-for-bit, search."""
        return not self.named and self.fields[0].role == FLOAT

    def role(self, role: str) -> _Field | None:
        return next((f for f in self.fields if f.role == role), None)

    def of(self, role: str) -> list[_Field]:
        return [f for f in self.fields if f.role == role]

    def parts(self, x: Inputs) -> dict[str, np.ndarray]:
        """The arrays of ``x`` by field name."""
        return dict(x) if isinstance(x, Mapping) else {"": x}

    def assemble(self, parts: Mapping[str, np.ndarray]) -> Inputs:
        """Inputs from arrays by field name, in the fields' order."""
        if not self.named:
            return parts[""]
        return {f.name: parts[f.name] for f in self.fields}

    def note(self) -> dict[str, Any]:
        """``{"sample_shape": ...}`` for a finding's detail, when a sample is not a flat
        vector (empty for ``(N, d)`` rows and ``(N, L)`` ids)."""
        if self.named:
            return {"sample_shape": {f.name: list(f.shape) for f in self.fields}}
        shape = self.fields[0].shape
        return {} if len(shape) == 1 else {"sample_shape": list(shape)}

    def record(self, x: Inputs) -> FindingInput:
        """``x`` as a finding's input: one flattened list per sample, by field if named."""

        def one(f: _Field, v: np.ndarray) -> Rows:
            if f.role == FLOAT:
                return _rows(v)
            return [[int(t) for t in row] for row in np.asarray(v).reshape(len(v), -1)]

        parts = self.parts(x)
        if not self.named:
            return one(self.fields[0], parts[""])
        return {f.name: one(f, parts[f.name]) for f in self.fields}

    def budget(self, radius: float) -> int:
        """Positions a perturbation of ``radius`` substitutes at most: ``max(1, round(r * L))``
        (at most ``L``)."""
        tokens = self.role(TOKENS)
        length = tokens.size if tokens is not None else 0
        return min(length, max(1, round(radius * length)))

    def positions(self, X: Inputs, row: int) -> np.ndarray:
        """Flat positions of validation row ``row`` that perturbations may substitute: the
        unmasked ones (all of them without a mask, or when the row's mask is all zeros)."""
        tokens, mask = self.role(TOKENS), self.role(MASK)
        assert tokens is not None
        if mask is not None:
            unmasked = np.flatnonzero(self.parts(X)[mask.name][row].reshape(-1))
            if len(unmasked):
                return unmasked
        return np.arange(tokens.size)


def _layout(X: Inputs, vocab: int | None) -> tuple[_Layout, Inputs]:
    """The layout of ``X`` and a private copy of it (a model cannot alter the caller's rows):
    float arrays as float32, integer and bool arrays with their dtype (a plain integer array
    holds token ids). Raises ``ValueError`` for inputs without samples or values, and for a
    ``vocab`` that does not exceed the largest token id."""
    if isinstance(X, Mapping):
        if not X:
            raise ValueError("X must name at least one input array, got an empty mapping")
        arrs = {str(k): np.array(v) for k, v in X.items()}
        sizes = {k: v.shape[0] if v.ndim else None for k, v in arrs.items()}
        if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
            raise ValueError(f"X must be non-empty arrays with the same N, got shapes {sizes}")
        token = arrs.get(TOKEN_FIELD)
        has_tokens = token is not None and token.dtype.kind in "iu" and token.ndim >= 2
        fields = []
        for k, v in arrs.items():
            if v.dtype.kind == "f":
                role = FLOAT
            elif k == TOKEN_FIELD and has_tokens:
                role = TOKENS
            elif k == MASK_FIELD and has_tokens and token is not None and v.shape == token.shape:
                role = MASK
            else:
                role = FIXED
            if role == FLOAT:
                arrs[k] = v = v.astype(np.float32, copy=False)
            fields.append(_Field(k, tuple(int(s) for s in v.shape[1:]), v.dtype, role))
        copy: Inputs = arrs
        named = True
    else:
        arr = np.array(X)
        if arr.dtype.kind not in "iu":
            arr = np.array(X, dtype=np.float32)
        if arr.ndim < 2 or len(arr) == 0 or math.prod(arr.shape[1:]) == 0:
            raise ValueError(
                f"X must be a non-empty (N, d) or (N, *sample_shape) array, got shape {arr.shape}"
            )
        role = TOKENS if arr.dtype.kind in "iu" else FLOAT
        fields = [_Field("", tuple(int(s) for s in arr.shape[1:]), arr.dtype, role)]
        copy, named = arr, False
    lay = _Layout(tuple(fields), named, None)
    tokens = lay.role(TOKENS)
    if tokens is None:
        return lay, copy
    top = int(lay.parts(copy)[tokens.name].max(initial=0))
    if vocab is None:
        vocab = top + 1
    elif isinstance(vocab, bool) or not isinstance(vocab, int | np.integer) or vocab <= top:
        raise ValueError(f"vocab = {vocab!r} must be an integer above the largest token id {top}")
    return _Layout(lay.fields, named, int(vocab)), copy


def _ids(vocab: int) -> st.SearchStrategy[int]:
    """Token ids in ``[0, vocab)``; about half of them the largest, ``vocab - 1`` (rare ids, the
    ones a tokenizer adds last, are where untrained embedding rows hide)."""
    return st.integers(0, vocab - 1) | st.just(vocab - 1)


def _prefix_masks(f: _Field, rows: int) -> st.SearchStrategy[np.ndarray]:
    """Attention masks of ``rows`` samples: ones on a prefix of 1 to ``L`` positions, zeros
    after it (the padding drawn per row; often none or all but one, shrinking to none)."""
    length = f.size
    pads = st.sampled_from(sorted({0, length - 1})) | st.integers(0, length - 1)

    def masks(pad: list[int]) -> np.ndarray:
        out = np.zeros((rows, length), dtype=f.dtype)
        for r, p in enumerate(pad):
            out[r, : length - p] = 1
        return out.reshape(rows, *f.shape)

    return st.lists(pads, min_size=rows, max_size=rows).map(masks)


def _extreme_batches(
    lay: _Layout, X: Inputs, extreme: float, *, sparse: bool
) -> st.SearchStrategy[Inputs]:
    """Batches of 1..MAX_EXTREME_ROWS extreme samples (see :func:`_extreme_inputs` for
    floats; token ids are ``0`` (sparse) or one drawn id (dense) but for a few drawn ids,
    masks are prefixes of ones, fixed fields those of drawn validation rows)."""
    if lay.plain_floats:
        f = lay.fields[0]
        flat = _extreme_inputs(f.size, extreme, sparse=sparse)
        if len(f.shape) == 1:
            return flat  # (N, d) rows: the draws of the original checks
        return flat.map(lambda x: x.reshape(len(x), *f.shape))
    b = _f32_bound(extreme)
    floats = st.floats(-b, b, allow_nan=False, allow_infinity=False, width=32)
    parts = lay.parts(X)
    n = inputs.count(X)

    def shaped(f: _Field) -> Callable[[np.ndarray], np.ndarray]:
        return lambda a: a.reshape(len(a), *f.shape)

    def batch(rows: int) -> st.SearchStrategy[Inputs]:
        drawn: dict[str, st.SearchStrategy[Any]] = {}
        for f in lay.fields:
            if f.role == FLOAT:
                fill = st.just(0.0) if sparse else None
                values = arrays(np.float32, (rows, f.size), elements=floats, fill=fill)
            elif f.role == TOKENS:
                assert lay.vocab is not None
                ids = _ids(lay.vocab)
                fill = st.just(0) if sparse else None
                values = arrays(f.dtype, (rows, f.size), elements=ids, fill=fill)
            elif f.role == MASK:
                drawn[f.name] = _prefix_masks(f, rows)
                continue
            else:
                continue
            drawn[f.name] = values.map(shaped(f))
        fixed = lay.of(FIXED)
        if fixed:
            drawn["\0rows"] = st.lists(st.integers(0, n - 1), min_size=rows, max_size=rows)

        def assemble(values: dict[str, Any]) -> Inputs:
            at = values.pop("\0rows", None)
            for f in fixed:
                values[f.name] = parts[f.name][at]
            return lay.assemble(values)

        return st.fixed_dictionaries(drawn).map(assemble)

    return st.integers(1, MAX_EXTREME_ROWS).flatmap(batch)


def _search_extreme(
    fails: Callable[[Inputs], bool],
    lay: _Layout,
    X: Inputs,
    extreme: float,
    *,
    seed: int,
    max_examples: int,
) -> Inputs | None:
    """Sparse extreme batches first, so that a minimal example keeps only the features that
    matter non-zero; dense ones (``max_examples // 2``) only when no sparse one fails."""
    found = _search(
        _extreme_batches(lay, X, extreme, sparse=True), fails, seed=seed, max_examples=max_examples
    )
    if found is None and max_examples > 1:
        found = _search(
            _extreme_batches(lay, X, extreme, sparse=False),
            fails,
            seed=seed,
            max_examples=max_examples // 2,
        )
    return found


def _describe(lay: _Layout, x: Inputs) -> tuple[str, dict[str, Any]]:
    """What an extreme batch is: a phrase (``"a 2x64 input with max |x| = 89"``) and detail
    (``max_abs_input``, ``nonzero_features`` of the floats; ``min_id``, ``max_id``,
    ``distinct_ids`` of the tokens; ``unmasked`` positions per sample)."""
    parts = lay.parts(x)
    words: list[str] = []
    detail: dict[str, Any] = {}
    floats = [parts[f.name] for f in lay.of(FLOAT)]
    if floats:
        detail["max_abs_input"] = max(float(np.abs(v).max()) for v in floats)
        detail["nonzero_features"] = sum(int(np.count_nonzero(v)) for v in floats)
        words.append(f"max |x| = {detail['max_abs_input']:.6g}")
    tokens, mask = lay.role(TOKENS), lay.role(MASK)
    if tokens is not None:
        ids = parts[tokens.name]
        detail["min_id"], detail["max_id"] = int(ids.min()), int(ids.max())
        detail["distinct_ids"] = len(np.unique(ids))
        words.append(f"ids in [{detail['min_id']}, {detail['max_id']}] of vocab {lay.vocab}")
    if mask is not None:
        m = parts[mask.name]
        detail["unmasked"] = [int(v) for v in np.count_nonzero(m.reshape(len(m), -1), axis=1)]
        words.append(f"unmasked lengths {detail['unmasked']}")
    if lay.named:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in parts.items())
        what = f"a {inputs.count(x)}-sample input ({shapes})"
    else:
        what = f"a {'x'.join(map(str, parts[''].shape))}{' token' if tokens else ''} input"
    return f"{what} with {', '.join(words)}" if words else what, detail


# --------------------------------------------------------------------------- perturbations
#
# A perturbation of a validation row: for one float array (of any sample shape) a flat float32
# vector (the original representation); otherwise a dict holding, per float field, a flat
# float32 vector, and for the token field a list of substitutions ``(j, id)``: position
# ``positions(row)[j % len(positions(row))]`` gets ``id``, later substitutions win.


def _perturbations(lay: _Layout, radius: float) -> st.SearchStrategy[Any]:
    """Perturbations of radius ``radius``: float entries in ``[-radius, radius]``, up to
    ``lay.budget(radius)`` substituted ids in ``[0, vocab)``."""
    if lay.plain_floats:
        return _vectors(lay.fields[0].size, radius)
    drawn: dict[str, st.SearchStrategy[Any]] = {}
    for f in lay.fields:
        if f.role == FLOAT:
            drawn[f.name] = _vectors(f.size, radius)
        elif f.role == TOKENS:
            assert lay.vocab is not None
            sub = st.tuples(st.integers(0, f.size - 1), st.integers(0, lay.vocab - 1))
            drawn[f.name] = st.lists(sub, max_size=lay.budget(radius))
    return st.fixed_dictionaries(drawn)


def _zero(lay: _Layout) -> Any:
    """The perturbation that changes nothing."""
    if lay.plain_floats:
        return np.zeros(lay.fields[0].size, np.float32)
    return {
        f.name: np.zeros(f.size, np.float32) if f.role == FLOAT else []
        for f in lay.fields
        if f.role in (FLOAT, TOKENS)
    }


def _scaled(lay: _Layout, p: Any, s: float) -> Any:
    """``p`` scaled by ``s`` in ``[0, 1]``: float deltas times ``s``, the first
    ``ceil(s * m)`` of ``m`` substitutions."""
    if lay.plain_floats:
        return np.float32(s) * p
    return {
        k: np.float32(s) * v if isinstance(v, np.ndarray) else v[: math.ceil(s * len(v))]
        for k, v in p.items()
    }


def _magnitude(lay: _Layout, p: Any) -> tuple[int, float]:
    """(substitutions, max |delta|) of a perturbation: smaller ones are tried first."""
    if lay.plain_floats:
        return 0, float(np.abs(p).max())
    subs = sum(len(v) for v in p.values() if isinstance(v, list))
    deltas = [float(np.abs(v).max()) for v in p.values() if isinstance(v, np.ndarray)]
    return subs, max(deltas, default=0.0)


def _apply(lay: _Layout, X: Inputs, row: int, p: Any) -> Inputs:
    """Validation row ``row`` of ``X`` perturbed by ``p``, as a batch of one sample."""
    if lay.plain_floats:
        return (lay.parts(X)[""][row] + p.reshape(lay.fields[0].shape))[None]
    out = {k: v[row].copy() for k, v in lay.parts(X).items()}
    for f in lay.fields:
        if f.role == FLOAT:
            out[f.name] = out[f.name] + p[f.name].reshape(f.shape)
        elif f.role == TOKENS and p[f.name]:
            flat = out[f.name].reshape(-1)  # a view of the copy
            where = lay.positions(X, row)
            for j, t in p[f.name]:
                flat[where[j % len(where)]] = t
    return lay.assemble({k: v[None] for k, v in out.items()})


def _random_points(
    lay: _Layout, X: Inputs, idx: np.ndarray, rng: np.random.Generator, radius: float
) -> tuple[Inputs, list[Any]]:
    """Random perturbations of the rows ``idx`` (float deltas uniform in
    ``[-radius, radius]``, one ``rng.uniform`` per float field; then, per point, 1 to
    ``budget`` distinct unmasked positions substituted by uniform ids) and the points."""
    samples = len(idx)
    if lay.plain_floats:
        f = lay.fields[0]
        delta = rng.uniform(-radius, radius, size=(samples, f.size)).astype(np.float32)
        return lay.parts(X)[""][idx] + delta.reshape(samples, *f.shape), list(delta)
    perts: list[dict[str, Any]] = [{} for _ in range(samples)]
    for f in lay.of(FLOAT):
        delta = rng.uniform(-radius, radius, size=(samples, f.size)).astype(np.float32)
        for k in range(samples):
            perts[k][f.name] = delta[k]
    tokens = lay.role(TOKENS)
    if tokens is not None:
        assert lay.vocab is not None
        budget = lay.budget(radius)
        for k, i in enumerate(idx):
            where = lay.positions(X, int(i))
            m = int(rng.integers(1, min(budget, len(where)) + 1))
            js = rng.choice(len(where), size=m, replace=False)
            ids = rng.integers(0, lay.vocab, size=m)
            perts[k][tokens.name] = [(int(j), int(t)) for j, t in zip(js, ids, strict=True)]
    if samples == 0:
        return inputs.take(X, idx), perts
    points = inputs.concat([_apply(lay, X, int(i), p) for i, p in zip(idx, perts, strict=True)])
    return points, perts


def _distance(lay: _Layout, x: Inputs, X: Inputs, row: int) -> dict[str, Any]:
    """How far the one-sample batch ``x`` is from validation row ``row``: ``linf`` (max
    |delta| of the floats), ``substituted`` (token positions that differ) and ``positions``."""
    xs, Xs = lay.parts(x), lay.parts(X)
    out: dict[str, Any] = {}
    floats = lay.of(FLOAT)
    if floats:
        out["linf"] = max(float(np.abs(xs[f.name][0] - Xs[f.name][row]).max()) for f in floats)
    tokens = lay.role(TOKENS)
    if tokens is not None:
        a, b = xs[tokens.name][0].reshape(-1), Xs[tokens.name][row].reshape(-1)
        changed = np.flatnonzero(a != b)
        out["substituted"] = len(changed)
        out["positions"] = [int(v) for v in changed]
    return out


def _changes(lay: _Layout, dist: dict[str, Any], linf: str) -> list[str]:
    """Phrases for a perturbation: ``linf`` formats its max |delta| (``"max |delta| {:.3g}"``)."""
    words = [linf.format(dist["linf"])] if "linf" in dist else []
    tokens = lay.role(TOKENS)
    if tokens is not None:
        words.append(f"{dist['substituted']} of {tokens.size} tokens substituted")
    return words


def _jsonable(values: np.ndarray) -> list[Any]:
    """Nested lists of floats; non-finite values as ``"nan"``, ``"inf"``, ``"-inf"`` (JSON and
    ``==`` both work on them)."""

    def one(v: float) -> float | str:
        return float(v) if np.isfinite(v) else str(float(v))

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return [one(float(arr))]
    if arr.ndim == 1:
        return [one(v) for v in arr.tolist()]
    return [_jsonable(row) for row in arr]


def _rows(x: np.ndarray) -> list[list[float]]:
    """A float32 batch as plain lists, one (flattened) row per sample."""
    return [[float(v) for v in row] for row in np.asarray(x, dtype=np.float32).reshape(len(x), -1)]


# --------------------------------------------------------------------------- properties


def _check_finite(
    model: nn.Module, lay: _Layout, X: Inputs, extreme: float, seed: int, n: int, device: Any
) -> Finding | None:
    seen: dict[str, np.ndarray] = {}  # what the last failing call saw: the returned example

    def fails(x: Inputs) -> bool:
        logits = _forward(model, x, device)
        if np.isfinite(logits).all():
            return False
        seen["logits"] = logits
        return True

    x = _search_extreme(fails, lay, X, extreme, seed=seed, max_examples=n)
    if x is None:
        return None
    logits = seen["logits"]
    bad = ~np.isfinite(logits)
    row, col = (int(v) for v in np.argwhere(bad)[0])
    kinds = sorted({str(float(v)) for v in logits[bad]})
    what, about = _describe(lay, x)
    return Finding(
        "finite_outputs",
        f"non-finite logits ({'/'.join(kinds)}, {int(bad.sum())} of {logits.size}, first at "
        f"row {row} class {col}) on {what}",
        lay.record(x),
        {
            "logits": _jsonable(logits),
            "nonfinite": int(bad.sum()),
            "first": [row, col],
            **about,
            **lay.note(),
        },
    )


def _prob_error(logits: np.ndarray) -> float:
    """How far the softmax of ``logits`` is from a valid distribution (0 when valid)."""
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    if not np.isfinite(probs).all():
        return float("inf")
    outside = max(float(-probs.min()), float(probs.max() - 1), 0.0)
    return max(outside, float(np.abs(probs.sum(1) - 1).max()))


def _check_probabilities(
    model: nn.Module, lay: _Layout, X: Inputs, extreme: float, seed: int, n: int, device: Any
) -> Finding | None:
    seen: dict[str, np.ndarray] = {}

    def fails(x: Inputs) -> bool:
        logits = _forward(model, x, device)
        if _prob_error(logits) <= PROB_TOL:
            return False
        seen["logits"] = logits
        return True

    x = _search_extreme(fails, lay, X, extreme, seed=seed + 1, max_examples=n)
    if x is None:
        return None
    logits = seen["logits"]
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    error = _prob_error(logits)
    what, _ = _describe(lay, x)
    return Finding(
        "valid_probabilities",
        f"softmax is not a distribution (error {error:.3g} > {PROB_TOL:g}) on {what}",
        lay.record(x),
        {
            "logits": _jsonable(logits),
            "probabilities": _jsonable(probs),
            "row_sums": _jsonable(probs.sum(1)),
            "error": error if np.isfinite(error) else "inf",
            **lay.note(),
        },
    )


def _batch_case(n: int) -> st.SearchStrategy[tuple[int, list[int], int]]:
    """(row index, the other rows of the batch, position of the row in the batch)."""
    return st.tuples(
        st.integers(0, n - 1),
        st.lists(st.integers(0, n - 1), min_size=1, max_size=MAX_BATCH - 1),
        st.integers(0, MAX_BATCH - 1),
    )


def _batch_of(case: tuple[int, list[int], int]) -> tuple[list[int], int]:
    index, others, pos = case
    pos %= len(others) + 1
    return [*others[:pos], index, *others[pos:]], pos


def _check_batch(
    model: nn.Module, lay: _Layout, X: Inputs, seed: int, n: int, device: Any
) -> Finding | None:
    def compare(case: tuple[int, list[int], int]) -> tuple[np.ndarray, np.ndarray, float]:
        batch, pos = _batch_of(case)
        alone = _forward(model, inputs.take(X, slice(case[0], case[0] + 1)), device)[0]
        inside = _forward(model, inputs.take(X, batch), device)[pos]
        return alone, inside, BATCH_RTOL * (1 + float(np.abs(alone).max()))

    seen: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def fails(case: tuple[int, list[int], int]) -> bool:
        alone, inside, tol = compared = compare(case)
        if not (np.isfinite(alone).all() and np.isfinite(inside).all()):
            failed = not np.array_equal(alone, inside, equal_nan=True)
        else:
            failed = np.abs(alone - inside).max() > tol or alone.argmax() != inside.argmax()
        if failed:
            seen["compared"] = compared
        return bool(failed)

    case = _search(_batch_case(inputs.count(X)), fails, seed=seed + 2, max_examples=n)
    if case is None:
        return None
    batch, pos = _batch_of(case)
    alone, inside, tol = seen["compared"]
    diff = float(np.abs(alone - inside).max())
    return Finding(
        "batch_invariance",
        f"validation row {case[0]} alone and at position {pos} of a batch of {len(batch)} "
        f"rows {batch} gives different logits (max |diff| {diff:.3g}, tolerance {tol:.3g}; "
        f"prediction {int(alone.argmax())} vs {int(inside.argmax())})",
        lay.record(inputs.take(X, batch)),
        {
            "index": int(case[0]),
            "position": pos,
            "batch_indices": [int(i) for i in batch],
            "logits_alone": _jsonable(alone),
            "logits_in_batch": _jsonable(inside),
            "max_abs_diff": diff if np.isfinite(diff) else str(diff),
            "tolerance": tol,
            "pred_alone": int(alone.argmax()),
            "pred_in_batch": int(inside.argmax()),
            **lay.note(),
        },
    )


def _check_deterministic(
    model: nn.Module, lay: _Layout, X: Inputs, seed: int, n: int, device: Any
) -> Finding | None:
    strategy = st.tuples(st.integers(0, inputs.count(X) - 1), _perturbations(lay, JITTER))

    def point(case: tuple[int, Any]) -> Inputs:
        return _apply(lay, X, case[0], case[1])

    seen: dict[str, np.ndarray] = {}

    def fails(case: tuple[int, Any]) -> bool:
        x = point(case)
        first, second = _forward(model, x, device)[0], _forward(model, x, device)[0]
        if np.array_equal(first, second, equal_nan=True):
            return False
        seen["first"], seen["second"] = first, second
        return True

    case = _search(strategy, fails, seed=seed + 3, max_examples=n)
    if case is None:
        return None
    x = point(case)
    first, second = seen["first"], seen["second"]
    diff = np.abs(first - second)
    max_diff = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
    dist = _distance(lay, x, X, case[0])
    changes = ", ".join(_changes(lay, dist, "max |delta| {:.3g}"))
    return Finding(
        "deterministic",
        f"validation row {case[0]} + perturbation ({changes}) gives different "
        f"logits on two identical calls (max |diff| {max_diff:.3g})",
        lay.record(x),
        {
            "index": int(case[0]),
            **dist,
            "logits_first": _jsonable(first),
            "logits_second": _jsonable(second),
            "max_abs_diff": max_diff if np.isfinite(max_diff) else str(max_diff),
            **lay.note(),
        },
    )


def property_checks(
    model: nn.Module,
    X: Inputs,
    *,
    seed: int,
    max_examples: int = 40,
    extreme: float = 1e4,
    vocab: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[Finding, ...]:
    """Search for violations of the four properties of ``model``.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs (a float32 ``(N, d)`` or ``(N, *sample_shape)`` tensor, an
        int64 ``(N, L)`` tensor of token ids, or named tensors as keyword arguments) to logits
        ``(N, C)``, or an output with ``.logits``; not modified (its train/eval flags are
        restored).
    X : Inputs
        Validation rows ``(N, d)``, samples ``(N, *sample_shape)``, token ids ``(N, L)`` or
        named arrays with the same ``N`` (scaled like the training data); batch invariance and
        determinism are checked on and near these rows.
    seed : int
        Seeds every search; the same seed gives the same findings.
    max_examples : int, default 40
        Examples tried per property before it counts as holding.
    extreme : float, default 1e4
        Feature bound of the float inputs for ``finite_outputs`` and ``valid_probabilities``.
    vocab : int, optional
        Token vocabulary size: generated ids lie in ``[0, vocab)``. Default: the largest id in
        ``X`` + 1 (pass the dataset's, as a fold may lack its largest ids).
    device : str or torch.device, optional
        Where the batches go; default: the device of the model's first parameter.

    Returns
    -------
    tuple of Finding
        At most one minimal counterexample per violated property, in the order
        ``finite_outputs``, ``valid_probabilities``, ``batch_invariance``, ``deterministic``.

    Raises
    ------
    ValueError
        ``X`` has no samples or no values per sample (a 1-D array included), or ``vocab``
        does not exceed its largest token id. Exceptions raised by the model propagate.
    """
    lay, X = _layout(X, vocab)
    found: list[Finding | None] = []
    with _evaluating(model):
        found.append(_check_finite(model, lay, X, extreme, seed, max_examples, device))
        found.append(_check_probabilities(model, lay, X, extreme, seed, max_examples, device))
        found.append(_check_batch(model, lay, X, seed, max_examples, device))
        found.append(_check_deterministic(model, lay, X, seed, max_examples, device))
    return tuple(f for f in found if f is not None)


# --------------------------------------------------------------------------- differential


def _rays(lay: _Layout, known: list[tuple[int, Any]]) -> st.SearchStrategy[tuple[int, Any]]:
    """``(row, s * delta)`` for a known disagreement ``(row, delta)`` and
    ``s = min(1, step / RAY_STEPS)``: half the draws give the known point itself, and shrinking
    the integer step moves towards the row in steps of ``1 / RAY_STEPS`` (and shrinking the
    choice moves to known points with smaller perturbations). Substitutions scale to the
    first ``ceil(s * m)`` of their ``m``."""

    def point(choice: tuple[int, int]) -> tuple[int, Any]:
        row, delta = known[choice[0]]
        return row, _scaled(lay, delta, min(1.0, choice[1] / RAY_STEPS))

    return st.tuples(st.integers(0, len(known) - 1), st.integers(0, 2 * RAY_STEPS)).map(point)


def differential_check(
    dense: nn.Module,
    pruned: nn.Module,
    X: Inputs,
    *,
    seed: int,
    radius: float = 0.5,
    samples: int = 256,
    max_examples: int = 40,
    vocab: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[float, tuple[Finding, ...]]:
    """Compare the predictions of ``dense`` and ``pruned`` near the validation rows.

    Parameters
    ----------
    dense, pruned : nn.Module
        The two models (not modified).
    X : Inputs
        Validation rows ``(N, d)``, samples ``(N, *sample_shape)``, token ids ``(N, L)`` or
        named arrays (see :func:`property_checks`).
    seed : int
        Seeds the random points (``numpy.random.default_rng(seed)``) and the search.
    radius : float, default 0.5
        Perturbations have float entries in ``[-radius, radius]`` and substitute ids at up to
        ``max(1, round(radius * L))`` unmasked positions of an ``L``-token sequence.
    samples : int, default 256
        Random points ``X[i] + delta`` for the disagreement rate (one batched forward each).
    max_examples : int, default 40
        Examples the hypothesis search tries before it gives up.
    vocab : int, optional
        Token vocabulary size: substituted ids lie in ``[0, vocab)``. Default: the largest id
        in ``X`` + 1.
    device : str or torch.device, optional
        Where the batches go; default: the device of each model's first parameter.

    Returns
    -------
    rate : float
        Fraction of the random points where the argmax of the two models differs.
    disagreements : tuple of Finding
        Empty, or one ``"dense_pruned_disagreement"`` finding: the shrunk (smallest
        perturbation) input where the predictions differ, with detail ``index``,
        ``dense_pred``, ``pruned_pred``, and ``linf`` (max |delta| of float inputs) and / or
        ``substituted`` and ``positions`` (token positions that differ from the row).

    Notes
    -----
    The search draws a row index and a perturbation of radius ``radius``, and also the known
    disagreements (validation rows the models disagree on, disagreeing random points) scaled
    by ``s`` in ``[0, 1]``, which shrinking pulls towards the row. So a finding exists whenever
    the models disagree on a validation row or a random point; elsewhere it depends on what the
    ``max_examples`` draws hit.
    """
    lay, X = _layout(X, vocab)
    n = inputs.count(X)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=samples)
    points, delta = _random_points(lay, X, idx, rng, radius)

    def preds(x: Inputs) -> tuple[int, int]:
        return (
            int(_forward(dense, x, device)[0].argmax()),
            int(_forward(pruned, x, device)[0].argmax()),
        )

    seen: dict[str, tuple[int, int]] = {}

    def fails(case: tuple[int, Any]) -> bool:
        a, b = preds(_apply(lay, X, case[0], case[1]))
        if a == b:
            return False
        seen["preds"] = a, b
        return True

    with _evaluating(dense, pruned):
        rate, differ = 0.0, np.zeros(samples, dtype=bool)
        if samples > 0:
            dense_at = _forward(dense, points, device).argmax(1)
            differ = dense_at != _forward(pruned, points, device).argmax(1)
            rate = float(differ.mean())
        # Known disagreements seed the search: validation rows the models already disagree
        # on (direction 0), then the disagreeing random points, smallest perturbation first.
        dense_on = _forward(dense, X, device).argmax(1)
        on_rows = np.flatnonzero(dense_on != _forward(pruned, X, device).argmax(1))
        near = sorted(np.flatnonzero(differ), key=lambda k: _magnitude(lay, delta[k]))
        known = [(int(i), _zero(lay)) for i in on_rows]
        known += [(int(idx[k]), delta[k]) for k in near]
        free = st.tuples(st.integers(0, n - 1), _perturbations(lay, radius))
        strategy = st.one_of(_rays(lay, known), free) if known else free
        case = _search(strategy, fails, seed=seed + 4, max_examples=max_examples)
        if case is None:
            return rate, ()
    x = _apply(lay, X, case[0], case[1])
    dense_pred, pruned_pred = seen["preds"]
    dist = _distance(lay, x, X, case[0])
    changes = " and ".join(_changes(lay, dist, "max |delta| = {:.6g}"))
    finding = Finding(
        "dense_pruned_disagreement",
        f"dense predicts {dense_pred} and pruned {pruned_pred} on validation row {case[0]} + "
        f"perturbation with {changes}",
        lay.record(x),
        {
            "index": int(case[0]),
            "dense_pred": dense_pred,
            "pruned_pred": pruned_pred,
            **dist,
            **lay.note(),
        },
    )
    return rate, (finding,)


def run_checks(
    dense: nn.Module,
    pruned: nn.Module,
    X: Inputs,
    *,
    seed: int,
    max_examples: int = 40,
    radius: float = 0.5,
    samples: int = 256,
    vocab: int | None = None,
    device: str | torch.device | None = None,
) -> CheckReport:
    """Property checks of ``pruned`` and the dense/pruned differential check for one fold.

    Parameters
    ----------
    dense, pruned : nn.Module
        The fold's models (not modified).
    X : Inputs
        The fold's scaled validation inputs (see :func:`property_checks`).
    seed : int
        Seeds every search and the random points; the same seed gives an equal report.
    max_examples : int, default 40
        Examples per hypothesis search.
    radius : float, default 0.5
        Perturbation bound of the differential check.
    samples : int, default 256
        Random points for the disagreement rate.
    vocab : int, optional
        Token vocabulary size (default: the largest id in ``X`` + 1).
    device : str or torch.device, optional
        Where the batches go (default: the models' device).

    Returns
    -------
    CheckReport
        Findings, disagreement rate and the minimal disagreement (if any).
    """
    findings = property_checks(
        pruned, X, seed=seed, max_examples=max_examples, vocab=vocab, device=device
    )
    rate, disagreements = differential_check(
        dense,
        pruned,
        X,
        seed=seed,
        radius=radius,
        samples=samples,
        max_examples=max_examples,
        vocab=vocab,
        device=device,
    )
    return CheckReport(findings, rate, disagreements)
