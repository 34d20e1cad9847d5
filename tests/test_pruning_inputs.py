"""Every pruning method on inputs of other shapes and types (harness.inputs): images through a
residual Conv2d + BatchNorm network, int64 token ids (a plain tensor, and named inputs with an
attention mask) through the reference transformer; structured pruning removes whole attention
heads; what a method cannot take is refused in one line."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from harness._util import HarnessError
from harness.inputs import InputSpec, forward, spec_of, take
from harness.models import ModelError, transformer
from harness.pruning import PruneContext, create, get, names, prunable_modules
from harness.pruning.base import PruneError, accumulate_gradients, leaf_weight
from harness.pruning.structured import attention_modules, remove_heads
from harness.spec import PruneSpec, TrainSpec

N, N_CLASSES, LENGTH, VOCAB = 24, 3, 16, 50

# fast settings of the methods whose defaults train or differentiate a lot
ARGS: dict[str, dict[str, Any]] = {
    "l1": {"epochs": 1},
    "l2": {"epochs": 1},
    "group-lasso": {"epochs": 1},
    "obd": {"hessian": "hutchinson", "samples": 4},
    "taylor": {"batches": 2, "batch_size": 8},
    "structured-taylor": {"batches": 2, "batch_size": 8},
    "energy-aware": {"importance": "taylor", "batches": 2, "batch_size": 8},
    "snip": {"batch_size": 16},
    "lrp": {"n_samples": 16},
    "obs": {"n_samples": 16},
    "auto": {"grid": [0.0, 0.3, 0.6, 0.9]},
}
TRAIN = TrainSpec(epochs=1, batch_size=8)


# --------------------------------------------------------------------------------------------
# Models and data


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 projection when the width changes), ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def resnet(channels: Sequence[int] = (8, 8)) -> nn.Module:
    """A tiny residual CNN for ``(N, 1, 8, 8)`` images: stem, one block per width, pooling."""
    layers: list[nn.Module] = [
        nn.Conv2d(1, channels[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(channels[0]),
        nn.ReLU(),
    ]
    width = channels[0]
    for c in channels:
        layers.append(_Block(width, c))
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, N_CLASSES)]
    return nn.Sequential(*layers)


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 1, 8, 8)).astype(np.float32)
    return X, (np.arange(N) % N_CLASSES).astype(np.int64)


def _tokens(named: bool, seed: int = 0) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(N, LENGTH)).astype(np.int64)
    y = (np.arange(N) % N_CLASSES).astype(np.int64)
    if not named:
        return ids, y
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=N)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}, y


TOKEN_SPEC = InputSpec((LENGTH,), "int64", VOCAB)


def _case(kind: str) -> tuple[Callable[[Mapping[str, Any]], nn.Module], Any, np.ndarray, dict]:
    """(builder of the model from model_args, inputs, labels, the suite's model_args)."""
    if kind == "images":
        X, y = _images()
        return lambda args: resnet(**args), X, y, {"channels": [8, 8]}
    X, y = _tokens(named=kind == "named")
    return lambda args: transformer(TOKEN_SPEC, N_CLASSES, **args), X, y, {}


def _ctx(build: Any, X: Any, y: np.ndarray, model_args: dict, teacher: nn.Module) -> PruneContext:
    example = {k: torch.as_tensor(v[:8]) for k, v in X.items()} if isinstance(X, Mapping) else None
    return PruneContext(
        example if example is not None else torch.as_tensor(X[:8]),
        X,
        y,
        0,
        train=TRAIN,
        teacher=teacher,
        build=lambda args: build({**model_args, **args}),
        model_args=model_args,
    )


def _batch(X: Any) -> Any:
    if isinstance(X, Mapping):
        return {k: torch.as_tensor(v) for k, v in X.items()}
    return torch.as_tensor(X)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_fraction(model: nn.Module) -> float:
    weights = [m.weight.detach() for _, m in prunable_modules(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _refusal(method: str, kind: str) -> str | None:
    """The one-line error a method gives for a kind of input, or None (it works)."""
    if method == "lrp" and kind != "images":
        return "lrp: needs floating-point inputs (the data are int64 token ids)"
    return None


def _student_args(kind: str) -> dict[str, Any]:
    # the transformer has no 'hidden' / 'channels' widths to scale: explicit student widths
    return {} if kind == "images" else {"model_args": {"d_model": 16, "mlp": 32}}


# --------------------------------------------------------------------------------------------
# Every method, every kind of input


@pytest.mark.parametrize("kind", ["images", "tokens", "named"])
@pytest.mark.parametrize("method", names())
def test_every_method_prunes_images_and_tokens(method: str, kind: str) -> None:
    build, X, y, model_args = _case(kind)
    torch.manual_seed(0)
    model = build(model_args)
    teacher = copy.deepcopy(model).eval()
    ctx = _ctx(build, X, y, model_args, teacher)
    args = {**ARGS.get(method, {}), **(_student_args(kind) if method == "student" else {})}
    pruner = create(PruneSpec(method, 0.5, args=args))
    before, zeros_before = _params(model), _zero_fraction(model)
    refusal = _refusal(method, kind)
    if refusal is not None:
        with pytest.raises(HarnessError) as info:
            pruner.step(model, 0.5, ctx)
        assert str(info.value) == refusal
        return
    pruned = pruner.finalize(pruner.step(model, 0.5, ctx))
    pruned.eval()
    with torch.no_grad():
        out = forward(pruned, _batch(X))
    assert out.shape == (N, N_CLASSES)
    assert torch.isfinite(out).all()
    if get(method).structured:
        assert _params(pruned) < before
    else:
        assert zeros_before == 0
        assert _zero_fraction(pruned) >= 0.45
    if kind != "images" and get(method).structured and method != "student":
        for block in pruned.blocks:
            attn = block.attn
            width = attn.q.out_features
            assert width % attn.head_dim == 0 and 0 < width < 32  # whole heads went
            assert attn.k.out_features == attn.v.out_features == attn.o.in_features == width
            assert block.mlp[0].out_features < 64  # and MLP hidden units


def test_structured_pruning_shrinks_the_residual_cnn_consistently() -> None:
    X, y = _images()
    torch.manual_seed(0)
    model = resnet((8, 16))
    ctx = PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    pruned = create(PruneSpec("structured", 0.5, scope="layer")).step(model, 0.5, ctx)
    stem, block1, block2 = pruned[0], pruned[3], pruned[4]
    assert stem.out_channels < 8 and block2.conv2.out_channels < 16
    # the residual adds tie the stem to block 1's output and the projection to block 2's
    assert block1.conv2.out_channels == stem.out_channels == pruned[1].num_features
    assert block2.shortcut[0].out_channels == block2.conv2.out_channels
    assert pruned[-1].in_features == block2.conv2.out_channels
    assert torch.isfinite(pruned(torch.as_tensor(X))).all()


# --------------------------------------------------------------------------------------------
# Attention heads


def test_removing_heads_equals_silencing_them() -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = transformer(TOKEN_SPEC, N_CLASSES).eval()
    X, _ = _tokens(named=True)
    batch = _batch(X)
    silenced = copy.deepcopy(model)
    plan = {0: [1, 3], 1: [0]}
    with torch.no_grad():
        for b, heads in plan.items():
            attn = silenced.blocks[b].attn
            for h in heads:
                attn.o.weight[:, h * attn.head_dim : (h + 1) * attn.head_dim] = 0
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=take(batch, slice(0, 1)))
    attentions = attention_modules(model)
    assert [a.name for a in attentions] == ["blocks.0.attn", "blocks.1.attn"]
    remove_heads(dg, [(attentions[b], heads) for b, heads in plan.items()])
    assert [b.attn.heads for b in model.blocks] == [2, 3]
    with torch.no_grad():
        for inputs in (batch, batch["input_ids"]):
            torch.testing.assert_close(forward(model, inputs), forward(silenced, inputs))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_heads_over_iterative_rounds_keep_one_head(scope: str) -> None:
    X, y = _tokens(named=False)
    torch.manual_seed(0)
    model = transformer(TOKEN_SPEC, N_CLASSES)
    ctx = PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    pruner = create(PruneSpec("structured", 0.9, scope=scope, schedule="iterative", steps=3))
    heads = []
    for target in (0.5, 0.8, 0.9):
        model = pruner.step(model, target, ctx)
        heads.append([b.attn.heads for b in model.blocks])
    assert heads[0] == [2, 2] or scope == "global"
    assert all(h >= 1 for round_ in heads for h in round_)
    assert sum(heads[-1]) < sum(heads[0])
    assert torch.isfinite(model(torch.as_tensor(X))).all()


def test_ignored_projection_keeps_its_heads() -> None:
    X, y = _tokens(named=False)
    torch.manual_seed(0)
    model = transformer(TOKEN_SPEC, N_CLASSES)
    ctx = PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    spec = PruneSpec("structured", 0.5, scope="layer", args={"ignore": ["blocks.1.attn.q"]})
    model = create(spec).step(model, 0.5, ctx)
    assert [b.attn.heads for b in model.blocks] == [2, 4]
    assert torch.isfinite(model(torch.as_tensor(X))).all()


@dataclass
class _Output:
    """A Hugging Face style output: the logits in ``.logits``."""

    logits: torch.Tensor


class _Wrapped(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> _Output:
        return _Output(self.model(input_ids, attention_mask))


@pytest.mark.parametrize("method", ["structured", "structured-taylor", "energy-aware", "taylor"])
def test_a_hugging_face_style_output_prunes_by_its_logits(method: str) -> None:
    X, y = _tokens(named=True)
    torch.manual_seed(0)
    model = _Wrapped(transformer(TOKEN_SPEC, N_CLASSES))
    ctx = PruneContext(take(_batch(X), slice(0, 8)), X, y, 0)
    before = _params(model)
    pruner = create(PruneSpec(method, 0.5, args=ARGS.get(method, {})))
    pruned = pruner.finalize(pruner.step(model, 0.5, ctx))
    assert forward(pruned, _batch(X)).shape == (N, N_CLASSES)
    if get(method).structured:
        assert _params(pruned) < before
        assert all(b.attn.heads < 4 for b in pruned.model.blocks)
    else:
        assert _zero_fraction(pruned) >= 0.45


# --------------------------------------------------------------------------------------------
# Gradients of named inputs, refusals


def test_per_sample_gradients_of_named_inputs_match_one_row_at_a_time() -> None:
    torch.manual_seed(0)
    model = transformer(TOKEN_SPEC, N_CLASSES)
    X, y = _tokens(named=True)
    batch, yt = take(_batch(X), slice(0, 6)), torch.as_tensor(y[:6])
    params = [leaf_weight(m) for _, m in prunable_modules(model)][:3]
    summed = accumulate_gradients(
        model, batch, yt, params, batches=1, batch_size=6, per_sample=True, term=lambda i, g: g
    )
    for row in range(6):
        one = take(batch, slice(row, row + 1))
        loss = nn.functional.cross_entropy(forward(model, one), yt[row : row + 1])
        grads = torch.autograd.grad(loss, params)
        for s, g in zip(summed.sums, grads, strict=True):
            assert s is not None
            torch.testing.assert_close(s[row], g, rtol=1e-4, atol=1e-6)


def test_lrp_refuses_a_module_without_a_rule_in_one_line() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 6)).astype(np.float32)
    y = (np.arange(N) % N_CLASSES).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    ctx = PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    with pytest.raises(PruneError) as info:
        create(PruneSpec("lrp", 0.5)).step(model, 0.5, ctx)
    assert str(info.value) == "lrp: LRP has no propagation rule for module '1' (LayerNorm)"
    assert isinstance(info.value, TypeError)  # as attach_rules always documented


def test_lrp_explains_the_float_fields_of_named_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(3, 8)
            self.relu, self.head = nn.ReLU(), nn.Linear(8, N_CLASSES)

        def forward(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.relu(self.a(x) + self.b(z)) * mask)

    rng = np.random.default_rng(0)
    X = {
        "x": rng.normal(size=(N, 4)).astype(np.float32),
        "mask": np.ones((N, 1), dtype=np.int64),
        "z": rng.normal(size=(N, 3)).astype(np.float32),
    }
    y = (np.arange(N) % N_CLASSES).astype(np.int64)
    torch.manual_seed(0)
    model = TwoInputs()
    ctx = PruneContext({k: torch.as_tensor(v[:8]) for k, v in X.items()}, X, y, 0)
    pruned = create(PruneSpec("lrp", 0.5, scope="layer")).step(model, 0.5, ctx)
    assert pruned.a.out_features == pruned.b.out_features == 4
    assert torch.isfinite(forward(pruned, _batch(X))).all()


# --------------------------------------------------------------------------------------------
# The transformer factory


def test_transformer_is_small_deterministic_and_masks_padding() -> None:
    spec = spec_of(_tokens(named=True)[0])
    assert spec.shape == (LENGTH,) and spec.is_tokens
    torch.manual_seed(0)
    a = transformer(InputSpec((32,), "int64", 50), N_CLASSES)
    torch.manual_seed(0)
    b = transformer(InputSpec((32,), "int64", 50), N_CLASSES)
    assert _params(a) < 50_000
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    torch.manual_seed(0)
    model = transformer(TOKEN_SPEC, N_CLASSES).eval()
    X, _ = _tokens(named=True)
    ids, mask = torch.as_tensor(X["input_ids"]), torch.as_tensor(X["attention_mask"])
    noisy = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, VOCAB))
    with torch.no_grad():
        # padding changes nothing under the mask, everything without it
        torch.testing.assert_close(model(ids, mask), model(input_ids=noisy, attention_mask=mask))
        assert not torch.allclose(model(ids), model(noisy))
        assert model(ids).shape == (N, N_CLASSES)
    assert [a.heads for a in attention_modules(model)] == [4, 4]


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        (InputSpec((16,)), {}, r"needs int64 token ids \(the data are float32\[16\]\)"),
        (InputSpec((4, 4), "int64", 9), {}, r"shape \(N, L\)"),
        (TOKEN_SPEC, {"d_model": 30}, "not a multiple of heads"),
        (TOKEN_SPEC, {"max_len": 8}, "max_len = 8 < the sequence length 16"),
        (TOKEN_SPEC, {"layers": 0}, "layers = 0 must be a positive integer"),
    ],
)
def test_transformer_refuses_what_it_cannot_take(
    spec: InputSpec, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelError, match=match):
        transformer(spec, N_CLASSES, **kwargs)
