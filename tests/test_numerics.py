"""Portable numerics: the pins, their bookkeeping, child processes, and bit-identity across the
numeric code paths another CPU would take (simulated here by capping this CPU's paths)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import numerics
from harness.numerics import (
    ENV_MODE,
    ENV_PINNED,
    PINS,
    Child,
    ChildError,
    NumericsError,
    configure,
    host_level,
    reproducible,
)

V3 = frozenset(
    [
        "avx",
        "avx2",
        "bmi1",
        "bmi2",
        "f16c",
        "fma",
        "movbe",
        "xsave",
        "cx16",
        "lahf_lm",
        "popcnt",
        "sse4_1",
        "sse4_2",
        "ssse3",
    ]
)
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
# what a CPU without AVX2 would pick, and what portable mode must pin over
OLD_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
}
needs_avx2 = pytest.mark.skipif(
    host_level() not in ("x86-64-v3", "x86-64-v4"), reason="portable numerics need x86-64 AVX2"
)


def test_host_level_from_cpu_flags() -> None:
    assert host_level(V4, "x86_64") == "x86-64-v4"
    assert host_level(V3, "x86_64") == "x86-64-v3"
    assert host_level(V3 - {"fma"}, "x86_64") == "x86-64-v2"
    assert host_level(V4 - {"popcnt"}, "x86_64") == "x86-64"  # a level includes those below
    assert host_level(frozenset(), "x86_64") == "x86_64"  # flags unreadable
    assert host_level(V4, "aarch64") == "arm64"
    assert host_level(V4, "AMD64") == "x86-64-v4"


def test_portable_is_refused_where_no_common_level_exists() -> None:
    assert numerics.portable_possible("x86-64-v4") == ""
    assert numerics.portable_possible("x86-64-v3") == ""
    assert "no AVX2" in numerics.portable_possible("x86-64-v2")
    assert "arm64" in numerics.portable_possible("arm64")


@needs_avx2
def test_portable_pins_what_the_user_did_not_set() -> None:
    env = {"ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"}
    state = configure("portable", environ=env)
    assert state.mode == "portable" and state.level == "x86-64-v3"
    assert env["ATEN_CPU_CAPABILITY"] == "default"  # the user's, left alone and recorded
    assert state.user_set == ("ATEN_CPU_CAPABILITY",)
    assert "user-set ATEN_CPU_CAPABILITY=default" in state.describe()
    for key in set(PINS) - {"ATEN_CPU_CAPABILITY"}:
        assert env[key] == PINS[key]
    assert env[ENV_MODE] == "portable"
    assert set(env[ENV_PINNED].split(",")) == set(PINS) - {"ATEN_CPU_CAPABILITY"}
    assert env["PATH"] == "/bin"


@needs_avx2
def test_a_child_tells_inherited_pins_from_the_users() -> None:
    parent: dict[str, str] = {}
    configure("portable", environ=parent)
    child = dict(parent)
    state = configure(None, environ=child)  # the mode travels in the environment
    assert state.mode == "portable" and state.user_set == ()
    native = dict(parent, MKL_CBWR="AUTO")  # the user changed one in between
    native[ENV_PINNED] = ",".join(k for k in PINS if k != "MKL_CBWR")
    state = configure("native", environ=native)
    assert state.mode == "native"
    assert native == {"MKL_CBWR": "AUTO", ENV_MODE: "native"}  # the harness's pins are gone
    assert state.variables == {"MKL_CBWR": "AUTO"} and state.user_set == ("MKL_CBWR",)


def test_an_unknown_mode_is_one_line() -> None:
    with pytest.raises(NumericsError, match=r"PRUNE_HARNESS_NUMERICS = 'fast': must be one of"):
        configure(None, environ={ENV_MODE: "fast"})


def _env(**hardware: Any) -> dict[str, Any]:
    base = {
        "arch": "x86_64",
        "cpu": "Intel Xeon",
        "isa": "x86-64-v4",
        "numerics": {"mode": "portable", "level": "x86-64-v3", "variables": dict(PINS)},
        "torch": "2.13.0+cpu (abc)",
        "threads": 1,
    }
    return {"cpu": base["cpu"], "hardware": {**base, **hardware}}


def test_reproducible_across_cpus_only_in_portable_mode() -> None:
    native = {"mode": "native", "level": "x86-64-v4", "variables": {}}
    assert reproducible(_env(), _env(cpu="AMD EPYC", isa="x86-64-v3")) == ""
    assert reproducible(_env(numerics=native), _env(numerics=native)) == ""  # same CPU
    other = reproducible(_env(numerics=native), _env(numerics=native, cpu="AMD EPYC"))
    assert other == "native numerics on Intel Xeon vs AMD EPYC"
    mixed = reproducible(_env(numerics=native), _env())
    assert mixed == "numerics native (x86-64-v4) vs portable (x86-64-v3)"
    machine_set = {"mode": "portable", "level": "x86-64-v3", "variables": {**PINS, "X": "1"}}
    assert reproducible(_env(), _env(numerics=machine_set)) == (
        "numerics portable (x86-64-v3) vs portable (x86-64-v3): X=(unset) vs 1"
    )  # the same mode and level: the variable that differs is named
    assert reproducible(_env(), _env(arch="arm64")) == "architecture x86_64 vs arm64"
    assert reproducible(_env(), _env(torch="2.14.1")) == "torch 2.13.0+cpu (abc) vs 2.14.1"
    old = reproducible({"cpu": "Intel Xeon"}, _env())
    assert old == "the baseline was recorded on Intel Xeon without a hardware fingerprint"


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in PINS and k != ENV_PINNED}
    full.pop(ENV_MODE, None)
    return subprocess.run(
        [sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True
    )


CAPABILITY = "import harness, torch; print(torch.backends.cpu.get_cpu_capability())"


@needs_avx2
def test_importing_harness_pins_torch_before_it_loads() -> None:
    assert _python(CAPABILITY).stdout.strip() == "AVX2"
    assert _python(CAPABILITY, ATEN_CPU_CAPABILITY="default").stdout.strip() == "DEFAULT"
    native = _python(CAPABILITY, PRUNE_HARNESS_NUMERICS="native")
    assert native.returncode == 0 and native.stderr == ""


def test_torch_imported_first_is_said_in_one_line_and_recorded() -> None:
    out = _python("import torch, harness.numerics as n; print(n.current().late)")
    if host_level() in ("x86-64-v3", "x86-64-v4"):
        assert out.stdout.strip() == "True"
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("prune-harness: numerics: torch was imported before")
    else:  # nothing to pin, nothing late
        assert out.stdout.strip() == "False"


def _crash() -> None:
    os._exit(3)


def test_a_child_process_runs_calls_and_reports_its_death() -> None:
    child = Child("native")
    try:
        assert child.call(numerics.current).mode == "native"
        with pytest.raises(ValueError, match="invalid literal"):
            child.call(int, "x")  # exceptions travel back
        with pytest.raises(ChildError, match=r"native-numerics child process died \(exit status"):
            child.call(_crash)
    finally:
        child.close()
    assert numerics.run_in("native", numerics.current).mode == "native"  # a fresh one


def train_fingerprint(epochs: int = 2) -> dict[str, Any]:
    """Train a small CNN (conv: oneDNN, linear: MKL, elementwise: ATen) and a 2-fold case;
    return a hash of the trained weights and the case's quality metrics."""
    import torch

    from harness.models import cnn1d
    from harness.runner import run_case
    from harness.spec import suite_from_dict

    torch.manual_seed(0)
    torch.set_num_threads(1)
    X, y = torch.randn(256, 40), torch.randint(0, 10, (256,))
    model = cnn1d(in_features=40, n_classes=10, channels=[16, 16])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(epochs):
        for i in range(0, 256, 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    suite = suite_from_dict(
        {
            "suite": {
                "name": "t",
                "dataset": "mnist1d",
                "model": "harness.models:cnn1d",
                "model_args": {"channels": [8]},
                "dataset_args": {"num_samples": 600},
            },
            "cv": {"folds": 2},
            "train": {"epochs": 2, "lr": 1e-2, "batch_size": 50},
            "latency": {"batch": 8, "warmup": 0, "repeats": 1},
            "checks": {"properties": False, "differential": False},
            "case": [
                {
                    "name": "s",
                    "prune": {"method": "structured", "sparsity": 0.3},
                    "finetune": {"epochs": 1, "lr": 5e-3, "batch_size": 50},
                }
            ],
        }
    )
    result = run_case(suite, suite.case("s"))
    quality = {
        k: v.folds
        for k, v in result.metrics.items()
        if not k.split(".")[-1].startswith("lat")
        and "speedup" not in k
        and "energy_measured" not in k
    }
    return {
        "weights": digest.hexdigest(),
        "quality": json.dumps(quality, sort_keys=True),
        "numerics": result.env["hardware"]["numerics"],
    }


def _on_path(mode: str, path: dict[str, str]) -> dict[str, Any]:
    """``train_fingerprint`` in a fresh process whose CPU 'picks' ``path``; in portable mode the
    path is marked as the harness's own, as a CPU's own choice is, so the pins replace it."""
    base = {k: v for k, v in os.environ.items() if k not in PINS and k != ENV_PINNED}
    base.update(path)
    if mode == "portable" and path:
        base[ENV_PINNED] = ",".join(path)
    child = Child(mode, base=base)
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        import test_numerics as me  # importable by name in the child (tests/ is on its path)

        return child.call(me.train_fingerprint)
    finally:
        child.close()


@pytest.mark.slow
@needs_avx2
def test_portable_numerics_are_bit_identical_across_numeric_paths() -> None:
    native_here = _on_path("native", {})
    native_old = _on_path("native", OLD_CPU)
    portable_here = _on_path("portable", {})
    portable_old = _on_path("portable", OLD_CPU)
    # the paths matter: natively, the "old CPU" trains other weights
    assert native_old["weights"] != native_here["weights"]
    # portable mode pins over them: the same bits, the same quality metrics
    assert portable_old["weights"] == portable_here["weights"]
    assert portable_old["quality"] == portable_here["quality"]
    assert portable_old["numerics"] == portable_here["numerics"]
    assert portable_here["numerics"]["mode"] == "portable"
    assert native_old["numerics"]["user_set"] == sorted(OLD_CPU)


def test_the_suite_key_is_checked() -> None:
    from harness.spec import SpecError, suite_from_dict

    data = {
        "suite": {"name": "x", "dataset": "sklearn:wine", "numerics": "fast"},
        "case": [{"name": "a", "prune": {"method": "magnitude", "sparsity": 0.5}}],
    }
    with pytest.raises(SpecError, match=r"suite.numerics = 'fast': must be one of portable"):
        suite_from_dict(data)
    data["suite"]["numerics"] = "native"
    assert suite_from_dict(data).numerics == "native"


@pytest.mark.slow
def test_a_native_suite_runs_in_a_native_process() -> None:
    from harness.runner import run_case
    from harness.spec import suite_from_dict

    suite = suite_from_dict(
        {
            "suite": {"name": "x", "dataset": "sklearn:wine", "numerics": "native"},
            "cv": {"folds": 2},
            "train": {"epochs": 2},
            "latency": {"batch": 8, "warmup": 0, "repeats": 1},
            "checks": {"properties": False, "differential": False},
            "case": [{"name": "a", "prune": {"method": "magnitude", "sparsity": 0.5}}],
        }
    )
    before = numerics.current()
    result = run_case(suite, suite.case("a"))
    assert result.env["numerics"] == "native"
    assert result.env["latency_kernels"] == "this process (native)"
    assert numerics.current() == before  # this process's numerics are untouched


def test_the_pytest_option_and_ini_setting(pytester: pytest.Pytester) -> None:
    bad = pytester.runpytest_subprocess("--harness-numerics", "fast", "--co")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--harness-numerics=fast: must be one of portable, native*"])
    pytester.makeini("[pytest]\nharness_numerics = native\n")
    native = pytester.runpytest_subprocess("--co")
    native.stdout.fnmatch_lines(["prune-harness: numerics native (*)"])
    pytester.makeini("[pytest]\nharness_numerics = quick\n")
    wrong = pytester.runpytest_subprocess("--co")
    assert wrong.ret == pytest.ExitCode.USAGE_ERROR
    wrong.stderr.fnmatch_lines(["*harness_numerics (ini) = 'quick': must be one of*"])


@pytest.mark.slow
def test_cli_records_the_numerics_mode(tiny_project: pytest.Pytester) -> None:
    env = {k: v for k, v in os.environ.items() if k not in PINS and k != ENV_PINNED}
    env.pop(ENV_MODE, None)
    cmd = [sys.executable, "-m", "harness.cli", "run", "suites/tiny.toml", "--case", "mag-50"]
    run = subprocess.run(
        [*cmd, "--regen", "--no-mlflow", "--numerics", "native"],
        cwd=tiny_project.path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("numerics: native (")
    data = json.loads((tiny_project.path / "baselines/tiny/mag-50.json").read_text())
    assert data["env"]["numerics"] == "native"
    assert data["env"]["hardware"]["numerics"]["variables"] == {}
    bad = subprocess.run(
        [*cmd, "--numerics", "fast"], cwd=tiny_project.path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'fast'" in bad.stderr


def _noisy() -> str:
    os.write(1, b"written to fd 1 by C code\n")
    print("printed by Python")
    return "answer"


def test_output_of_the_called_code_does_not_break_the_child_protocol() -> None:
    child = Child("native")
    try:
        assert child.call(_noisy) == "answer"
        assert child.call(_noisy) == "answer"
    finally:
        child.close()


def test_the_nox_tests_session_clears_every_numerics_variable() -> None:
    """noxfile.py names the variables it clears for the harness's own tests by hand (nox's
    Python has no harness to import): they are exactly harness.numerics.VARIABLES."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / "noxfile.py").read_text())
    (names,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") == "NUMERICS_VARIABLES" for t in node.targets)
    ]
    assert set(names) == set(numerics.VARIABLES)
