"""Numerics: which CPU code paths torch computes with, pinned so results reproduce across CPUs.

The same code, seeds and torch build give different trained weights on CPUs with different
instruction sets: ATen's vectorized kernels, oneDNN (convolutions) and MKL (matrix products) each
pick the widest code path the CPU has (AVX-512 on one machine, AVX2 on the next), and a different
order of floating-point operations changes the last bits, which training amplifies.

**Portable mode** (the default on x86-64) pins them to what every x86-64 server and laptop CPU
of the last decade has (AVX2 and FMA, the x86-64-v3 level), by setting, *before torch is
imported*:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's vectorized CPU kernels (``DispatchStub``);
- ``ONEDNN_MAX_CPU_ISA=AVX2`` (and ``DNNL_MAX_CPU_ISA``, its older name): oneDNN's JIT kernels;
- ``MKL_CBWR=COMPATIBLE,STRICT``: MKL's Conditional Numerical Reproducibility. MKL honours an
  ``AVX2`` branch on Intel CPUs only (on AMD it falls back to its automatic choice, seen with
  ``MKL_VERBOSE=1``), so the only branch that gives the same bits on Intel and AMD is
  ``COMPATIBLE``; ``STRICT`` drops the memory-alignment condition.

What the pins cost is measured by ``nox -s bench-numerics`` (docs/numerics.md): a few percent of
training time on the reference models, more for large matrix products (MKL's compatible branch
is SSE2). Latency is therefore never measured under the pins: a pinned process measures it in a
separate native process (:func:`latency_needs_native_process`), with the kernels the model
ships with.

A variable the user set themselves is left as it is (and recorded as theirs). Nothing is pinned
on a CPU without AVX2 and FMA (the pins would be unsafe: ATen aborts with SIGILL on a capability
the CPU lacks) or on other architectures (arm64 has no common level to pin to); the mode is then
recorded as ``native`` with the reason. **Native mode** pins nothing: the widest kernels of the
machine, and results that reproduce only on the same CPU.

Children inherit the pins through the environment: :data:`ENV_MODE` carries the mode and
:data:`ENV_PINNED` the names of the variables the harness set, so a child process (an xdist
worker, a process the harness starts) knows they are not the user's.

This module imports nothing heavy: it must run before torch is imported.
"""

from __future__ import annotations

import atexit
import os
import pickle
import platform
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness._util import HarnessError

T = TypeVar("T")
FRAME = struct.Struct("<Q")  # the length prefix of a message to and from harness._child

MODES = ("portable", "native")
ENV_MODE = "PRUNE_HARNESS_NUMERICS"  # portable | native; the mode of this process and children
ENV_PINNED = "PRUNE_HARNESS_PINNED"  # comma-separated names of the variables the harness set
PORTABLE_LEVEL = "x86-64-v3"  # AVX2 + FMA: the level portable mode pins to
PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN < 2.x (older torch builds)
    "MKL_CBWR": "COMPATIBLE,STRICT",
}
# every variable that changes a numeric code path, pinned or not: recorded with each run
VARIABLES = (*PINS, "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "OPENBLAS_CORETYPE")

# x86-64 micro-architecture levels (psABI), from the CPU flags Linux reports
_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)


class NumericsError(HarnessError):
    """An unknown numerics mode; the message is one line naming the value."""


@dataclass(frozen=True)
class Numerics:
    """The numerics of this process, as recorded with every result.

    Attributes
    ----------
    mode : str
        ``"portable"`` when the code paths are pinned to :data:`PORTABLE_LEVEL`, else
        ``"native"`` (asked for, or portable was not possible: ``note`` says why).
    requested : str
        The mode asked for (option, flag, suite key or :data:`ENV_MODE`).
    level : str
        The level results are computed at: :data:`PORTABLE_LEVEL` in portable mode, else the
        CPU's own (``x86-64-v4``, ``x86-64-v3``, ..., or the architecture).
    variables : dict
        Every numeric-path variable that is set (:data:`VARIABLES`), with its value.
    user_set : tuple of str
        The names among ``variables`` that the user set (not the harness).
    late : bool
        torch was imported before the pins could be set: they may not have taken effect.
    note : str
        One line, when the mode is not what was asked for or the pins came late.
    """

    mode: str
    requested: str
    level: str
    variables: Mapping[str, str] = field(default_factory=dict)
    user_set: tuple[str, ...] = ()
    late: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "level": self.level,
            "variables": dict(sorted(self.variables.items())),
            "user_set": list(self.user_set),
            "late": self.late,
            **({"note": self.note} if self.note else {}),
        }

    def describe(self) -> str:
        """``portable (x86-64-v3)`` / ``native (x86-64-v4)``, plus user-set variables."""
        text = f"{self.mode} ({self.level})"
        if self.user_set:
            text += ", user-set " + " ".join(f"{k}={self.variables[k]}" for k in self.user_set)
        if self.late:
            text += ", pinned after torch was imported"
        return text


def host_level(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """The CPU's instruction-set level: ``x86-64-v4`` .. ``x86-64`` on x86-64 (from the CPU
    flags), else the architecture name (``arm64``)."""
    machine = _arch(machine or platform.machine())
    if machine != "x86_64":
        return machine
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "x86_64"  # flags not readable (not Linux): level unknown
    for i, (level, _needed) in enumerate(_LEVELS):
        if all(n <= flags for _, n in _LEVELS[i:]):  # a level includes the ones below it
            return level
    return "x86-64"


def cpu_flags() -> frozenset[str]:
    """The CPU flags from ``/proc/cpuinfo`` (Linux); empty where not readable."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _arch(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(m, m)


def portable_possible(level: str) -> str:
    """Why portable mode cannot pin on a machine of this level, or ``""`` if it can."""
    if level in ("x86-64-v3", "x86-64-v4"):
        return ""
    if level == "x86_64":
        return "the CPU's instruction set is not readable here, so AVX2 cannot be assumed"
    if level.startswith("x86-64"):
        return f"the CPU has no AVX2/FMA ({level}); results are those of its own kernels"
    return f"no portable level is defined on {level}; results are those of its own kernels"


_state: Numerics | None = None


def check_mode(value: str, where: str) -> str:
    """``value`` if it is a mode, else :class:`NumericsError` naming ``where``."""
    if value not in MODES:
        raise NumericsError(f"{where} = {value!r}: must be one of {', '.join(MODES)}")
    return value


def configure(mode: str | None = None, *, environ: dict[str, str] | None = None) -> Numerics:
    """Pin (portable) or unpin (native) the numeric code paths of this process.

    Call it before torch is imported; the faces (pytest plugin, CLI) and ``harness.runner`` do.
    ``mode`` None keeps the mode already configured, else :data:`ENV_MODE`, else portable.
    Variables the user set are left alone. If torch was imported first and this call changes a
    variable, the result says so (``late``) and prints one line to stderr.

    Raises
    ------
    NumericsError
        If ``mode`` (or :data:`ENV_MODE`) is not one of :data:`MODES`.
    """
    global _state
    env = os.environ if environ is None else environ
    if mode is None and _state is not None and environ is None:
        return _state
    requested = check_mode(mode or env.get(ENV_MODE) or "portable", ENV_MODE)
    ours = {v for v in env.get(ENV_PINNED, "").split(",") if v}
    user = {k for k in VARIABLES if k in env and k not in ours}
    level = host_level()
    reason = portable_possible(level) if requested == "portable" else ""
    pin = requested == "portable" and not reason
    before = {k: env.get(k) for k in PINS}
    for key, value in PINS.items():
        if key in user:
            continue
        if pin:
            env[key] = value
        else:
            env.pop(key, None)
    now_ours = sorted(k for k in PINS if pin and k not in user)
    env[ENV_MODE] = requested
    if now_ours:
        env[ENV_PINNED] = ",".join(now_ours)
    else:
        env.pop(ENV_PINNED, None)
    changed = any(env.get(k) != before[k] for k in PINS)
    late = changed and "torch" in sys.modules and environ is None
    note = ""
    if reason:
        note = f"numerics: portable mode not possible ({reason}); running native"
    if late:
        note = (
            f"numerics: torch was imported before prune-harness could set {requested} numerics;"
            " results may not reproduce on other CPUs (import harness, or run under pytest or"
            " prune-harness, before torch)"
        )
    state = Numerics(
        mode="portable" if pin else "native",
        requested=requested,
        level=PORTABLE_LEVEL if pin else level,
        variables={k: env[k] for k in VARIABLES if k in env},
        user_set=tuple(sorted(user)),
        late=late,
        note=note,
    )
    if environ is None:
        if late and (_state is None or not _state.late):
            print(f"prune-harness: {note}", file=sys.stderr)
        _state = state
    return state


def current() -> Numerics:
    """The numerics of this process (configured on first use)."""
    return _state if _state is not None else configure()


def reproducible(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """``""`` if runs recorded with environments ``a`` (the baseline) and ``b`` (this run) are
    expected to give bit-identical quality metrics, else one line naming the difference.

    Bit-reproducible means: the same architecture, torch build and thread count, and either both
    portable with the same pinned variables, or the same CPU model with the same variables.
    """
    fa, fb = a.get("hardware"), b.get("hardware")
    if not isinstance(fa, Mapping) or not isinstance(fb, Mapping):
        cpu = a.get("cpu", "an unknown CPU")
        return f"the baseline was recorded on {cpu} without a hardware fingerprint"
    diffs = []
    for key, label in (("arch", "architecture"), ("torch", "torch"), ("threads", "threads")):
        if fa.get(key) != fb.get(key):
            diffs.append(f"{label} {fa.get(key)} vs {fb.get(key)}")
    if fa.get("device", "cpu") != fb.get("device", "cpu"):
        diffs.append(f"device {fa.get('device', 'cpu')} vs {fb.get('device', 'cpu')}")
    na, nb = fa.get("numerics", {}), fb.get("numerics", {})
    portable = na.get("mode") == nb.get("mode") == "portable"
    va, vb = na.get("variables") or {}, nb.get("variables") or {}
    if va != vb:
        changed = ", ".join(
            f"{k}={va.get(k, '(unset)')} vs {vb.get(k, '(unset)')}"
            for k in sorted(set(va) | set(vb))
            if va.get(k) != vb.get(k)
        )
        ta, tb = _numerics_text(na), _numerics_text(nb)
        diffs.append(f"numerics {ta} vs {tb}" + (f": {changed}" if ta == tb else ""))
    elif not portable and fa.get("cpu") != fb.get("cpu"):
        diffs.append(f"native numerics on {fa.get('cpu')} vs {fb.get('cpu')}")
    if not diffs:
        return ""
    return "; ".join(diffs)


def _numerics_text(n: Mapping[str, Any]) -> str:
    mode, level = n.get("mode", "?"), n.get("level", "?")
    variables = n.get("variables") or {}
    extra = ""
    if mode == "native" and variables:
        extra = " " + " ".join(f"{k}={v}" for k, v in sorted(variables.items()))
    return f"{mode} ({level}{extra})"


def fingerprint(*, cpu: str, torch_build: str, threads: int, device: str = "cpu") -> dict[str, Any]:
    """What decides bit-reproducibility: architecture, CPU and its level, this process's
    numerics, the torch build (version and commit), the thread count and the accelerator the
    models ran on (absent for the CPU)."""
    return {
        **({"device": device} if device != "cpu" else {}),
        "arch": _arch(platform.machine()),
        "cpu": cpu,
        "isa": host_level(),
        "numerics": current().to_dict(),
        "torch": torch_build,
        "threads": threads,
    }


def latency_needs_native_process() -> bool:
    """Whether latency must be measured in a separate native process: this process's kernels
    are pinned (portable mode). Latency should reflect the kernels the model ships with, the
    machine's native ones, not MKL's compatible branch or AVX2 on an AVX-512 CPU."""
    return current().mode == "portable"


class ChildError(HarnessError, RuntimeError):
    """A child process of another numerics mode died; one line."""


class NotPicklableError(HarnessError, TypeError):
    """A call's function or arguments do not pickle, so no child process can run it."""


class Child:
    """One long-lived ``python -m harness._child`` process with ``mode``'s numerics.

    ``base`` is the environment to start from (default: this process's); variables in it that
    :data:`ENV_PINNED` names are the harness's and are re-pinned or dropped for ``mode``, the
    others count as the user's. :func:`run_in` keeps one per mode; calibration starts its own.
    """

    def __init__(self, mode: str, *, base: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ if base is None else base)
        configure(check_mode(mode, "mode"), environ=env)
        # the child imports what this process can (suite models from the rootdir, say)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        self.mode = mode
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness._child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the child; its exceptions propagate."""
        # this process's import path travels with every call: a user's module directory added
        # after the child started (a conftest, a plugin) resolves there too
        try:
            call = pickle.dumps((fn, args, kwargs))
        except (pickle.PicklingError, AttributeError, TypeError) as err:  # a lambda in a model
            raise NotPicklableError(f"cannot send to a {self.mode} child process: {err}") from err
        data = pickle.dumps(([p for p in sys.path if isinstance(p, str)], call))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            try:
                self.proc.stdin.write(FRAME.pack(len(data)) + data)
                self.proc.stdin.flush()
                header = self.proc.stdout.read(FRAME.size)
                if len(header) < FRAME.size:
                    raise EOFError("no answer")
                (size,) = FRAME.unpack(header)
                payload = self.proc.stdout.read(size)
                if len(payload) < size:
                    raise EOFError("truncated answer")
            except (OSError, EOFError) as err:
                code = self.proc.poll()
                self.close()
                raise ChildError(
                    f"the {self.mode}-numerics child process died (exit status {code}: {err})"
                ) from err
        ok, value = pickle.loads(payload)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_children: dict[str, Child] = {}


def run_in(mode: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a child process whose numerics are ``mode``.

    One long-lived child per mode, started on first use with that mode's variables, so torch
    is imported fresh under them (its caches live as long as this process). ``fn`` must be
    importable and its arguments and result must pickle. Exceptions raised by ``fn`` propagate;
    a child that dies raises :class:`ChildError` and is replaced on the next call.
    """
    check_mode(mode, "mode")
    child = _children.get(mode)
    if child is None or child.proc.poll() is not None:
        child = _children[mode] = Child(mode)
    try:
        return child.call(fn, *args, **kwargs)
    except ChildError:
        _children.pop(mode, None)
        raise


@atexit.register
def shutdown_children() -> None:
    """Stop the child processes :func:`run_in` started."""
    while _children:
        _, child = _children.popitem()
        child.close()
