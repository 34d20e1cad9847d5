"""Sparse deployment of unstructured pruning: linear layers as torch sparse CSR matrices.

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
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = ["SparseLinear", "csr_layers", "to_sparse_csr"]

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
