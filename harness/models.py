"""Reference model factories and ``"module:callable"`` resolution for user models.

A model factory is called as ``factory(input_spec=..., n_classes=..., **model_args)`` when it has
an ``input_spec`` parameter (a :class:`harness.inputs.InputSpec`: one sample's ``shape``, its
``dtype``, the token ``vocab``, the named ``fields`` of a multi-input model), else as
``factory(in_features=..., n_classes=..., **model_args)`` with the number of values per sample.
It returns an ``nn.Module`` mapping a batch ``(N, *shape)`` (or keyword inputs, one per field) to
logits ``(N, n_classes)`` (a tensor, or an output with ``.logits``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from harness._util import HarnessError, import_user_callable
from harness.inputs import InputSpec


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


class _Residual(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Any) -> Any:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(
    input_spec: InputSpec, n_classes: int, *, channels: Sequence[int] = (16, 32), blocks: int = 1
) -> nn.Module:
    """A small ResNet (He et al. 2016) for images ``C x H x W``: a 3x3 stem, then ``blocks``
    residual blocks per stage of ``channels`` (stride 2 from the second stage), global average
    pooling and a linear classifier."""
    if len(input_spec.shape) != 3 or input_spec.is_tokens:
        raise ModelError(
            f"resnet needs float images C x H x W (the data are {input_spec.describe()}; "
            "dataset_args.shape reshapes them)"
        )
    if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"channels = {list(channels)}: must be positive integers")
    c_in = input_spec.shape[0]
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, channels[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(channels[0]),
        nn.ReLU(),
    ]
    width = channels[0]
    for stage, c in enumerate(channels):
        for b in range(blocks):
            layers.append(_Residual(width, c, 2 if stage > 0 and b == 0 else 1))
            width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes)]
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


def takes_input_spec(factory: Callable[..., Any]) -> bool:
    """Whether a factory has an ``input_spec`` parameter (else it gets ``in_features``)."""
    try:
        return "input_spec" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and the like: the old signature
        return False


def build(ref: str, spec: InputSpec | int, n_classes: int, args: Mapping[str, Any]) -> nn.Module:
    """Build a model for inputs ``spec`` (an int: flat features of that width); a factory
    that rejects its arguments raises :class:`ModelError`."""
    factory = resolve(ref)
    if isinstance(spec, int):
        spec = InputSpec((spec,))
    given: dict[str, Any] = (
        {"input_spec": spec} if takes_input_spec(factory) else {"in_features": spec.in_features}
    )
    try:
        model = factory(**given, n_classes=n_classes, **args)
    except ModelError:
        raise
    except Exception as err:  # a user factory may raise anything (torch: RuntimeError)
        raise ModelError(f"{ref} rejected model_args {dict(args)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def probe(
    model: nn.Module,
    ref: str,
    X: Any,
    n_classes: int,
    *,
    finite: bool = True,
    device: str | None = None,
) -> None:
    """Check a freshly built model before training it: it has trainable parameters and maps a
    batch (:data:`harness.inputs.Inputs`) to floating-point logits of shape ``(batch,
    n_classes)``, finite unless ``finite`` is false. Evaluation mode and no gradients: no random
    numbers are drawn and no statistics move."""
    import torch

    from harness import inputs

    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"{ref}: the model has no trainable parameters")
    shape = _shape_text(X)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = inputs.forward(model, inputs.to_batch(X, device))
    except Exception as err:  # the user's forward may raise anything
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ModelError(
            f"{ref}: forward on a batch of shape {shape} failed ({type(err).__name__}: {first})"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{ref}: forward returned {type(out).__name__}, not a tensor of logits")
    if not out.is_floating_point():
        raise ModelError(f"{ref}: forward returned {out.dtype} logits; expected floating point")
    if tuple(out.shape) != (inputs.count(X), n_classes):
        raise ModelError(
            f"{ref}: forward on a batch of shape {shape} returned shape "
            f"{tuple(out.shape)}; expected {(inputs.count(X), n_classes)} (batch, classes)"
        )
    if finite and not torch.isfinite(out).all():
        raise ModelError(f"{ref}: the untrained model already returns NaN or infinite logits")


def _shape_text(X: Any) -> str:
    if isinstance(X, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in X.items()) + "}"
    return f"{tuple(X.shape)}" if X.dtype == "float32" else f"{tuple(X.shape)} {X.dtype}"


def checkpoint_path(ref: str, base: Path) -> Path:
    """A checkpoint path of a suite, relative to the suite file's directory."""
    path = Path(ref)
    return path if path.is_absolute() else base / path


def checkpoint_digest(path: Path) -> str:
    """SHA-256 prefix of a checkpoint file's bytes (part of the dense cache key); hashed once
    per file version (size, mtime, inode), not on every fold."""
    st = path.stat()
    return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
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


# --------------------------------------------------------------------------------------------
# Token models


class _Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``o`` projections. The
    number of heads is ``q.out_features // head_dim`` at every call, so removing whole heads
    (``head_dim`` rows of ``q``, ``k`` and ``v`` at a time, and the matching inputs of ``o``)
    keeps the module working without any other change."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.head_dim = d_model // heads
        inner = self.head_dim * heads
        self.q = nn.Linear(d_model, inner)
        self.k = nn.Linear(d_model, inner)
        self.v = nn.Linear(d_model, inner)
        self.o = nn.Linear(inner, d_model)
        self.dropout = nn.Dropout(dropout)

    @property
    def heads(self) -> int:
        return self.q.out_features // self.head_dim

    def forward(self, x: Any, mask: Any = None) -> Any:
        import torch

        n, length, _ = x.shape
        h, d = self.q.out_features // self.head_dim, self.head_dim

        def split(t: Any) -> Any:  # (N, L, h * d) -> (N, h, L, d)
            return t.reshape(n, length, h, d).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-2, -1) / d**0.5
        if mask is not None:  # (N, L): 1 for tokens, 0 for padding (never attended to)
            keep = mask[:, None, None, :].to(torch.bool)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        attn = self.dropout(scores.softmax(-1))
        out = (attn @ v).transpose(1, 2).reshape(n, length, h * d)
        return self.o(out)


class _Block(nn.Module):
    """Pre-LN transformer encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp), nn.GELU(), nn.Linear(mlp, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Any, mask: Any = None) -> Any:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class _Transformer(nn.Module):
    """Token + learned positional embedding, pre-LN blocks, a final LayerNorm, the mean over
    the positions (those of the ``attention_mask`` when given), a linear classifier."""

    def __init__(
        self,
        vocab: int,
        max_len: int,
        n_classes: int,
        d_model: int,
        heads: int,
        layers: int,
        mlp: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, heads, mlp, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        import torch

        length = input_ids.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} > max_len = {self.max_len}")
        pos = torch.arange(length, device=input_ids.device)
        x = self.dropout(self.tokens(input_ids) + self.positions(pos))
        for block in self.blocks:
            x = block(x, attention_mask)
        x = self.ln(x)
        if attention_mask is None:
            pooled = x.mean(1)
        else:
            m = attention_mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)


def transformer(
    input_spec: InputSpec,
    n_classes: int,
    *,
    d_model: int = 32,
    heads: int = 4,
    layers: int = 2,
    mlp: int = 64,
    max_len: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Small pre-LN transformer encoder classifier for int64 token ids ``(N, L)``.

    ``input_spec`` (:class:`harness.inputs.InputSpec`) gives the vocabulary (``vocab``) and the
    sequence length (``shape == (L,)``, the default ``max_len``). The model takes a plain tensor
    ``input_ids`` or keywords ``input_ids=..., attention_mask=...``; the mask (1 = token,
    0 = padding) is used only when given: padded keys are not attended to and the mean pooling
    is over the masked-in positions. Every block has separate ``q``, ``k``, ``v``, ``o``
    ``nn.Linear`` layers whose head count is derived at call time from
    ``q.out_features // head_dim``, so structured pruning can remove whole heads.
    """
    vocab, shape = input_spec.vocab, tuple(input_spec.shape)
    if not input_spec.is_tokens or vocab is None:
        raise ModelError(
            f"transformer needs int64 token ids (the data are {input_spec.describe()})"
        )
    if len(shape) != 1:
        raise ModelError(f"transformer needs token ids of shape (N, L), not samples {shape}")
    for key, value in (("d_model", d_model), ("heads", heads), ("layers", layers), ("mlp", mlp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"transformer: {key} = {value!r} must be a positive integer")
    if d_model % heads:
        raise ModelError(f"transformer: d_model = {d_model} is not a multiple of heads = {heads}")
    length = shape[0] if max_len is None else max_len
    if length < shape[0]:
        raise ModelError(f"transformer: max_len = {max_len} < the sequence length {shape[0]}")
    if not 0 <= dropout < 1:
        raise ModelError(f"transformer: dropout = {dropout!r} must be in [0, 1)")
    return _Transformer(int(vocab), length, n_classes, d_model, heads, layers, mlp, dropout)
