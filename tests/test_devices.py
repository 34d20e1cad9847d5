"""Devices (harness.devices, ``[suite] device``, ``--harness-device``, ``prune-harness run
--device``): a device that is not there is one line, never a silent fallback to the CPU; ``auto``
is the CPU on a machine without accelerators; the hardware fingerprint records the accelerator,
so baselines of one device never gate latencies or bit-reproducibility on another. The GPU tests
at the end run only where torch sees a CUDA device (they skip cleanly elsewhere)."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from harness import devices
from harness.baseline import same_hardware
from harness.numerics import reproducible
from harness.provenance import environment
from harness.results import CaseResult
from harness.spec import SpecError, SuiteSpec, suite_from_dict

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
CPU_ONLY = not HAS_CUDA and not HAS_MPS
DEVICE_CHOICES = 'must be "cpu", "cuda", "cuda:N", "mps" or "auto"'

SUITE = """\
[suite]
name = "dev"
dataset = "sklearn:digits"
{dataset_args}
model = "{model}"
model_args = {model_args}
seed = 0
{device}

[cv]
folds = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 16
warmup = 1
repeats = 3

[checks]
properties = false
differential = false

[[case]]
name = "magnitude-50"
prune = {{ method = "magnitude", sparsity = 0.5 }}
finetune = {{ epochs = 1, lr = 1e-3 }}

[[case]]
name = "structured-30"
prune = {{ method = "structured", sparsity = 0.3 }}
"""

# per-fold metrics that depend on the clock (or energy estimated from it), not on the numbers
TIMED = ("latency", "speedup", "energy")


def _text(
    device: str | None = None,
    *,
    model: str = "harness.models:mlp",
    model_args: str = "{ hidden = [16] }",
    dataset_args: str = "",
) -> str:
    line = f'device = "{device}"' if device is not None else ""
    return SUITE.format(device=line, model=model, model_args=model_args, dataset_args=dataset_args)


def _suite(where: Path, device: str | None = None, **kwargs: str) -> SuiteSpec:
    return suite_from_dict(tomllib.loads(_text(device, **kwargs)), str(where / "dev.toml"))


def _one_line(message: str) -> str:
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message
    return message


def _quality(result: CaseResult) -> dict[str, tuple[float, ...]]:
    return {
        name: summary.folds
        for name, summary in result.metrics.items()
        if not any(word in name for word in TIMED)
    }


# --------------------------------------------------------------------------------------------
# devices that are not there, and names that are no device


def _absent_problem(device: str) -> str | None:
    """What resolving ``device`` says on this machine (None: it is here)."""
    if device == "mps":
        return None if HAS_MPS else "no Apple MPS device is available here"
    index = int(device.partition(":")[2] or 0)
    if not HAS_CUDA:
        build = (torch.version.cuda and f"CUDA {torch.version.cuda}") or "a CPU-only build"
        return (
            f"no CUDA device is available here (torch {torch.__version__}, {build}); "
            'use device = "cpu" or "auto"'
        )
    count = torch.cuda.device_count()
    return None if index < count else f"this machine has {count} CUDA device(s)"


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_an_absent_device_is_one_line_naming_suite_device(tmp_path: Path, device: str) -> None:
    from harness.resolution import resolve

    problem = _absent_problem(device)
    if problem is None:
        pytest.skip(f"this machine has {device}")
    suite = _suite(tmp_path, device)
    assert suite.device == device
    with pytest.raises(SpecError) as info:
        resolve(suite)
    assert info.value.key == "suite.device"
    assert _one_line(str(info.value)) == (
        f"{tmp_path / 'dev.toml'}: suite.device = {device!r}: {problem}"
    )
    with pytest.raises(devices.DeviceError) as direct:
        devices.resolve(device)
    assert _one_line(str(direct.value)) == f"device = {device!r}: {problem}"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_run_case_on_an_absent_device_trains_nothing(tmp_path: Path) -> None:
    from harness.runner import DenseCache, run_case

    suite = _suite(tmp_path)
    cache = DenseCache()
    with pytest.raises(SpecError) as info:
        run_case(suite, suite.cases[0], cache=cache, device="cuda")
    assert info.value.key == "suite.device" and "no CUDA device" in str(info.value)
    assert len(cache) == 0 and cache.misses == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"gpu"', DEVICE_CHOICES),
        ('"GPU"', DEVICE_CHOICES),
        ('"CUDA"', DEVICE_CHOICES),
        ('"cuda:"', DEVICE_CHOICES),
        ('"cuda0"', DEVICE_CHOICES),
        ('"cuda:-1"', DEVICE_CHOICES),
        ('"cuda:1234"', DEVICE_CHOICES),
        ('"cpu "', DEVICE_CHOICES),
        ('""', DEVICE_CHOICES),
        ("1", "must be a string"),
    ],
)
def test_a_name_that_is_no_device_is_one_line(value: str, problem: str) -> None:
    text = _text().replace("seed = 0\n", f"seed = 0\ndevice = {value}\n", 1)
    with pytest.raises(SpecError) as info:
        suite_from_dict(tomllib.loads(text), "bad.toml")
    assert info.value.key == "suite.device"
    shown = value.replace('"', "'")
    assert _one_line(str(info.value)) == f"bad.toml: suite.device = {shown}: {problem}"
    if value.startswith('"'):
        with pytest.raises(devices.DeviceError) as direct:
            devices.resolve(value.strip('"'))
        assert _one_line(str(direct.value)).endswith(DEVICE_CHOICES)


def test_the_cpu_is_the_default_and_is_always_there() -> None:
    assert SuiteSpec.__dataclass_fields__["device"].default == "cpu"
    assert devices.resolve("cpu") == "cpu"
    assert devices.name("cpu") == "cpu"


@pytest.mark.skipif(not CPU_ONLY, reason="auto picks this machine's accelerator")
def test_auto_runs_on_the_cpu_here_and_equals_cpu(tmp_path: Path) -> None:
    from harness.runner import DenseCache, run_case

    assert devices.resolve("auto") == "cpu"
    cpu = _suite(tmp_path, "cpu")
    auto = _suite(tmp_path, "auto")
    assert auto.spec_hash(auto.cases[0]) == cpu.spec_hash(cpu.cases[0])  # the device is not hashed
    cache = DenseCache()
    on_cpu = run_case(cpu, cpu.cases[0], cache=cache)
    on_auto = run_case(auto, auto.cases[0], cache=cache)
    assert cache.hits == 2  # auto is the CPU: the same dense models
    assert _quality(on_auto) == _quality(on_cpu)
    for result in (on_cpu, on_auto):
        assert "device" not in result.env and "device" not in result.env["hardware"]
        assert reproducible(on_cpu.env, result.env) == ""
        assert same_hardware(on_cpu.env, result.env)
    # run_case's device overrides the suite's
    overridden = run_case(cpu, cpu.cases[0], cache=cache, device="auto")
    assert _quality(overridden) == _quality(on_cpu)


# --------------------------------------------------------------------------------------------
# the faces: CLI and pytest


def test_cli_device_that_is_no_device_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    (tmp_path / "dev.toml").write_text(_text(), encoding="utf-8")
    code = main(["run", str(tmp_path / "dev.toml"), "--no-mlflow", "--device", "gpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"prune-harness: --device gpu: {DEVICE_CHOICES}"]
    assert not (tmp_path / "baselines").exists()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cli_device_that_is_absent_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev.toml").write_text(_text(), encoding="utf-8")
    code = main(["run", "dev.toml", "--no-mlflow", "--device", "cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    # the option names the device, not the suite file (which sets none)
    assert lines[0].startswith("prune-harness: --device cuda: no CUDA device")
    assert not (tmp_path / "baselines").exists()


def _pytest(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real pytest session in ``where`` (the plugin loads from its entry point). A
    subprocess rather than ``pytester``: these sessions end at configuration or collection
    and need none of the in-process warm-up that the ``pytester`` fixture runs first."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_pytest_device_option_that_is_no_device_is_a_usage_error(tmp_path: Path) -> None:
    res = _pytest(tmp_path, "--harness-device=gpu")
    assert res.returncode == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"ERROR: --harness-device=gpu: {DEVICE_CHOICES}"]
    (tmp_path / "pytest.ini").write_text("[pytest]\nharness_device = cuda:x\n", encoding="utf-8")
    res = _pytest(tmp_path)
    assert res.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"harness_device (ini)=cuda:x: {DEVICE_CHOICES}" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_pytest_device_option_that_is_absent_is_one_collection_line(tmp_path: Path) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "dev.toml").write_text(_text(), encoding="utf-8")
    res = _pytest(tmp_path, "suites", "--harness-device=cuda", "--harness-no-mlflow")
    assert res.returncode == pytest.ExitCode.INTERRUPTED  # a collection error
    errors = [line for line in res.stdout.splitlines() if "--harness-device=cuda: " in line]
    assert errors, res.stdout
    assert "suite.device" not in res.stdout  # the option is named, not the suite file
    assert all("no CUDA device is available here" in line for line in errors)
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "baselines").exists()


# --------------------------------------------------------------------------------------------
# the hardware fingerprint


def test_the_fingerprint_records_an_accelerator_and_keeps_devices_apart() -> None:
    cpu = environment(2)
    h200 = environment(2, device="cuda NVIDIA H200")
    a100 = environment(2, device="cuda NVIDIA A100-SXM4-80GB")
    assert "device" not in cpu and "device" not in cpu["hardware"]
    assert h200["device"] == h200["hardware"]["device"] == "cuda NVIDIA H200"
    assert {k: v for k, v in h200["hardware"].items() if k != "device"} == cpu["hardware"]

    assert reproducible(cpu, copy.deepcopy(cpu)) == ""
    assert reproducible(h200, copy.deepcopy(h200)) == ""
    assert reproducible(cpu, h200) == "device cpu vs cuda NVIDIA H200"
    assert reproducible(h200, cpu) == "device cuda NVIDIA H200 vs cpu"
    assert reproducible(h200, a100) == "device cuda NVIDIA H200 vs cuda NVIDIA A100-SXM4-80GB"
    other_threads = copy.deepcopy(h200)
    other_threads["hardware"]["threads"] = 4
    assert reproducible(cpu, other_threads) == "threads 2 vs 4; device cpu vs cuda NVIDIA H200"

    assert same_hardware(cpu, copy.deepcopy(cpu))
    assert same_hardware(h200, copy.deepcopy(h200))
    assert not same_hardware(cpu, h200) and not same_hardware(h200, cpu)
    assert not same_hardware(h200, a100)
    # baselines recorded before devices were recorded (no key) are CPU runs
    explicit = {**cpu, "device": "cpu", "hardware": {**cpu["hardware"], "device": "cpu"}}
    assert same_hardware(cpu, explicit) and reproducible(cpu, explicit) == ""


# --------------------------------------------------------------------------------------------
# on a GPU (skipped without one)

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _fresh_run(suite: SuiteSpec, case_index: int) -> CaseResult:
    from harness.runner import DenseCache, run_case

    return run_case(suite, suite.cases[case_index], cache=DenseCache())


@needs_cuda
@pytest.mark.parametrize("case_index", [0, 1], ids=["magnitude-50", "structured-30"])
def test_a_suite_runs_on_cuda_reproducibly(tmp_path: Path, case_index: int) -> None:
    suite = _suite(tmp_path, "cuda")
    first = _fresh_run(suite, case_index)
    env = first.env
    name = f"cuda {torch.cuda.get_device_name(0)}"
    assert env["device"] == env["hardware"]["device"] == name == devices.name("cuda:0")
    for metric, summary in first.metrics.items():
        assert all(math.isfinite(v) for v in summary.folds), metric
    for model in ("dense", "pruned"):
        for timing in ("latency_ms_p50", "latency_batch_ms_p50"):
            assert all(v > 0 for v in first.metrics[f"{model}.{timing}"].folds)
    assert first.metrics["dense.accuracy"].mean > 0.3
    assert first.metrics["param_reduction"].mean > 0
    # deterministic kernels (cuBLAS workspace pinned): the same numbers again
    again = _fresh_run(suite, case_index)
    assert _quality(again) == _quality(first)
    assert reproducible(env, again.env) == ""
    cpu = environment(suite.threads)
    assert not same_hardware(cpu, env) and "device cpu vs cuda" in reproducible(cpu, env)


@needs_cuda
def test_images_through_a_resnet_with_structured_pruning_on_cuda(tmp_path: Path) -> None:
    suite = _suite(
        tmp_path,
        "cuda",
        model="harness.models:resnet",
        model_args="{ channels = [8, 16], blocks = 1 }",
        dataset_args="dataset_args = { shape = [1, 8, 8] }",
    )
    suite = dataclasses.replace(suite, edge=("shift:1", "occlusion:0.25"))
    result = _fresh_run(suite, 1)
    m = result.metrics
    assert all(v > 0 for v in m["param_reduction"].folds)
    assert all(math.isfinite(v) for v in m["pruned.edge.shift_1.accuracy"].folds)
    assert result.dataset["input"] == "float32[1x8x8]"
    # no rerun identity here: torch documents AdaptiveAvgPool2d's CUDA backward as
    # nondeterministic, and the runner's deterministic mode only warns about it


@pytest.mark.skipif(not HAS_MPS, reason="needs an Apple MPS device")
def test_a_suite_runs_on_mps(tmp_path: Path) -> None:
    result = _fresh_run(_suite(tmp_path, "mps"), 0)
    assert result.env["device"] == "mps"
    for metric, summary in result.metrics.items():
        assert all(math.isfinite(v) for v in summary.folds), metric
