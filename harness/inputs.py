"""Model inputs of any shape and type: one array per batch, or named arrays for multi-input
models.

A dataset's features are :data:`Inputs`: an array ``(N, *sample_shape)`` (float32 features,
images ``C x H x W``, signals ``C x L``; int64 token ids ``L``), or a mapping of such arrays with
the same ``N`` (``{"input_ids": ..., "attention_mask": ...}``), passed to the model as keyword
arguments. Everything that feeds a model goes through this module: :func:`take` (rows),
:func:`to_batch` (tensors, on a device), :func:`forward` (the call, and the logits out of a
Hugging Face style output), :func:`spec_of` (what a factory is told).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

Inputs: TypeAlias = "np.ndarray | Mapping[str, np.ndarray]"
Batch: TypeAlias = "torch.Tensor | Mapping[str, torch.Tensor]"

# the field of a multi-input model that holds token ids (Hugging Face's name)
TOKEN_FIELD = "input_ids"
MASK_FIELD = "attention_mask"


@dataclass(frozen=True)
class InputSpec:
    """What one sample looks like: its ``shape`` (without the batch axis) and ``dtype``
    (``"float32"`` or ``"int64"``); ``vocab`` is one more than the largest token id (int64
    inputs); for a multi-input model, ``fields`` holds one spec per named input and ``shape`` /
    ``dtype`` are those of the token field (or the first one)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab: int | None = None
    fields: tuple[tuple[str, InputSpec], ...] = ()

    @property
    def in_features(self) -> int:
        """Values per sample (of the main input): the old factories' ``in_features``."""
        return math.prod(self.shape)

    @property
    def named(self) -> dict[str, InputSpec]:
        return dict(self.fields)

    @property
    def is_tokens(self) -> bool:
        return self.dtype == "int64"

    def describe(self) -> str:
        if self.fields:
            return "{" + ", ".join(f"{k}: {v.describe()}" for k, v in self.fields) + "}"
        return f"{self.dtype}[{'x'.join(map(str, self.shape)) or 'scalar'}]"


def is_named(X: Any) -> bool:
    return isinstance(X, Mapping)


def main(X: Inputs) -> np.ndarray:
    """The main array: the token field of a multi-input, else the first field; X itself."""
    if isinstance(X, Mapping):
        return X[TOKEN_FIELD] if TOKEN_FIELD in X else next(iter(X.values()))
    return X


def count(X: Any) -> int:
    """Number of samples of inputs or of a batch."""
    if isinstance(X, Mapping):
        return len(next(iter(X.values())))
    return len(X)


def is_lazy(X: Any) -> bool:
    """Whether ``X`` is a streamed view (:class:`harness.data.stream.Rows`): its rows are read
    when taken, never all at once."""
    return bool(getattr(X, "lazy_rows", False))


def take(X: Any, idx: Any) -> Any:
    """Rows ``idx`` (an index array, a slice) of inputs or of a batch of tensors; read into
    memory from a streamed view."""
    if isinstance(X, Mapping):
        return {k: v[idx] for k, v in X.items()}
    if is_lazy(X):
        return X.take(idx)
    return X[idx]


def concat(parts: Sequence[Any]) -> Any:
    """Inputs of several parts, one after the other."""
    first = parts[0]
    if isinstance(first, Mapping):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    return np.concatenate(parts)


def map_arrays(X: Inputs, fn: Any) -> Inputs:
    if isinstance(X, Mapping):
        return {k: fn(v) for k, v in X.items()}
    return fn(X)


def to_batch(X: Inputs | Batch, device: Any = None) -> Batch:
    """Tensors of ``X`` (no copy on the CPU), moved to ``device`` when given."""
    import torch

    if is_lazy(X):
        raise TypeError("a streamed view: take its rows (inputs.take) before making tensors")

    def one(v: Any) -> torch.Tensor:
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        return t.to(device) if device is not None else t

    if isinstance(X, Mapping):
        return {k: one(v) for k, v in X.items()}
    return one(X)


def batch_size(batch: Batch) -> int:
    return count(batch)


def logits_of(out: Any) -> Any:
    """The logits tensor of a model's output: a tensor, a Hugging Face style output with
    ``.logits``, or a tuple / list whose first element is the logits; anything else as is."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def forward(model: nn.Module, batch: Batch) -> Any:
    """``model(batch)``, or ``model(**batch)`` for named inputs; the logits of the output."""
    if isinstance(batch, Mapping):
        return logits_of(model(**batch))
    return logits_of(model(batch))


def example_inputs(batch: Batch) -> Any:
    """Torch-Pruning's and the FLOP counter's ``example_inputs``: the tensor, or the dict (which
    Torch-Pruning passes as keyword arguments)."""
    return dict(batch) if isinstance(batch, Mapping) else batch


def nbytes(X: Inputs) -> int:
    if isinstance(X, Mapping):
        return sum(int(v.nbytes) for v in X.values())
    return int(X.nbytes)


def _one_spec(a: np.ndarray) -> InputSpec:
    if a.dtype.kind in "iu":
        vocab = int(a.max(initial=0)) + 1
        return InputSpec(tuple(int(s) for s in a.shape[1:]), "int64", vocab)
    return InputSpec(tuple(int(s) for s in a.shape[1:]), "float32")


def spec_of(X: Inputs) -> InputSpec:
    """The :class:`InputSpec` of inputs (from all of their rows: ``vocab`` is the dataset's)."""
    if isinstance(X, Mapping):
        fields = tuple((k, _one_spec(np.asarray(v))) for k, v in X.items())
        head = dict(fields).get(TOKEN_FIELD, fields[0][1])
        return InputSpec(head.shape, head.dtype, head.vocab, fields)
    return _one_spec(np.asarray(X))


def digest_bytes(X: Inputs) -> bytes:
    """Bytes of all arrays with their names, shapes and dtypes (a dataset digest's input)."""
    items = X.items() if isinstance(X, Mapping) else [("", X)]
    out = b""
    for k, v in items:
        v = np.ascontiguousarray(v)
        if v.ndim == 2 and not k and v.dtype == np.float32:
            out += v.tobytes()  # flat float features: the digest as it always was
        else:
            out += f"{k}|{v.dtype}|{v.shape}|".encode() + v.tobytes()
    return out
