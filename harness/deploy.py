"""Deployment runtimes of a pruned model: torch sparse CSR, ONNX Runtime, int8, 2:4 sparse.

``deploy`` of a case picks how the pruned model ships (:func:`deploy`); the harness measures its
quality and latency in that runtime, and counts parameters, sparsity and FLOPs on the torch model
it came from (:func:`counted`):

- ``"csr"``: :func:`to_sparse_csr`, below.
- ``"onnx"``: :class:`OnnxModule`, the model exported to ONNX and run by ONNX Runtime's CPU
  provider (optional extra ``prune-harness[onnx]``).
- ``"int8"``: :class:`Int8Module`, every ``nn.Linear`` as :class:`Int8Linear` (int8 weights per
  output channel, int8 activations per row, exact int32 products).
- ``"2:4"``: :class:`SemiStructuredModule`, linear weights as torch semi-structured sparse tensors
  on a CUDA device of compute capability >= 8.0; dense elsewhere, with a :class:`DeployWarning`.

Sparse CSR deployment of unstructured pruning: linear layers as torch sparse CSR matrices.

Unstructured pruning (Han et al. 2015, *Learning both Weights and Connections for Efficient Neural
Networks*) zeroes individual weights, but a dense ``nn.Linear`` still multiplies by every zero.
:func:`to_sparse_csr` returns a copy of a model in which each ``nn.Linear`` whose weight has at
least ``min_sparsity`` zeros is replaced by a :class:`SparseLinear` that stores the weight ``W``
(``out x in``) in compressed sparse row form and computes, for a batch ``X`` (``N x in``),

    ``Y = (b 1^T + W_csr X^T)^T``   with ``torch.addmm(b[:, None], W_csr, X.T).T``  (N > 1)
    ``y = b + W_csr x``             with ``torch.addmv(b, W_csr, x)``               (N = 1)

which equals ``X W^T + b`` (``nn.Linear``) up to float summation order.

Choices (measured on torch 2.13 CPU, one thread; see ``benchmarks/bench_sparse.py``):

- ``addmm`` with the CSR matrix on the left beat ``torch.sparse.mm``, ``torch.mm`` + bias,
  ``F.linear`` with a CSR weight (2-8x slower, and it fails under ``torch.inference_mode``) and
  ``X @ W_csr.T`` (CSC on the right, 2-4x slower at batch 256). At batch 1 ``addmv`` is 1.5-3x
  faster than ``addmm`` with a one-column matrix.
- Indices are stored as int32 (int64 when a layer has 2**31 or more entries): 1.2-2.5x faster
  than int64 in ``addmv`` and half the index memory.
- The CSR matrix is kept as three plain tensors: ``weight_values`` (an ``nn.Parameter`` holding
  the ``nnz`` non-zeros, so ``model.parameters()`` counts what is stored) and the buffers
  ``weight_crow_indices`` / ``weight_col_indices``. A sparse tensor cannot be deep-copied and
  ``count_nonzero`` has no CSR kernel, so neither would survive ``copy.deepcopy`` or
  :func:`harness.metrics.model_stats` as a parameter or buffer. The CSR view over the three tensors
  is built once and cached (building costs about 3 us, as much as a small layer's product).
- :class:`SparseLinear` subclasses ``nn.Linear`` so that code which finds layers with
  ``isinstance(m, nn.Linear)`` (``harness.pruning.prunable_modules``, the layer sparsity and FLOP
  accounting) still sees it; its ``weight`` is a property returning the dense matrix. The
  weights are frozen (``requires_grad=False``): this is an inference format.
- Only modules of exact type ``nn.Linear`` are converted: a subclass may override ``forward`` or
  be used through its ``weight`` by its parent (``MultiheadAttention.out_proj``).
- torch's FLOP counter has no formula for ``mv`` / ``addmv``; one is registered (``2 * out * in``,
  as for ``addmm``) so that FLOPs of a converted model at batch 1 are counted like a dense one's.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from harness._util import HarnessError
from harness.spec import nm_pattern

__all__ = [
    "DEPLOY_RTOL",
    "DeployError",
    "DeployWarning",
    "Deployed",
    "Int8Linear",
    "Int8Module",
    "OnnxModule",
    "SemiStructuredModule",
    "SparseLinear",
    "counted",
    "csr_layers",
    "deploy",
    "deploy_metrics",
    "missing_runtime",
    "to_int8",
    "to_onnx",
    "to_semi_structured",
    "to_sparse_csr",
]

_PARTS = ("weight_values", "weight_crow_indices", "weight_col_indices")
_CACHED = (*_PARTS, "bias")
_INT32_MAX = 2**31 - 1
_BETA_WARNING = "Sparse CSR tensor support is in beta state"  # torch's, on first use


class SparseLinear(nn.Linear):
    """``y = x W^T + b`` with ``W`` held as a torch sparse CSR matrix (inference only).

    Parameters
    ----------
    weight:
        Dense weight, shape ``(out_features, in_features)``; its exact zeros are not stored.
    bias:
        Dense bias of shape ``(out_features,)`` or None.
    """

    weight_values: Tensor
    weight_crow_indices: Tensor
    weight_col_indices: Tensor

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a dense weight
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        # per inference-mode flag: (CSR view, bias, bias as a column); see _operands
        self._cache: dict[bool, tuple[Tensor, Tensor | None, Tensor | None]] = {}
        self._encode(weight)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias shape {tuple(bias.shape)} != ({self.out_features},)")
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        """A :class:`SparseLinear` computing what ``linear`` computes (same training flag)."""
        module = cls(linear.weight, linear.bias)
        module.train(linear.training)
        return module

    def _encode(self, weight: Tensor) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _BETA_WARNING, UserWarning)
            csr = weight.detach().to_sparse_csr()
        index = torch.int32 if max(weight.numel(), weight.shape[1]) <= _INT32_MAX else torch.int64
        self._set(
            csr.values().clone(),
            csr.crow_indices().to(index).contiguous(),
            csr.col_indices().to(index).contiguous(),
        )

    def _set(self, values: Tensor, crow: Tensor, col: Tensor) -> None:
        self._parameters.pop("weight_values", None)
        self.register_parameter("weight_values", nn.Parameter(values, requires_grad=False))
        self.register_buffer("weight_crow_indices", crow)
        self.register_buffer("weight_col_indices", col)
        self._cache.clear()

    @property
    def weight_csr(self) -> Tensor:
        """The weight as a sparse CSR tensor (a view over the stored tensors, cached)."""
        return self._operands()[0]

    def _operands(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """CSR weight, bias and bias column, built once per inference-mode flag (tensors made
        under ``torch.inference_mode`` must not be saved for backward outside it). The CSR
        tensor is a view: in-place changes of the stored tensors show through; replacing them
        (``_apply``, ``load_state_dict``, assignment) drops the cache."""
        inference = torch.is_inference_mode_enabled()
        cached = self._cache.get(inference)
        if cached is None:
            values, crow, col = (
                self.weight_values,
                self.weight_crow_indices,
                self.weight_col_indices,
            )
            shape = (self.out_features, self.in_features)  # checked when encoded or loaded
            csr = torch.sparse_csr_tensor(crow, col, values.detach(), shape, check_invariants=False)
            bias = None if self.bias is None else self.bias.detach()
            cached = (csr, bias, None if bias is None else bias.unsqueeze(1))
            self._cache[inference] = cached
        return cached

    @property
    def weight(self) -> Tensor:
        """The dense weight ``(out_features, in_features)`` (a new tensor on every access)."""
        return self.weight_csr.to_dense()

    @weight.setter
    def weight(self, value: Tensor) -> None:
        if tuple(value.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight shape {tuple(value.shape)} != ({self.out_features}, {self.in_features})"
            )
        self._encode(value)

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) weights."""
        return int(self.weight_values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of the ``out_features * in_features`` weights that are zero."""
        total = self.out_features * self.in_features
        return 1.0 - self.nnz / total if total else 0.0

    def forward(self, input: Tensor) -> Tensor:
        csr, bias, bias_col = self._operands()
        if input.dim() == 2:  # the fast path: (N, in_features)
            if input.shape[0] == 1:
                return _matvec(csr, input[0], bias).unsqueeze(0)
            if bias_col is None:
                return torch.mm(csr, input.T).T
            return torch.addmm(bias_col, csr, input.T).T  # (N, out), column-major
        if input.dim() == 1:
            return _matvec(csr, input, bias)
        flat = self.forward(input.reshape(-1, self.in_features))
        return flat.reshape(*input.shape[:-1], self.out_features)

    def reset_parameters(self) -> None:
        raise NotImplementedError("SparseLinear holds trained weights; there is nothing to reset")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nnz={self.nnz}, sparsity={self.sparsity:.4f}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = {}  # sparse tensors cannot be deep-copied; rebuilt on use
        return state

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CACHED:
            self._cache.clear()
        super().__setattr__(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        super()._apply(fn, recurse)
        self._cache.clear()  # the stored tensors may have been replaced
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # another layer's nnz differs from ours: take its sizes, then let nn.Module copy
        incoming = [state_dict.get(prefix + name) for name in _PARTS]
        if all(isinstance(t, Tensor) for t in incoming):
            fresh: list[Tensor] = []
            for name, t in zip(_PARTS, incoming, strict=True):
                assert isinstance(t, Tensor)
                p = getattr(self, name)
                fresh.append(torch.empty(t.shape, dtype=p.dtype, device=p.device))
            self._set(*fresh)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._cache.clear()
        try:
            torch.sparse_csr_tensor(
                self.weight_crow_indices,
                self.weight_col_indices,
                self.weight_values.detach(),
                (self.out_features, self.in_features),
                check_invariants=True,
            )
        except RuntimeError as err:
            error_msgs.append(f"{prefix}: not a valid CSR matrix for {self.extra_repr()}: {err}")


def _matvec(csr: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    return torch.mv(csr, x) if bias is None else torch.addmv(bias, csr, x)


def to_sparse_csr(model: nn.Module, min_sparsity: float = 0.9) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Linear`` of weight sparsity ``>= min_sparsity``
    (at least ``round(min_sparsity * n)`` of its ``n`` weights zero, the count pruning to
    ``min_sparsity`` leaves) replaced by a :class:`SparseLinear`; ``model`` itself is not
    modified.

    Pruning masks (``weight_orig`` / ``weight_mask`` of ``torch.nn.utils.prune``) are folded into
    the copy first. A module shared at several places is replaced at all of them. A model without
    an eligible layer comes back as a (mask-folded) copy.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity = {min_sparsity!r}: must be in [0, 1]")
    out = _copy(model)
    _fold_masks(out)
    sparse: dict[int, SparseLinear] = {}
    for m in out.modules():
        if type(m) is nn.Linear and id(m) not in sparse and _eligible(m.weight, min_sparsity):
            sparse[id(m)] = SparseLinear.from_linear(m)
    if id(out) in sparse:
        return sparse[id(out)]
    for parent in out.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in sparse:
                parent._modules[key] = sparse[id(child)]
    return out


def csr_layers(model: nn.Module) -> list[str]:
    """Names (as in ``named_modules``) of the :class:`SparseLinear` layers of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, SparseLinear)]


def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy``, also when a pruning hook left a non-leaf masked weight (a forward pass
    with gradients on), which the deepcopy protocol refuses: such tensors are copied detached."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                t = getattr(m, hook._tensor_name, None)
                if isinstance(t, Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _fold_masks(model: nn.Module) -> None:
    """Make every ``torch.nn.utils.prune`` reparametrization of ``model`` permanent."""
    for m in model.modules():
        names = [
            h._tensor_name
            for h in m._forward_pre_hooks.values()
            if isinstance(h, prune.BasePruningMethod)
        ]
        for name in names:
            prune.remove(m, name)


def _eligible(w: Tensor, min_sparsity: float) -> bool:
    """At least ``round(min_sparsity * n)`` of the ``n`` weights are zero: the count a pruner
    asked for ``min_sparsity`` removes (a 90 % layer of 32,768 weights has 29,491 zeros, a
    fraction just below 0.9)."""
    zeros = w.numel() - int(torch.count_nonzero(w))
    return w.numel() > 0 and zeros >= round(min_sparsity * w.numel())


def _register_matvec_flops() -> None:
    """Count ``mv`` / ``addmv`` in ``torch.utils.flop_counter`` as ``2 * rows * cols`` (like
    ``addmm`` with one column), unless torch already does."""
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def mv_flop(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return 2 * int(a_shape[0]) * int(a_shape[1])

    def addmv_flop(
        self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
    ) -> int:
        return mv_flop(a_shape, b_shape)

    for op, formula in ((aten.mv, mv_flop), (aten.addmv, addmv_flop)):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


_register_matvec_flops()


# --------------------------------------------------------------------------------------------
# Deployment runtimes: ONNX Runtime, int8, 2:4 semi-structured sparsity

# Default tolerance of a deployment's logits against the torch model's, relative to the logit
# scale: max |z_runtime - z_torch| <= DEPLOY_RTOL * (1 + max |z_torch|). The form and the value
# of harness.checks.BATCH_RTOL: what reordered float32 sums (another GEMM, fused operators) move
# a logit by, with orders of magnitude to spare (float32's epsilon is 1.2e-7), while a wrong
# graph (a dropped mask, a missed bias) moves it by far more.
DEPLOY_RTOL = 1e-4

# deploy value -> (modules it imports, the extra that installs them)
_RUNTIME_MODULES: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnx", "onnxruntime"), "onnx"),
}
_INT8_MAX = 127  # activations: [-127, 127]
_WEIGHT_MAX = 63  # weights: [-63, 63], see Int8Linear
_INT32_SAFE_K = (2**31 - 1) // (_INT8_MAX * _WEIGHT_MAX)  # inputs per output without overflow


class DeployError(HarnessError):
    """The case's ``deploy`` cannot run here (one line; the runner names ``case[NAME].deploy``)."""


class DeployWarning(UserWarning):
    """A deployment that runs, but not as asked: ``deploy = "2:4"`` without a 2:4 kernel."""


class Deployed(nn.Module):
    """A pruned torch model (``source``, a submodule: parameter counts, FLOPs and sparsity are
    taken from it, see :func:`counted`) running in a deployment runtime (``forward``)."""

    runtime: str = ""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.source = source

    def stored_state(self) -> dict[str, Any]:
        """What the deployment stores: the ``state_dict`` whose serialized size is the model's
        ``size_bytes`` (the torch model's unless the runtime stores other weights)."""
        return self.source.state_dict()

    @property
    def accelerated_layers(self) -> int | None:
        """Linear layers that run in the runtime's own kernel (None: the whole graph does)."""
        return None


def counted(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The torch model whose parameters, sparsity and FLOPs are counted, and the state whose
    serialized bytes are its size: ``(model.source, model.stored_state())`` for a
    :class:`Deployed` model, ``(model, model.state_dict())`` otherwise."""
    if isinstance(model, Deployed):
        return model.source, model.stored_state()
    return model, model.state_dict()


def missing_runtime(kind: str) -> str | None:
    """Why ``deploy = kind`` cannot run in this environment (an optional dependency is not
    installed), or None."""
    import importlib.util

    needed, extra = _RUNTIME_MODULES.get(kind, ((), ""))
    for module in needed:
        try:
            missing = importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # blocked (sys.modules[module] = None) or broken
            missing = True
        if missing:
            return f"needs {module}, which is not installed (pip install 'prune-harness[{extra}]')"
    return None


def check(kind: str, *, device: str = "cpu", pattern: str | None = None) -> str | None:
    """Why ``deploy = kind`` cannot run for a case pruned with ``pattern`` on ``device``, or
    None. ``"2:4"`` needs ``prune.pattern = "2:4"`` (it ships the pattern the pruner made; any
    device: without a kernel the model runs dense); ``"int8"`` runs on the CPU on any device
    (:class:`Int8Module` copies its inputs there and its logits back)."""
    if kind in ("csr", "onnx"):
        return missing_runtime(kind)
    if kind == "int8":
        return None
    if kind == "2:4":
        if nm_pattern(pattern) != (2, 4):
            return f'needs prune.pattern = "2:4" (the case prunes with pattern = {pattern!r})'
        return None
    return f'unknown deployment (known: "csr", "onnx", "int8", "2:4"), not {kind!r}'


def deploy(
    kind: str,
    model: nn.Module,
    example: Any,
    *,
    threads: int = 1,
    device: str = "cpu",
    pattern: str | None = None,
) -> nn.Module:
    """``model`` (pruned, on ``device``) as ``deploy = kind`` ships it.

    Parameters
    ----------
    kind:
        ``"csr"`` (:func:`to_sparse_csr`), ``"onnx"`` (:func:`to_onnx`), ``"int8"``
        (:func:`to_int8`) or ``"2:4"`` (:func:`to_semi_structured`).
    example:
        A batch of the model's inputs (a tensor, or a dict of tensors for named inputs): traced
        by the ONNX exporter.
    threads:
        ONNX Runtime's intra-op threads (the suite's thread count).
    pattern:
        The case's ``prune.pattern`` (``"2:4"`` requires it).

    Raises
    ------
    DeployError
        :func:`check`'s problem, or an export that failed.
    """
    problem = check(kind, device=device, pattern=pattern)
    if problem is not None:
        raise DeployError(problem)
    if kind == "csr":
        return to_sparse_csr(model)
    if kind == "onnx":
        return to_onnx(model, example, threads=threads)
    if kind == "int8":
        return to_int8(model)
    return to_semi_structured(model, device)


def deploy_metrics(deployed: Any, source: Any) -> dict[str, float]:
    """Output equivalence of a deployment: ``deploy_max_abs_diff`` = max |z_runtime - z_torch|
    over the samples and classes of the logits ``deployed`` / ``source`` (arrays ``N x C``), and
    ``deploy_rel_diff`` = that / (1 + max |z_torch|), the quantity :data:`DEPLOY_RTOL` bounds."""
    import numpy as np

    a, b = np.asarray(deployed, dtype=np.float64), np.asarray(source, dtype=np.float64)
    if a.shape != b.shape:
        raise DeployError(f"the deployed model returns logits {a.shape}, the torch model {b.shape}")
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = 1.0 + (float(np.abs(b).max()) if b.size else 0.0)
    return {"deploy_max_abs_diff": diff, "deploy_rel_diff": diff / scale}


def _folded(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` with its pruning masks made permanent."""
    out = _copy(model)
    _fold_masks(out)
    return out.eval()


# -- ONNX Runtime


class _Logits(nn.Module):
    """``model``'s logits (:func:`harness.inputs.logits_of`), the one output of the graph, from
    positional inputs: ``model(x)``, or ``model(**dict(zip(names, args)))`` for named inputs
    (both exporters trace positional arguments alike)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: Tensor) -> Tensor:
        from harness.inputs import logits_of

        if self.names is None:
            return logits_of(self.model(*args))
        return logits_of(self.model(**dict(zip(self.names, args, strict=True))))


class OnnxModule(Deployed):
    """A model exported to ONNX, run by ONNX Runtime's CPU execution provider.

    Called like the torch model (a tensor, or keywords for named inputs); returns the logits as
    a torch tensor on the input's device. The ONNX bytes are kept and the session is built on
    first use, so the module deep-copies and pickles (a latency child process rebuilds it).

    Session: ``intra_op_num_threads = threads`` (the suite's), ``inter_op_num_threads = 1``,
    sequential execution, all graph optimizations, deterministic compute, no spinning of idle
    pool threads (they would take cores from the other workers of a process executor). MLAS
    splits a GEMM by output blocks and reduces each output in a fixed order, so the same model,
    inputs, thread count and CPU give bit-identical logits; another instruction set (AVX2 vs
    AVX-512 vs NEON kernels) or thread count may change the last bits.

    Parameters
    ----------
    source:
        The torch model the graph was exported from.
    model_bytes:
        The serialized ONNX model (one output: the logits, batch axis dynamic).
    names:
        The torch call's input names in order (positional arguments are fed to these).
    threads:
        ONNX Runtime's intra-op threads.
    """

    runtime = "onnx"

    def __init__(
        self, source: nn.Module, model_bytes: bytes, names: tuple[str, ...], *, threads: int = 1
    ) -> None:
        super().__init__(source)
        if threads < 1:
            raise ValueError(f"threads = {threads}: must be >= 1")
        self.model_bytes = bytes(model_bytes)
        self.names = tuple(names)
        self.threads = int(threads)
        self._session: Any = None

    @property
    def session(self) -> Any:
        """The ONNX Runtime inference session (built once per process)."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.use_deterministic_compute = True
            options.log_severity_level = 3  # errors only
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(
                self.model_bytes, options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        import numpy as np

        session = self.session
        given = dict(zip(self.names, args, strict=False))
        if len(args) > len(self.names):
            raise TypeError(f"takes {len(self.names)} inputs ({', '.join(self.names)})")
        given.update(kwargs)
        feeds: dict[str, Any] = {}
        device = None
        for spec in session.get_inputs():
            if spec.name not in given:
                raise TypeError(f"missing input {spec.name!r} (the graph takes {self.names})")
            value = given[spec.name]
            if isinstance(value, Tensor):
                device = device or value.device
                value = value.detach().cpu().numpy()
            feeds[spec.name] = np.ascontiguousarray(value, dtype=_ORT_TYPES.get(spec.type))
        (logits,) = session.run(None, feeds)[:1]
        out = torch.from_numpy(np.asarray(logits))
        return out if device is None or device.type == "cpu" else out.to(device)

    def extra_repr(self) -> str:
        return f"onnx_bytes={len(self.model_bytes)}, inputs={self.names}, threads={self.threads}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_session"] = None  # not picklable; rebuilt from model_bytes on first use
        return state


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def to_onnx(model: nn.Module, example: Any, *, threads: int = 1) -> OnnxModule:
    """``model`` exported to ONNX and run by ONNX Runtime (:class:`OnnxModule`).

    The graph is traced on (up to) two rows of ``example`` (a tensor, or a dict of tensors
    passed as keywords) with the batch axis dynamic, so batch 1 and the latency batch run the
    same graph; its single output is the logits. Exporter: torch's ``torch.export``-based one
    (``dynamo=True``, the default since torch 2.9; it needs onnxscript), else, or when it cannot
    trace the model, the TorchScript one (deprecated; its warnings are silenced here).
    """
    from collections.abc import Mapping

    problem = missing_runtime("onnx")
    if problem is not None:
        raise DeployError(problem)
    source = _folded(model)
    named = isinstance(example, Mapping)
    rows = int(next(iter(example.values())).shape[0]) if named else int(example.shape[0])
    if rows < 1:
        raise DeployError("the example batch to trace the ONNX graph with is empty")
    take = torch.tensor([0, min(1, rows - 1)])  # two rows: a batch axis of size 1 specializes
    names = tuple(str(k) for k in example) if named else ("input",)
    tensors = list(example.values()) if named else [example]
    args = tuple(t.detach().cpu()[take] for t in tensors)
    cpu = _Logits(copy.deepcopy(source).cpu().eval(), names if named else None)
    errors: list[str] = []
    for exporter in (_export_dynamo, _export_torchscript):
        try:
            data = exporter(cpu, args, names)
        except Exception as err:  # either exporter may reject a model in its own way
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            errors.append(f"{exporter.__doc__}: {first[:200]}")
            continue
        if data is None:
            continue
        deployed = OnnxModule(source, data, names, threads=threads)
        try:  # ONNX Runtime loads and runs the graph now: a failure is this one line, not later
            with torch.inference_mode():
                deployed(*args)
        except Exception as err:  # an opset or operator this onnxruntime lacks, a bad graph
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            errors.append(f"{exporter.__doc__}: onnxruntime cannot run it: {first[:200]}")
            continue
        return deployed
    raise DeployError(f"ONNX export failed ({'; '.join(errors) or 'no exporter'})")


def _export_dynamo(
    model: nn.Module, args: tuple[Tensor, ...], names: tuple[str, ...]
) -> bytes | None:
    """torch.export-based exporter"""
    import importlib.util
    import inspect
    import logging

    if importlib.util.find_spec("onnxscript") is None:
        return None
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch < 2.5
        return None
    batch = torch.export.Dim("batch")
    dynamic = (tuple({0: batch} for _ in args),)  # forward(*args): one tuple of them
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.ERROR)  # "torchvision is not installed", progress lines
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=list(names),
                output_names=["logits"],
                optimize=True,
                verbose=False,
            )
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    if program is None:
        return None
    return bytes(program.model_proto.SerializeToString())


def _export_torchscript(
    model: nn.Module, args: tuple[Tensor, ...], names: tuple[str, ...]
) -> bytes | None:
    """TorchScript exporter"""
    import io

    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}}
    flag: dict[str, Any] = {"dynamo": False} if _has_dynamo_flag() else {}
    export: Any = torch.onnx.export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the dynamo exporter came first
        export(
            model,
            args,
            buf,
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            **flag,
        )
    return buf.getvalue()


def _has_dynamo_flag() -> bool:
    import inspect

    return "dynamo" in inspect.signature(torch.onnx.export).parameters


# -- int8


class Int8Linear(nn.Module):
    """``y = x W^T + b`` in int8: symmetric per-output-channel weights, per-row activations.

    With ``s_o = max_i |W_oi| / 63`` and ``Q_oi = round(W_oi / s_o)`` (stored, int8, as
    ``Q^T``), a row ``x`` is quantized on the fly with ``t = max_i |x_i| / 127``,
    ``q_i = round(x_i / t)``, and

        ``y_o = t * s_o * sum_i q_i Q_oi + b_o``

    where the sum is exact in int32 (``torch._int_mm``; ``127 * 63 * in_features < 2^31``).
    Choices:

    - Weights on a 7-bit grid (``|Q| <= 63``): x86 int8 GEMMs without VNNI (AVX2's
      ``vpmaddubsw``, which oneDNN's ``_int_mm`` uses) add pairs of ``u8 * s8`` products in
      saturating int16, and with the activations shifted to ``u8`` a pair reaches
      ``255 * 127 * 2 > 32767`` (measured: sums off by 10^4-10^5 on an AVX2 CPU). With
      ``|Q| <= 63`` a pair is at most 32130: exact on every kernel. fbgemm's ``reduce_range``
      exists for the same reason. Every process also checks ``_int_mm`` once against an int64
      product on a worst case and uses an int32 ``matmul`` where it is not exact.
    - One scale per row, so a row's output does not depend on the other rows of its batch
      (torch's ``quantize_dynamic`` takes one activation scale per batch, which breaks the
      harness's batch-invariance check). Integer sums have no order: outputs are bit-identical
      for any thread count and CPU.
    - No ``torch.ao.quantization``: deprecated (its warning names torchao as the successor, which
      torch does not ship), and its packed weights depend on the quantized engine (fbgemm / x86 /
      qnnpack). Nothing here depends on an engine setting.

    A pruned weight stays exactly 0. Per product the error is at most
    ``(t |Q_oi| s_o + s_o |x_i| + t s_o / 2) / 2``.

    Parameters
    ----------
    weight:
        Dense weight ``(out_features, in_features)``.
    bias:
        ``(out_features,)`` or None (kept in float32).
    """

    weight_int8: Tensor
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        if self.in_features > _INT32_SAFE_K:
            raise DeployError(
                f"int8: a linear layer of {self.in_features} inputs could overflow int32 sums "
                f"(at most {_INT32_SAFE_K})"
            )
        with torch.no_grad():
            w = weight.detach().to("cpu", torch.float32)
            scale = _scale(w.abs().amax(1), _WEIGHT_MAX)
            q = torch.round(w / scale[:, None]).clamp_(-_WEIGHT_MAX, _WEIGHT_MAX).to(torch.int8)
        self.register_buffer("weight_int8", _dense_strides(q.T))
        self.register_buffer("weight_scale", scale)
        b = None if bias is None else bias.detach().to("cpu", torch.float32).clone()
        self.register_buffer("bias", b)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``s_o Q_oi`` (float32, ``out x in``)."""
        return self.weight_int8.T.float() * self.weight_scale[:, None]

    def forward(self, input: Tensor) -> Tensor:
        x = input.reshape(-1, self.in_features).float()
        t = _scale(x.abs().amax(1, keepdim=True)) if x.shape[0] else x.new_ones(0, 1)
        q = torch.round(x / t).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        acc = _int_mm(q, self.weight_int8)
        y = acc.float() * t * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*input.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype=int8"
        )


def _scale(amax: Tensor, top: int = _INT8_MAX) -> Tensor:
    """``amax / top``, 1 where ``amax`` is 0 (an all-zero row quantizes to zeros)."""
    return torch.where(amax > 0, amax / top, torch.ones_like(amax))


def _int_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of int8 matrices (activations, weights of ``|b| <= 63``) in exact int32:
    ``torch._int_mm`` where it is exact on this CPU (:func:`_int_mm_exact`), else an int32
    ``matmul``."""
    if a.shape[0] and _int_mm_exact():
        return torch._int_mm(_dense_strides(a), _dense_strides(b))
    return a.to(torch.int32) @ b.to(torch.int32)


def _dense_strides(t: Tensor) -> Tensor:
    """``t`` with row-major strides also along axes of size 1: ``_int_mm`` reads a ``(1, n)``
    matrix of strides ``(1, 1)`` (what ``.T.contiguous()`` of an ``(n, 1)`` one keeps, and which
    ``is_contiguous()`` accepts) as if it were column-major, and returns wrong sums."""
    want = tuple(int(torch.Size(t.shape[i + 1 :]).numel()) for i in range(t.dim()))
    if t.stride() == want:
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


@functools.cache
def _int_mm_exact() -> bool:
    """Whether ``torch._int_mm`` equals the int64 product on the worst case of
    :class:`Int8Linear` (activations at +-127, weights at +-63, every sign pattern), at batch
    1 and batch 32 (different kernels)."""
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    k = 256
    b = (torch.randint(0, 2, (k, 64), generator=g) * 2 - 1).to(torch.int8) * _WEIGHT_MAX
    for n in (1, 32):
        a = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8) * _INT8_MAX
        a[0] = _INT8_MAX  # a row of equal signs: the largest pair sums
        try:
            got = torch._int_mm(a, b)
        except (RuntimeError, NotImplementedError):
            return False
        if not torch.equal(got.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64)):
            return False
    return True


class Int8Module(Deployed):
    """The torch model with every ``nn.Linear`` as :class:`Int8Linear` (``quantized``); its
    ``size_bytes`` is that of the int8 weights (:meth:`stored_state`). Other layers (conv,
    embedding, normalization) stay float32, as in dynamic quantization."""

    runtime = "int8"

    def __init__(self, source: nn.Module) -> None:
        super().__init__(source)
        quantized = copy.deepcopy(source).cpu().eval()
        converted: dict[int, Int8Linear] = {}
        for m in quantized.modules():
            if type(m) is nn.Linear and id(m) not in converted:
                converted[id(m)] = Int8Linear.from_linear(m)
        if id(quantized) in converted:
            quantized = converted[id(quantized)]
        for parent in quantized.modules():
            for key, child in list(parent._modules.items()):
                if child is not None and id(child) in converted:
                    parent._modules[key] = converted[id(child)]
        self.quantized = quantized
        self.layers = len(converted)

    def stored_state(self) -> dict[str, Any]:
        return self.quantized.state_dict()

    @property
    def accelerated_layers(self) -> int:
        return self.layers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The int8 model on the CPU (its kernels are the CPU's, whatever the suite's device):
        tensors from another device are copied to the CPU and the logits back to it."""
        found = [v.device for v in (*args, *kwargs.values()) if isinstance(v, Tensor)]
        device = found[0] if found else None
        if device is None or device.type == "cpu":
            return self.quantized(*args, **kwargs)
        cpu = [a.cpu() if isinstance(a, Tensor) else a for a in args]
        named = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        return self.quantized(*cpu, **named).to(device)


def to_int8(model: nn.Module) -> Int8Module:
    """``model`` (pruning masks folded) with its linear layers in int8 (:class:`Int8Module`)."""
    return Int8Module(_folded(model))  # the source stays on its device; the int8 copy: CPU


# -- 2:4 semi-structured sparsity


class SemiStructuredModule(Deployed):
    """The torch model with its 2:4-sparse linear weights as torch semi-structured sparse tensors
    (``runner``; the source itself where no kernel exists, ``note`` saying so)."""

    runtime = "2:4"

    def __init__(self, source: nn.Module, runner: nn.Module, layers: int, note: str = "") -> None:
        super().__init__(source)
        self.runner = runner
        self.layers = layers
        self.note = note

    @property
    def accelerated_layers(self) -> int:
        return self.layers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)


def is_2_4(weight: Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive inputs of every row."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = (weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    return bool((groups <= 2).all())


def semi_structured_unavailable(device: str) -> str | None:
    """Why no kernel accelerates 2:4 sparsity on ``device``, or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"no kernel accelerates 2:4 sparsity on {device}: the model runs dense"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return (
            f"no kernel accelerates 2:4 sparsity on {device} (compute capability "
            f"{major}.{minor} < 8.0): the model runs dense"
        )
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "this torch has no torch.sparse.to_sparse_semi_structured: the model runs dense"
    return None


def to_semi_structured(model: nn.Module, device: str = "cpu") -> SemiStructuredModule:
    """``model`` with each ``nn.Linear`` whose weight is 2:4 sparse (:func:`is_2_4`) holding it
    as ``torch.sparse.to_sparse_semi_structured`` (CUTLASS / cuSPARSELt kernels, CUDA compute
    capability >= 8.0). Elsewhere the model runs dense and a :class:`DeployWarning` says so; a
    layer whose shape or dtype the kernels refuse stays dense."""
    source = _folded(model)
    note = semi_structured_unavailable(device)
    if note is not None:
        warnings.warn(note, DeployWarning, stacklevel=2)
        return SemiStructuredModule(source, source, 0, note)
    runner = copy.deepcopy(source)
    count = 0
    for m in runner.modules():
        if type(m) is nn.Linear and is_2_4(m.weight):
            try:
                sparse = torch.sparse.to_sparse_semi_structured(m.weight.detach())
            except (RuntimeError, ValueError):  # shape or dtype without a kernel: stays dense
                continue
            m.weight = nn.Parameter(sparse, requires_grad=False)
            count += 1
    if count == 0:
        note = "no linear layer is 2:4 sparse in a shape the kernels take: the model runs dense"
        warnings.warn(note, DeployWarning, stacklevel=2)
    return SemiStructuredModule(source, runner, count, note or "")
