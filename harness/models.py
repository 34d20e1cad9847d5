"""Reference model factories and ``"module:callable"`` resolution for user models.

A model factory is called as ``factory(in_features=..., n_classes=..., **model_args)`` and returns
an ``nn.Module`` mapping a float batch ``(N, in_features)`` to logits ``(N, n_classes)``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from harness._util import HarnessError, import_user_callable


class ModelError(HarnessError):
    """A model reference does not resolve or the factory rejects its arguments."""


def mlp(
    in_features: int, n_classes: int, *, hidden: Sequence[int] = (256, 128), dropout: float = 0.0
) -> nn.Module:
    """Fully connected ReLU network with ``hidden`` layer widths."""
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden = {list(hidden)}: widths must be positive integers")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def cnn1d(
    in_features: int,
    n_classes: int,
    *,
    channels: Sequence[int] = (32, 32, 32),
    kernel_size: int = 5,
    stride: int = 2,
) -> nn.Module:
    """1-D CNN for signals such as MNIST-1D (after Greydanus 2020): strided convs, then linear."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, in_features))]
    width, length = 1, in_features
    for c in channels:
        layers += [nn.Conv1d(width, c, kernel_size, stride=stride, padding=1), nn.ReLU()]
        width, length = c, (length + 2 - kernel_size) // stride + 1
    if length < 1:
        raise ModelError(f"input length {in_features} is too short for {len(channels)} conv layers")
    layers += [nn.Flatten(), nn.Linear(width * length, n_classes)]
    return nn.Sequential(*layers)


def resolve(ref: str) -> Callable[..., nn.Module]:
    """Import a model factory from ``"module:callable"``; raises :class:`ModelError`."""
    return import_user_callable(ref, "model", ModelError)


def source_digest(ref: str) -> str:
    """Digest of the source file that defines a factory: part of every cache key of models it
    builds, so two suites naming the same ``module:callable`` from different code never share
    dense models (the file's text; the callable's qualified name when it has no source file)."""
    factory = resolve(ref)
    try:
        path = inspect.getsourcefile(factory)
        data = Path(path).read_bytes() if path else b""
    except (OSError, TypeError):
        data = b""
    name = f"{getattr(factory, '__module__', '')}:{getattr(factory, '__qualname__', ref)}"
    return hashlib.sha256(name.encode() + b"\0" + data).hexdigest()[:16]


def build(ref: str, in_features: int, n_classes: int, args: Mapping[str, Any]) -> nn.Module:
    """Build a model; a factory that rejects its arguments raises :class:`ModelError`."""
    factory = resolve(ref)
    try:
        model = factory(in_features=in_features, n_classes=n_classes, **args)
    except Exception as err:  # a user factory may raise anything (torch: RuntimeError)
        raise ModelError(f"{ref} rejected model_args {dict(args)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model
