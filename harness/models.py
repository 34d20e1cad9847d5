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


def checkpoint_path(ref: str, base: Path) -> Path:
    """A checkpoint path of a suite, relative to the suite file's directory."""
    path = Path(ref)
    return path if path.is_absolute() else base / path


def checkpoint_digest(path: Path) -> str:
    """SHA-256 prefix of a checkpoint file's bytes (part of the dense cache key)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a ``state_dict`` into ``model``: a ``.safetensors`` file, or a ``torch.save`` file
    read with ``torch.load(weights_only=True)`` (no code runs). Raises :class:`ModelError` in
    one line when the file is missing, unreadable, not a state dict or does not fit the model."""
    import torch

    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors header errors
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {first})"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) or lines[0] if lines else type(err).__name__
        raise ModelError(f"{path}: does not fit the model ({detail[:300]})") from err
