"""Devices: ``device = "cpu" | "cuda" | "cuda:N" | "mps" | "auto"`` resolved to a torch device
string, named for the hardware fingerprint, and synchronized around timings.

``auto`` takes CUDA when torch sees a CUDA device, else Apple's MPS, else the CPU. A device that
is not there is one line (:class:`DeviceError`), never a fallback: a gate asked to measure on a
GPU that silently measured on the CPU would compare the wrong thing.
"""

from __future__ import annotations

import os
from typing import Any

from harness._util import HarnessError
from harness.spec import device_problem


class DeviceError(HarnessError):
    """A device that is not available here; one line."""


def resolve(value: str) -> str:
    """The torch device string for ``value``; raises :class:`DeviceError` when it is absent."""
    import torch

    if (problem := device_problem(value)) is not None:
        raise DeviceError(f"device = {value!r}: {problem}")
    if value == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if _mps_available():
            return "mps"
        return "cpu"
    if value == "cpu":
        return "cpu"
    if value == "mps":
        if not _mps_available():
            raise DeviceError(f"device = {value!r}: no Apple MPS device is available here")
        return "mps"
    index = int(value.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        build = (torch.version.cuda and f"CUDA {torch.version.cuda}") or "a CPU-only build"
        raise DeviceError(
            f"device = {value!r}: no CUDA device is available here (torch {torch.__version__}, "
            f'{build}); use device = "cpu" or "auto"'
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device = {value!r}: this machine has {count} CUDA device(s)")
    _deterministic_cuda()
    return f"cuda:{index}"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _deterministic_cuda() -> None:
    """cuBLAS is deterministic only with a fixed workspace (torch's reproducibility notes); set
    before the first CUDA call, unless the user set it."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def name(device: str) -> str:
    """What the fingerprint records: ``cpu``, or the accelerator's model (``cuda NVIDIA H200``)."""
    if device.startswith("cuda"):
        import torch

        return f"cuda {torch.cuda.get_device_name(torch.device(device))}"
    return device


def synchronize(device: Any) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    text = str(device)
    if text.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(text))
    elif text == "mps":
        import torch

        torch.mps.synchronize()
