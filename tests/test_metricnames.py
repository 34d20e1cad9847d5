"""The metric vocabulary (harness.metricnames): one grammar that builds, parses and formats
every name, and the catalogue the gate, reports and tracking read."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.metricnames import (
    EDGE_METRICS,
    HARDWARE_BOUND,
    HEADLINE,
    MODEL_METRICS,
    MODELS,
    PER_CLASS_METRICS,
    PROPERTIES,
    RUN_METRICS,
    Direction,
    MetricRef,
    UnknownMetricError,
    direction,
    rule_target,
)
from harness.metricnames import parse as parse_metric
from harness.results import summarize


@pytest.mark.parametrize(
    ("name", "model", "base", "expected"),
    [
        ("dense.accuracy", "dense", "accuracy", Direction.HIGHER),
        ("pruned.f1_macro", "pruned", "f1_macro", Direction.HIGHER),
        ("pruned.precision_weighted", "pruned", "precision_weighted", Direction.HIGHER),
        ("pruned.train_val_gap", "pruned", "train_val_gap", Direction.LOWER),
        ("pruned.params", "pruned", "params", Direction.LOWER),
        ("dense.flops_nonzero", "dense", "flops_nonzero", Direction.LOWER),
        ("pruned.sparsity", "pruned", "sparsity", Direction.HIGHER),
        ("pruned.latency_ms_p50", "pruned", "latency_ms_p50", Direction.LOWER),
        ("dense.recall.class_1", "dense", "recall.class_1", Direction.HIGHER),
        ("pruned.f1.class_12", "pruned", "f1.class_12", Direction.HIGHER),
        ("speedup", "", "speedup", Direction.HIGHER),
        ("param_reduction", "", "param_reduction", Direction.HIGHER),
        ("flops_reduction", "", "flops_reduction", Direction.HIGHER),
    ],
)
def test_parse_metric(name: str, model: str, base: str, expected: Direction) -> None:
    ref = parse_metric(name)
    assert (ref.model, ref.base, ref.direction) == (model, base, expected)
    assert ref.name == name
    assert direction(name) is expected


def test_every_declared_metric_parses_with_both_models() -> None:
    for base, d in MODEL_METRICS.items():
        for model in ("dense", "pruned"):
            assert direction(f"{model}.{base}") is d
    for name, d in RUN_METRICS.items():
        assert direction(name) is d


@pytest.mark.parametrize(
    "name",
    [
        "f1_macro",
        "dense.bogus",
        "student.accuracy",
        "pruned.accuracy.class_1",
        "pruned.f1.class_x",
        "pruned.precision.class_",
        "dense.speedup",
        "vs_dense.f1_macro",
        "",
    ],
)
def test_unknown_metric_names_raise(name: str) -> None:
    with pytest.raises(UnknownMetricError) as info:
        parse_metric(name)
    assert isinstance(info.value, KeyError)
    assert repr(name) in str(info.value)
    assert "\n" not in str(info.value)


def test_rule_target_and_hardware_bound() -> None:
    ref, vs_dense = rule_target("vs_dense.f1_macro")
    assert vs_dense and ref.name == "pruned.f1_macro"
    ref, vs_dense = rule_target("dense.accuracy")
    assert not vs_dense and ref.name == "dense.accuracy"
    with pytest.raises(UnknownMetricError):
        rule_target("vs_dense.speedup")
    assert parse_metric("pruned.latency_batch_ms_p95").hardware_bound
    assert parse_metric("speedup").hardware_bound
    assert not parse_metric("pruned.f1_macro").hardware_bound
    assert not parse_metric("param_reduction").hardware_bound
    assert {
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_batch_ms_p50",
        "latency_batch_ms_p95",
    } <= HARDWARE_BOUND


def test_edge_set_names_with_dots_parse_to_the_set_and_the_metric() -> None:
    ref = parse_metric("pruned.edge.gaussian_noise_0.1.f1_macro")
    assert (ref.model, ref.edge, ref.metric) == ("pruned", "gaussian_noise_0.1", "f1_macro")
    assert ref.direction is Direction.HIGHER and not ref.hardware_bound
    assert ref.with_model("dense").name == "dense.edge.gaussian_noise_0.1.f1_macro"
    with pytest.raises(UnknownMetricError, match="is not a metric"):
        parse_metric("pruned.edge.blur.latency_ms_p50")  # only accuracy and f1_macro on edges
    with pytest.raises(UnknownMetricError, match="is not a metric"):
        parse_metric("pruned.edge..accuracy")


_EDGE = st.from_regex(r"[a-z0-9_]{1,8}(\.[a-z0-9_]{1,4}){0,2}", fullmatch=True)


@given(
    model=st.sampled_from(MODELS),
    kind=st.sampled_from(["model", "class", "edge", "run"]),
    metric=st.sampled_from(sorted(MODEL_METRICS)),
    per_class=st.sampled_from(PER_CLASS_METRICS),
    k=st.integers(0, 500),
    edge=_EDGE,
    edge_metric=st.sampled_from(EDGE_METRICS),
    run=st.sampled_from(sorted(RUN_METRICS)),
)
def test_every_built_name_parses_back_to_its_ref(
    model: str,
    kind: str,
    metric: str,
    per_class: str,
    k: int,
    edge: str,
    edge_metric: str,
    run: str,
) -> None:
    ref = {
        "model": lambda: MetricRef.of(model, metric),
        "class": lambda: MetricRef.per_class(model, per_class, k),
        "edge": lambda: MetricRef.on_edge(model, edge, edge_metric),
        "run": lambda: MetricRef.run(run),
    }[kind]()
    assert parse_metric(ref.name) == ref
    assert str(ref) == ref.name
    if ref.model == "pruned":
        target, vs_dense = rule_target(ref.vs_dense_key)
        assert vs_dense and target == ref


def test_builders_refuse_what_the_grammar_does_not_produce() -> None:
    with pytest.raises(UnknownMetricError, match=re.escape("'student.accuracy' is not a metric")):
        MetricRef.of("student", "accuracy")
    with pytest.raises(
        UnknownMetricError, match=re.escape("'pruned.accuracy.class_1' is not a metric")
    ):
        MetricRef.per_class("pruned", "accuracy", 1)
    with pytest.raises(
        UnknownMetricError, match=re.escape("'pruned.edge.Blur.accuracy' is not a metric")
    ):
        MetricRef.on_edge("pruned", "Blur", "accuracy")


def test_wildcard_class_rule_expands_per_class() -> None:
    ref, vs_dense = rule_target("vs_dense.recall.class_*")
    assert vs_dense and ref.wildcard
    assert [ref.with_class(k).vs_dense_key for k in range(2)] == [
        "vs_dense.recall.class_0",
        "vs_dense.recall.class_1",
    ]


def test_the_catalogue_names_only_known_metrics() -> None:
    for name in (*HEADLINE, *PROPERTIES):
        parse_metric(name)
    assert set(MODEL_METRICS) | set(RUN_METRICS) >= HARDWARE_BOUND


def test_summarize() -> None:
    assert summarize([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert summarize([0.5]) == (0.5, 0.0)
