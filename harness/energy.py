"""Analytic energy model of one inference at batch 1.

After Yang, Chen & Sze 2017 (*Designing Energy-Efficient Convolutional Neural Networks using
Energy-Aware Pruning*, CVPR): the energy of a layer is its computation energy plus its data
movement energy, each a count of operations times a per-operation cost. The costs are those of
Horowitz 2014 (*Computing's energy problem (and what we can do about it)*, ISSCC, 45 nm, 0.9 V),
see :data:`COSTS_PJ`. The model is deliberately simple and every number is traceable to the table.

Per prunable layer ``m`` (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``), with ``nnz``
its nonzero weights, ``P`` the uses of each weight in one inference (the output positions per
output unit: 1 for a linear layer on a ``(1, F)`` input, the output length for a ``Conv1d``),
``A_in`` / ``A_out`` the number of input / output activations at batch 1::

    macs          = nnz * P                       (zero weights are skipped)
    weight_reads  = nnz                           (each nonzero weight fetched once from DRAM)
    input_reads   = A_in                          (each input activation read once from SRAM)
    output_writes = A_out                         (each output activation written once to SRAM)
    compute_pj    = macs * COSTS_PJ["fp32_mac"]
    memory_pj     = weight_reads * COSTS_PJ["dram_read_32b"]
                    + input_reads * COSTS_PJ["sram_read_32b"]
                    + output_writes * COSTS_PJ["sram_write_32b"]

and the model's energy is the sum over its layers. A layer called several times in one forward
pass counts each call (``P``, ``A_in`` and ``A_out`` are summed over the calls).

Assumptions (the choices of this model):

* 32-bit floating point everywhere; a MAC is one fp32 multiply plus one fp32 add.
* Weights live in DRAM and are fetched once per inference (no weight cache between inferences);
  all uses of a fetched weight (the ``P`` output positions of a convolution) are served from a
  register, at no further memory cost.
* Activations live in an on-chip 8 KB SRAM: every input activation of a layer is read once and
  kept in a register for all its uses (ideal reuse), every output activation is accumulated in a
  register and written once. Padding zeros are generated, not read.
* Zero weights are skipped: sparse weights are stored compressed and neither fetched nor
  multiplied. The index overhead of the compressed format (e.g. CSR column indices) is **ignored**,
  so the model is an optimistic bound for unstructured sparsity.
* Biases (their fetch and their add), activation functions, pooling, flatten and normalisation
  layers are not counted, as FLOP counters do not count them either (``macs`` equals
  ``torch.utils.flop_counter`` FLOPs / 2 for a dense model). They are O(units), the weights
  O(units^2).
* Static energy, control and off-chip I/O of inputs / logits are not modelled.

The marginal energy of one nonzero weight of layer ``m`` (:func:`weight_energy_pj`) follows
directly: removing it saves ``P * fp32_mac + dram_read_32b`` and nothing else (the activation
traffic does not depend on the weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from harness import inputs
from harness.pruning.base import PRUNABLE, weight

COSTS_PJ: Mapping[str, float] = MappingProxyType(
    {
        # Horowitz 2014, ISSCC, 45 nm, 0.9 V: arithmetic (Fig. "Energy per operation")
        "int8_add": 0.03,
        "int32_add": 0.1,
        "fp16_add": 0.4,
        "fp32_add": 0.9,
        "int8_mult": 0.2,
        "int32_mult": 3.1,
        "fp16_mult": 1.1,
        "fp32_mult": 3.7,
        # derived: one multiply-accumulate = fp32_mult + fp32_add
        "fp32_mac": 3.7 + 0.9,
        # Horowitz 2014 gives memory energies per 64-bit access: 8 KB cache 10 pJ, 32 KB 20 pJ,
        # 1 MB 100 pJ, DRAM 1.3-2.6 nJ. The 32-bit figures are those halved, as tabulated from
        # Horowitz by Han et al. 2015 (Learning both Weights and Connections, Fig./Table 1):
        # 32-bit SRAM (8 KB cache) 5 pJ, 32-bit DRAM 640 pJ.
        "sram_read_32b": 5.0,
        "sram_write_32b": 5.0,  # assumption: a write costs what a read costs (one figure given)
        "dram_read_32b": 640.0,
    }
)


@dataclass(frozen=True)
class LayerTrace:
    """What one forward pass at batch 1 shows of a layer (summed over its calls).

    ``positions``: uses of each weight (``A_out / out_units``); ``input_per_unit``: input
    activations per input feature / channel (``A_in / in_units``).
    """

    inputs: int
    outputs: int
    positions: int
    input_per_unit: int


@dataclass(frozen=True)
class LayerEnergy:
    """Counts and energy (pJ) of one layer for one inference at batch 1.

    ``weights`` is the layer's total weight count (zeros included), ``weight_reads`` its nonzero
    weights (the DRAM fetches), ``macs`` its nonzero multiply-accumulates.
    """

    name: str
    kind: str
    macs: int
    weights: int
    weight_reads: int
    input_reads: int
    output_writes: int
    compute_pj: float
    memory_pj: float

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one inference: one :class:`LayerEnergy` per executed prunable layer."""

    layers: tuple[LayerEnergy, ...]

    @property
    def compute_pj(self) -> float:
        return sum(layer.compute_pj for layer in self.layers)

    @property
    def memory_pj(self) -> float:
        return sum(layer.memory_pj for layer in self.layers)

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals and per-layer counts and energies (pJ)."""
        return {
            "total_pj": self.total_pj,
            "compute_pj": self.compute_pj,
            "memory_pj": self.memory_pj,
            "layers": [{**asdict(layer), "total_pj": layer.total_pj} for layer in self.layers],
        }


def _units(module: nn.Module) -> tuple[int, int]:
    """(input units, output units): features of a linear layer, channels of a convolution."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    raise TypeError(f"not an energy-modelled layer: {type(module).__name__}")


def layer_traces(model: nn.Module, example: Any) -> dict[nn.Module, LayerTrace]:
    """Activation counts of every executed prunable layer, from one forward pass of
    ``example[:1]`` with forward hooks (no gradients, every module in eval mode, modes restored)."""
    counts: dict[nn.Module, list[int]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        n_in, n_out = _units(module)
        a_in, a_out = int(args[0].numel()), int(output.numel())
        c = counts.setdefault(module, [0, 0, 0, 0])
        c[0] += a_in
        c[1] += a_out
        c[2] += a_out // n_out
        c[3] += a_in // n_in

    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    handles = [m.register_forward_hook(hook) for m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            inputs.forward(model, inputs.take(example, slice(0, 1)))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return {m: LayerTrace(*counts[m]) for m in layers if m in counts}


def weight_cost_pj(positions: int) -> float:
    """Energy of one nonzero weight used at ``positions`` output positions: its MACs and fetch."""
    return positions * COSTS_PJ["fp32_mac"] + COSTS_PJ["dram_read_32b"]


def layer_energy(name: str, module: nn.Module, trace: LayerTrace) -> LayerEnergy:
    """The formulas of the module docstring for one layer."""
    w = weight(module).detach()
    nnz = int(torch.count_nonzero(w))
    macs = nnz * trace.positions
    memory = (
        nnz * COSTS_PJ["dram_read_32b"]
        + trace.inputs * COSTS_PJ["sram_read_32b"]
        + trace.outputs * COSTS_PJ["sram_write_32b"]
    )
    return LayerEnergy(
        name=name,
        kind=type(module).__name__,
        macs=macs,
        weights=w.numel(),
        weight_reads=nnz,
        input_reads=trace.inputs,
        output_writes=trace.outputs,
        compute_pj=macs * COSTS_PJ["fp32_mac"],
        memory_pj=memory,
    )


def estimate(model: nn.Module, example: Any) -> EnergyEstimate:
    """Energy of one inference of ``example[:1]``: every executed linear / convolution layer, in
    definition order, nonzero weights only (masked or zeroed weights are skipped)."""
    traces = layer_traces(model, example)
    return EnergyEstimate(
        tuple(
            layer_energy(name, m, traces[m])
            for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and m in traces
        )
    )


def weight_energy_pj(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, float]:
    """Energy (pJ) saved per inference by removing one nonzero weight, per executed prunable
    layer: ``P * fp32_mac + dram_read_32b`` (its MACs and its fetch; activation traffic is
    unchanged)."""
    return {m: weight_cost_pj(t.positions) for m, t in layer_traces(model, example).items()}
