"""Inputs of any shape and type (harness.inputs) end to end: datasets keep their sample shape
(``dataset_args.shape`` / ``kind``, shaped npz files, user datasets of named arrays or torch
Datasets), scaling per feature / per channel / not at all, what model factories are told, a
user's Conv2d model through a real run (and refused in one line on flat rows), and the edge sets
on images ``C x H x W`` and on token sequences with attention masks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from harness.data import Dataset, Fold, load_dataset, make_folds
from harness.data.edge import check_edge, make_edge_set
from harness.data.registry import DatasetError
from harness.edgesets import parse_edge
from harness.inputs import InputSpec
from harness.spec import SpecError, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]
MODULE = "inputs_usermods"  # the user module every test here imports (one name per session)

USER_MODULE = '''\
"""A user's own models and datasets, imported as ``module:callable``."""
import math

import numpy as np
import torch
from torch import nn

SEEN = {}  # what the factories were called with


def old_factory(in_features, n_classes, width=4):
    SEEN["old"] = in_features
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                         nn.Linear(width, n_classes))


def new_factory(input_spec, n_classes, width=4):
    SEEN["new"] = input_spec
    return nn.Sequential(nn.Flatten(), nn.Linear(input_spec.in_features, width), nn.ReLU(),
                         nn.Linear(width, n_classes))


def lenet(in_features, n_classes, width=6):
    """LeNet-style: two 3x3 conv + pool stages on one-channel square images, no reshape."""
    side = math.isqrt(in_features)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (side // 4) ** 2, 24), nn.ReLU(),
        nn.Linear(24, n_classes),
    )


def tokens(n=60, length=10, vocab=20, seed=0):
    """Token ids 1..vocab-1 on the first 1..length positions, padding id 0 (mask 0) after."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    sizes = rng.integers(1, length + 1, size=n)
    sizes[:3] = (1, 2, length)  # the shortest and the longest sequences occur
    for i, size in enumerate(sizes):
        ids[i, :size] = rng.integers(1, vocab, size=size)
        mask[i, :size] = 1
    ids[0, 0] = vocab - 1  # the largest id occurs: vocab is known
    return {"X": {"input_ids": ids, "attention_mask": mask}, "y": np.arange(n) % 3}


class Pairs(torch.utils.data.Dataset):
    """A torch Dataset of ({"input_ids", "attention_mask"}, label) pairs."""

    def __init__(self, n=12, length=5):
        self.ids = torch.arange(n * length).reshape(n, length) % 7 + 1
        self.mask = (torch.arange(length) < 3).long().repeat(n, 1)
        self.y = torch.arange(n) % 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.y[i]


def pairs(n=12, length=5):
    return Pairs(n, length)
'''

LENET_SUITE = """\
[suite]
name = "lenet"
dataset = "sklearn:digits"
{dataset_args}
model = "{module}:lenet"
seed = 0

[cv]
folds = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 16
warmup = 1
repeats = 2

[checks]
properties = false
differential = false

[[case]]
name = "structured-40"
prune = {{ method = "structured", sparsity = 0.4 }}
"""


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("user-modules")
    (where / f"{MODULE}.py").write_text(USER_MODULE, encoding="utf-8")
    return where


@pytest.fixture
def user_module(module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user module importable as ``inputs_usermods``; its directory."""
    monkeypatch.syspath_prepend(str(module_dir))
    return module_dir


def _one_line(message: str) -> str:
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message
    return message


def _npz(path: Path, X: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, X=X, y=y)
    return f"npz:{path.name}"


# --------------------------------------------------------------------------------------------
# 1. datasets keep their sample shape


def test_shape_reshapes_each_sample_and_keeps_the_values() -> None:
    flat = load_dataset("sklearn:digits")
    image = load_dataset("sklearn:digits", {"shape": [1, 8, 8]})
    assert flat.X.shape == (1797, 64) and flat.sample_shape == (64,)
    assert image.X.shape == (1797, 1, 8, 8) and image.X.dtype == np.float32
    assert image.sample_shape == (1, 8, 8) and image.n_features == 64
    assert image.spec == InputSpec((1, 8, 8), "float32")
    assert image.kind == flat.kind == "image"
    np.testing.assert_array_equal(image.X, flat.X.reshape(1797, 1, 8, 8))
    np.testing.assert_array_equal(image.y, flat.y)
    assert image.class_names == flat.class_names
    # same values, other shape: another dataset (a baseline of one never gates the other)
    assert image.digest != flat.digest
    other = load_dataset("sklearn:digits", {"shape": [4, 16]})
    assert len({flat.digest, image.digest, other.digest}) == 3
    # flattening again is the flat dataset, digest included
    assert load_dataset("sklearn:digits", {"shape": [64]}).digest == flat.digest


def test_flat_digits_digest_is_the_committed_baselines() -> None:
    files = sorted((ROOT / "baselines" / "digits-mlp").glob("*.json"))
    assert files, "no committed digits-mlp baselines"
    digests = {json.loads(f.read_text(encoding="utf-8"))["dataset_digest"] for f in files}
    assert digests == {load_dataset("sklearn:digits").digest}


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ([1, 8, 9], "shape = [1, 8, 9]: 72 values per sample, the data have 64 ([64])"),
        ([2, 2], "shape = [2, 2]: 4 values per sample, the data have 64 ([64])"),
        (64, "shape = 64: must be a list of positive integers"),
        ("1x8x8", "shape = '1x8x8': must be a list of positive integers"),
        ([], "shape = []: must be a list of positive integers"),
        ([0, 64], "shape = [0, 64]: must be a list of positive integers"),
        ([1, 8.0, 8], "shape = [1, 8.0, 8]: must be a list of positive integers"),
        ([True, 64], "shape = [True, 64]: must be a list of positive integers"),
    ],
)
def test_bad_shape_is_one_line(shape: object, problem: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("sklearn:digits", {"shape": shape})
    assert _one_line(str(info.value)) == problem


def test_bad_shape_in_a_suite_names_the_file_and_the_dataset(tmp_path: Path) -> None:
    from harness.resolution import resolve

    text = LENET_SUITE.format(dataset_args="dataset_args = { shape = [1, 8, 9] }", module=MODULE)
    suite = suite_from_dict(tomllib.loads(text), str(tmp_path / "bad.toml"))
    with pytest.raises(SpecError) as info:
        resolve(suite)
    message = _one_line(str(info.value))
    assert message.startswith(f"{tmp_path / 'bad.toml'}: suite.dataset = 'sklearn:digits': ")
    assert message.endswith("shape = [1, 8, 9]: 72 values per sample, the data have 64 ([64])")


def test_npz_keeps_its_sample_shape_and_infers_the_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 3, 4, 4))
    ds = load_dataset(_npz(tmp_path / "img.npz", images, np.arange(20) % 2), base=tmp_path)
    assert ds.X.shape == (20, 3, 4, 4) and ds.X.dtype == np.float32
    assert ds.kind == "image" and ds.sample_shape == (3, 4, 4) and ds.n_features == 48
    np.testing.assert_array_equal(ds.X, images.astype(np.float32))
    signals = load_dataset(
        _npz(tmp_path / "sig.npz", images[:, 0], np.arange(20) % 2), base=tmp_path
    )
    assert signals.kind == "signal" and signals.sample_shape == (4, 4)
    rows = load_dataset(
        _npz(tmp_path / "rows.npz", images[:, 0, 0], np.arange(20) % 2), base=tmp_path
    )
    assert rows.kind == "tabular" and rows.sample_shape == (4,)
    # the data kind can be said otherwise
    said = load_dataset("npz:sig.npz", {"kind": "image", "shape": [1, 4, 4]}, base=tmp_path)
    assert said.kind == "image" and said.sample_shape == (1, 4, 4)
    with pytest.raises(DatasetError) as info:
        load_dataset("npz:sig.npz", {"kind": "video"}, base=tmp_path)
    assert _one_line(str(info.value)) == (
        "kind = 'video': must be one of tabular, image, signal, tokens"
    )


def test_tokens_keep_int64_ids_and_refuse_what_is_not_an_id(tmp_path: Path) -> None:
    ids = np.arange(40).reshape(8, 5) % 11
    y = np.arange(8) % 2
    ds = load_dataset(
        _npz(tmp_path / "t.npz", ids.astype(np.int32), y), {"kind": "tokens"}, tmp_path
    )
    assert ds.X.dtype == np.int64 and ds.kind == "tokens"
    np.testing.assert_array_equal(ds.X, ids)
    assert ds.spec == InputSpec((5,), "int64", vocab=11) and ds.spec.is_tokens
    # integral floats are ids too
    floats = load_dataset(
        _npz(tmp_path / "f.npz", ids.astype(np.float64), y), {"kind": "tokens"}, tmp_path
    )
    assert floats.X.dtype == np.int64
    np.testing.assert_array_equal(floats.X, ids)
    # the same integers without kind = "tokens" are real-valued features
    plain = load_dataset("npz:t.npz", base=tmp_path)
    assert plain.X.dtype == np.float32 and not plain.spec.is_tokens
    assert plain.digest != ds.digest

    negative = ids.copy()
    negative[3, 2] = -1
    with pytest.raises(DatasetError) as info:
        load_dataset(_npz(tmp_path / "neg.npz", negative, y), {"kind": "tokens"}, tmp_path)
    assert _one_line(str(info.value)) == (
        "features: token ids must be in [0, 2**31) (found -1..10)"
    )
    fractional = ids.astype(np.float64)
    fractional[1, 1] = 2.5
    with pytest.raises(DatasetError) as info:
        load_dataset(_npz(tmp_path / "frac.npz", fractional, y), {"kind": "tokens"}, tmp_path)
    assert _one_line(str(info.value)) == "features: token ids must be integers"
    missing = ids.astype(np.float64)
    missing[0, 0] = np.nan
    with pytest.raises(DatasetError) as info:
        load_dataset(_npz(tmp_path / "nan.npz", missing, y), {"kind": "tokens"}, tmp_path)
    assert _one_line(str(info.value)) == "features: token ids must be integers"


def test_user_dataset_of_named_arrays_is_tokens(user_module: Path) -> None:
    from inputs_usermods import tokens

    ds = load_dataset(f"{MODULE}:tokens", {"n": 30})
    raw = tokens(n=30)
    assert ds.kind == "tokens"  # inferred from the input_ids field
    assert isinstance(ds.X, dict) and list(ds.X) == ["input_ids", "attention_mask"]
    for name, values in raw["X"].items():
        assert ds.X[name].dtype == np.int64 and not ds.X[name].flags.writeable
        np.testing.assert_array_equal(ds.X[name], values)
    assert ds.spec.shape == (10,) and ds.spec.dtype == "int64" and ds.spec.vocab == 20
    assert set(ds.spec.named) == {"input_ids", "attention_mask"}
    assert ds.spec.named["attention_mask"].vocab == 2
    assert ds.n_features == 10 and ds.n_classes == 3
    # other rows, other digest; a shape for named inputs is refused
    assert load_dataset(f"{MODULE}:tokens", {"n": 30, "seed": 1}).digest != ds.digest
    with pytest.raises(DatasetError) as info:
        load_dataset(f"{MODULE}:tokens", {"n": 30, "shape": [10]})
    assert _one_line(str(info.value)) == "shape applies to one input array, not to named inputs"


def test_user_torch_dataset_of_dict_and_label_pairs(user_module: Path) -> None:
    from inputs_usermods import Pairs

    ds = load_dataset(f"{MODULE}:pairs", {"n": 12, "length": 5})
    source = Pairs(12, 5)
    assert ds.kind == "tokens" and isinstance(ds.X, dict)
    np.testing.assert_array_equal(ds.X["input_ids"], source.ids.numpy())
    np.testing.assert_array_equal(ds.X["attention_mask"], source.mask.numpy())
    assert all(v.dtype == np.int64 and v.shape == (12, 5) for v in ds.X.values())
    np.testing.assert_array_equal(ds.y, source.y.numpy())
    assert ds.spec.vocab == 8


# --------------------------------------------------------------------------------------------
# 2. scaling: per feature, per channel, never for ids


def test_per_channel_scaling_on_the_training_fold(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # three channels of very different location and spread
    X = (
        rng.normal(size=(60, 3, 4, 4)) * np.array([1.0, 10.0, 0.1])[:, None, None]
        + np.array([5.0, -20.0, 0.5])[:, None, None]
    )
    ds = load_dataset(_npz(tmp_path / "img.npz", X, np.arange(60) % 3), base=tmp_path)
    for fold in make_folds(ds, 2, seed=0):
        assert fold.X_train.shape == (30, 3, 4, 4) and fold.X_train.dtype == np.float32
        per_channel = fold.X_train.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
        np.testing.assert_allclose(per_channel.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(per_channel.std(axis=1), 1.0, atol=1e-5)
        # validation data with the training statistics, and raw data the same way
        raw_train = ds.X[fold.train_idx].astype(np.float64)
        mean = raw_train.mean(axis=(0, 2, 3), keepdims=True)
        std = raw_train.std(axis=(0, 2, 3), keepdims=True)
        expected = ((ds.X[fold.val_idx] - mean) / std).astype(np.float32)
        np.testing.assert_allclose(fold.X_val, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(fold.scale(ds.X[fold.val_idx]), fold.X_val)
        # not one statistic per pixel: pixels of a channel share it
        assert not np.allclose(fold.X_train.mean(axis=0), 0.0, atol=1e-3)


def test_integer_inputs_are_never_scaled(tmp_path: Path, user_module: Path) -> None:
    named = load_dataset(f"{MODULE}:tokens", {"n": 30})
    ids = np.arange(60).reshape(12, 5) % 9
    plain = load_dataset(
        _npz(tmp_path / "t.npz", ids, np.arange(12) % 2), {"kind": "tokens"}, tmp_path
    )
    for standardize in (True, False):
        for fold in make_folds(named, 2, seed=0, standardize=standardize):
            for name in ("input_ids", "attention_mask"):
                for part, idx in ((fold.X_train, fold.train_idx), (fold.X_val, fold.val_idx)):
                    assert part[name].dtype == np.int64
                    np.testing.assert_array_equal(part[name], named.X[name][idx])
            scaled = fold.scale(named.X)
            np.testing.assert_array_equal(scaled["input_ids"], named.X["input_ids"])
        for fold in make_folds(plain, 2, seed=0, standardize=standardize):
            assert fold.X_train.dtype == np.int64
            np.testing.assert_array_equal(fold.X_train, ids[fold.train_idx])
            np.testing.assert_array_equal(fold.X_val, ids[fold.val_idx])


def test_flat_rows_scale_exactly_as_sklearn() -> None:
    ds = load_dataset("sklearn:wine")
    for fold in make_folds(ds, 3, seed=4):
        scaler = StandardScaler().fit(ds.X[fold.train_idx])
        train = scaler.transform(ds.X[fold.train_idx]).astype(np.float32)
        val = scaler.transform(ds.X[fold.val_idx]).astype(np.float32)
        assert fold.X_train.dtype == np.float32
        assert fold.X_train.tobytes() == train.tobytes()
        assert fold.X_val.tobytes() == val.tobytes()
        assert np.asarray(fold.scale(ds.X[fold.val_idx])).tobytes() == val.tobytes()


# --------------------------------------------------------------------------------------------
# 3. model factories, and a user's Conv2d model through a real run


def test_old_factories_get_the_values_per_sample_new_ones_the_spec(user_module: Path) -> None:
    import inputs_usermods as mods
    import torch

    from harness.models import build, probe

    image = load_dataset("sklearn:digits", {"shape": [1, 8, 8]})
    old = build(f"{MODULE}:old_factory", image.spec, image.n_classes, {"width": 5})
    assert mods.SEEN["old"] == 64 and isinstance(mods.SEEN["old"], int)
    new = build(f"{MODULE}:new_factory", image.spec, image.n_classes, {})
    assert mods.SEEN["new"] == InputSpec((1, 8, 8), "float32")
    for model, ref in ((old, "old_factory"), (new, "new_factory")):  # both take shaped batches
        probe(model, ref, np.array(image.X[:4]), image.n_classes)
        assert model(torch.as_tensor(np.array(image.X[:4]))).shape == (4, 10)
    named = load_dataset(f"{MODULE}:tokens", {"n": 30})
    build(f"{MODULE}:new_factory", named.spec, named.n_classes, {})
    assert mods.SEEN["new"].vocab == 20
    assert set(mods.SEEN["new"].named) == {"input_ids", "attention_mask"}
    build(f"{MODULE}:old_factory", named.spec, named.n_classes, {})
    assert mods.SEEN["old"] == 10
    # an int is flat features of that width, as before
    build(f"{MODULE}:new_factory", 7, 3, {})
    assert mods.SEEN["new"] == InputSpec((7,))


def test_a_user_conv2d_model_runs_on_digits_as_images(user_module: Path) -> None:
    from harness.runner import run_case

    text = LENET_SUITE.format(dataset_args="dataset_args = { shape = [1, 8, 8] }", module=MODULE)
    suite = suite_from_dict(tomllib.loads(text), str(user_module / "lenet.toml"))
    result = run_case(suite, suite.cases[0])
    m = result.metrics
    assert len(m["param_reduction"].folds) == 2
    assert all(r > 0 for r in m["param_reduction"].folds)  # channels really removed
    assert all(
        p < d for p, d in zip(m["pruned.params"].folds, m["dense.params"].folds, strict=True)
    )
    assert m["dense.accuracy"].mean > 0.3  # two epochs learn something (chance is 0.1)
    assert all(math.isfinite(v) for v in m["pruned.accuracy"].folds)
    assert result.dataset["input"] == "float32[1x8x8]"
    assert result.dataset["features"] == 64


def test_a_conv2d_model_on_flat_rows_is_one_line_at_resolution(user_module: Path) -> None:
    from harness.resolution import resolve

    text = LENET_SUITE.format(dataset_args="", module=MODULE)
    source = str(user_module / "flat.toml")
    with pytest.raises(SpecError) as info:
        resolve(suite_from_dict(tomllib.loads(text), source))
    message = _one_line(str(info.value))
    assert info.value.key == "suite.model"
    assert message.startswith(f"{source}: suite.model = '{MODULE}:lenet': {MODULE}:lenet: ")
    assert "forward on a batch of shape (2, 64) failed (RuntimeError: " in message


def test_a_conv2d_model_on_flat_rows_in_the_cli_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE, encoding="utf-8")  # next to the suite
    (tmp_path / "flat.toml").write_text(LENET_SUITE.format(dataset_args="", module=MODULE))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "flat.toml", "--no-mlflow"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"prune-harness: flat.toml: suite.model = '{MODULE}:lenet': ")
    assert "forward on a batch of shape (2, 64) failed" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "baselines").exists()


# --------------------------------------------------------------------------------------------
# 4. edge sets on images C x H x W and on token sequences


def _edge(text: str, ds: Dataset, fold: Fold, base: Path, seed: int = 7) -> tuple[Any, np.ndarray]:
    return make_edge_set(
        parse_edge(text),
        fold,
        ds,
        dense_margin=np.zeros(len(fold.y_val)),
        seed=seed,
        base=base,
    )


@pytest.mark.parametrize("text", ["shift:1", "shift:-2", "blur:0.8", "occlusion:0.25", "contrast"])
def test_image_edge_sets_on_c_h_w_equal_those_of_flat_rows(text: str, tmp_path: Path) -> None:
    flat = load_dataset("sklearn:digits")
    image = load_dataset("sklearn:digits", {"shape": [1, 8, 8]})
    assert check_edge(parse_edge(text), image) is None
    flat_fold = make_folds(flat, 2, seed=0, standardize=False)[1]
    image_fold = make_folds(image, 2, seed=0, standardize=False)[1]
    np.testing.assert_array_equal(flat_fold.val_idx, image_fold.val_idx)
    X_flat, y_flat = _edge(text, flat, flat_fold, tmp_path)
    X_image, y_image = _edge(text, image, image_fold, tmp_path)
    assert X_image.shape == (len(image_fold.val_idx), 1, 8, 8) and X_image.dtype == np.float32
    np.testing.assert_array_equal(X_image, X_flat.reshape(-1, 1, 8, 8))
    np.testing.assert_array_equal(y_image, y_flat)
    assert not np.array_equal(X_image, image_fold.X_val)  # the set is not the fold itself


def test_image_edge_sets_move_every_channel_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    X = rng.uniform(1, 2, size=(20, 3, 6, 6))
    ds = load_dataset(_npz(tmp_path / "rgb.npz", X, np.arange(20) % 2), base=tmp_path)
    fold = make_folds(ds, 2, seed=0, standardize=False)[0]
    shifted, _ = _edge("shift:1", ds, fold, tmp_path)
    np.testing.assert_array_equal(shifted[:, :, 1:, 1:], fold.X_val[:, :, :-1, :-1])
    assert (shifted[:, :, 0, :] == 0).all() and (shifted[:, :, :, 0] == 0).all()
    occluded, _ = _edge("occlusion:0.25", ds, fold, tmp_path)
    zero = occluded == 0  # the raw values are >= 1: zeros are the patch
    assert (zero.all(axis=1) == zero.any(axis=1)).all()  # same pixels in every channel
    assert (zero[:, 0].reshape(len(zero), -1).sum(axis=1) == 9).all()  # round(6 * 0.5) ** 2


@pytest.fixture
def token_data(user_module: Path) -> tuple[Dataset, Fold]:
    """The token dataset and the fold that validates sample 0 (a sequence of one token)."""
    ds = load_dataset(f"{MODULE}:tokens", {"n": 60})
    fold = next(f for f in make_folds(ds, 2, seed=0) if 0 in f.val_idx)
    assert fold.X_val["attention_mask"].sum(axis=1).min() == 1
    return ds, fold


def test_truncate_keeps_a_real_token_and_masks_the_cut(
    token_data: tuple[Dataset, Fold], tmp_path: Path
) -> None:
    ds, fold = token_data
    ids, mask = fold.X_val["input_ids"], fold.X_val["attention_mask"]
    for fraction in (0.3, 0.5, 1e-3):
        X, y = _edge(f"truncate:{fraction}", ds, fold, tmp_path)
        np.testing.assert_array_equal(y, fold.y_val)
        out_ids, out_mask = X["input_ids"], X["attention_mask"]
        assert out_ids.dtype == out_mask.dtype == np.int64
        lengths = mask.sum(axis=1)
        kept = np.maximum(1, np.ceil(fraction * lengths - 1e-9))
        np.testing.assert_array_equal(out_mask.sum(axis=1), kept)
        assert (out_mask.sum(axis=1) >= 1).all()
        assert (out_mask <= mask).all()  # nothing unmasked that was padding
        # the first `kept` real tokens unchanged, the cut ones id 0 and masked out
        positions = np.arange(ids.shape[1])
        keep = positions[None, :] < kept[:, None]
        np.testing.assert_array_equal(out_mask, mask * keep)
        np.testing.assert_array_equal(out_ids, np.where(keep, ids, 0))
    one = mask.sum(axis=1) == 1  # sequences of one token keep it, even at fraction 1e-3
    np.testing.assert_array_equal(out_mask[one], mask[one])


def test_token_dropout_touches_only_real_tokens(
    token_data: tuple[Dataset, Fold], tmp_path: Path
) -> None:
    ds, fold = token_data
    ids, mask = fold.X_val["input_ids"], fold.X_val["attention_mask"]
    X, _ = _edge("token_dropout:0.5", ds, fold, tmp_path)
    np.testing.assert_array_equal(X["attention_mask"], mask)
    changed = X["input_ids"] != ids
    assert changed.any()
    assert (mask[changed] == 1).all()  # only real positions
    assert (X["input_ids"][changed] == 0).all()  # dropped to the padding / unknown id
    assert 0.3 < changed.sum() / mask.sum() < 0.7  # about p of the real tokens
    assert (X["input_ids"][mask == 0] == 0).all()


def test_substitute_draws_ids_from_the_vocabulary(
    token_data: tuple[Dataset, Fold], tmp_path: Path
) -> None:
    ds, fold = token_data
    ids, mask = fold.X_val["input_ids"], fold.X_val["attention_mask"]
    X, _ = _edge("substitute:0.6", ds, fold, tmp_path)
    out = X["input_ids"]
    np.testing.assert_array_equal(X["attention_mask"], mask)
    changed = out != ids
    assert changed.any() and (mask[changed] == 1).all()
    vocab = ds.spec.vocab
    assert vocab == 20
    real = out[mask == 1]
    assert ((real >= 1) & (real < vocab)).all()
    assert (out[mask == 0] == 0).all()  # padding stays padding


def test_token_edge_sets_on_plain_id_arrays(tmp_path: Path) -> None:
    ids = np.arange(1, 121).reshape(12, 10) % 13 + 1
    ds = load_dataset(
        _npz(tmp_path / "t.npz", ids, np.arange(12) % 2), {"kind": "tokens"}, tmp_path
    )
    fold = make_folds(ds, 2, seed=0)[0]
    X, _ = _edge("truncate:0.5", ds, fold, tmp_path)
    assert X.dtype == np.int64
    np.testing.assert_array_equal(X[:, :5], fold.X_val[:, :5])
    assert (X[:, 5:] == 0).all()
    X, _ = _edge("substitute:1", ds, fold, tmp_path)
    assert ((X >= 1) & (ds.spec.vocab > X)).all()


@pytest.mark.parametrize("text", ["gaussian_noise", "gaussian_noise:0.5", "extremes", "blur"])
def test_float_perturbations_are_refused_for_tokens(
    text: str, token_data: tuple[Dataset, Fold], tmp_path: Path
) -> None:
    ds, fold = token_data
    kind = parse_edge(text).kind
    problem = check_edge(parse_edge(text), ds)
    assert problem is not None
    assert _one_line(problem).startswith(f"{kind} needs ")
    assert problem.endswith(f"data ({MODULE}:tokens is tokens)")
    with pytest.raises(ValueError, match=r"needs .* data") as info:
        _edge(text, ds, fold, tmp_path)
    assert str(info.value) == problem
    # and the token sets are refused for real-valued data
    image = load_dataset("sklearn:digits", {"shape": [1, 8, 8]})
    assert check_edge(parse_edge("truncate"), image) == (
        "truncate needs tokens data (sklearn:digits is image)"
    )
