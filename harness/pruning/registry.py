"""Name registry of pruning techniques (the names used in suite files)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from harness.pruning.base import Pruner
    from harness.spec import PruneSpec

_REGISTRY: dict[str, type[Pruner]] = {}
_BUILTIN_MODULES = (
    "harness.pruning.magnitude",
    "harness.pruning.structured",
    "harness.pruning.taylor",
    "harness.pruning.snip",
    "harness.pruning.regularized",
    "harness.pruning.student",
    "harness.pruning.obd",
    "harness.pruning.obs",
    "harness.pruning.wanda",
    "harness.pruning.sparsegpt",
    "harness.pruning.lrp",
    "harness.pruning.energy_aware",
    "harness.pruning.auto",
)
P = TypeVar("P", bound="type[Pruner]")

# Case keys that combine with any method above: (key = value, what it does, reference).
CASE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        'schedule = "oneshot"',
        "Prune to the target sparsity in one round, then fine-tune.",
        "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks",
    ),
    (
        'schedule = "iterative"',
        "Geometric rounds: each removes the same fraction of what remains; fine-tune between.",
        "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks",
    ),
    (
        'schedule = "agp"',
        "Automated gradual pruning: cubic s_t = s(1 - (1 - t/N)^3); fine-tune between rounds.",
        "Zhu & Gupta 2017, To prune, or not to prune",
    ),
    (
        'pattern = "N:M"',
        "Semi-structured: keep N of every M consecutive input weights of each row (mask "
        "methods, sparsegpt); sparsity = 1 - N/M.",
        "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks (2:4); "
        "Zhou et al. 2021, Learning N:M Fine-grained Structured Sparse Neural Networks",
    ),
    (
        "distill = { temperature, alpha }",
        "Fine-tune the pruned student against the dense teacher's soft targets.",
        "Hinton et al. 2015, Distilling the Knowledge in a Neural Network",
    ),
    (
        'deploy = "csr"',
        "Linear layers at >= 90 % zeros run as torch sparse CSR matrices (measured latency).",
        "torch.sparse; Gale et al. 2020, Sparse GPU Kernels for Deep Learning",
    ),
    (
        'deploy = "onnx"',
        "Export to ONNX, run in ONNX Runtime (CPU); logits checked against torch's.",
        "ONNX Runtime; extra prune-harness[onnx]",
    ),
    (
        'deploy = "int8"',
        "Linear layers in int8 (per-channel weights, per-row activations, exact int32 sums).",
        "Jacob et al. 2018, Quantization and Training of Neural Networks for Integer Inference",
    ),
    (
        'deploy = "2:4"',
        "2:4 linear weights as semi-structured sparse tensors (CUDA >= 8.0; dense elsewhere).",
        "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks",
    ),
)


def register(cls: P) -> P:
    """Class decorator: make a :class:`Pruner` available under ``cls.name``."""
    old = _REGISTRY.get(cls.name)
    if old is not None and _qualname(old) != _qualname(cls):  # a re-import replaces itself
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
        raise KeyError(
            f"unknown pruning method {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def create(spec: PruneSpec) -> Pruner:
    return get(spec.method)(spec)
