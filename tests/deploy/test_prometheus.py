"""Prometheus rules: parsed by real PromQL parsers, unit-tested by promtool, and naming only metrics
that exist."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._support import (
    PROMETHEUS,
    TARGETS,
    Doc,
    find,
    load_yaml,
    one,
    require_module,
    require_tool,
)

RULES = PROMETHEUS / "rules.yaml"
UNIT_TESTS = PROMETHEUS / "tests" / "rules_test.yaml"

# What the app exports on /metrics (issue "Traces to Jaeger and Prometheus metrics"): counters
# get _total, histograms _bucket/_sum/_count, and process_* comes from prometheus-client.
APP_COUNTERS = {
    "rag_requests_total",
    "rag_embedding_cache_hits_total",
    "rag_embedding_cache_misses_total",
    "rag_events_appended_total",
    "rag_events_dropped_total",
    "rag_projector_dead_letters_total",
    "rag_stream_trimmed_total",
}
APP_HISTOGRAMS = {"rag_latency_seconds", "rag_stage_latency_seconds"}
APP_GAUGES = {
    "rag_embedding_queue_size",
    "rag_index_points",
    "rag_dead_letters",
    "rag_stream_entries",
    "rag_stream_memory_bytes",
    "rag_redis_memory_used_bytes",
    "rag_redis_maxmemory_bytes",
}
APP_METRICS = (
    APP_COUNTERS
    | APP_GAUGES
    | APP_HISTOGRAMS
    | {f"{h}_{suffix}" for h in APP_HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
# A pod that crashes before it serves /metrics is only visible from outside: kube-state-metrics
# (installed with kube-prometheus-stack) is the one other source the rules may name.
KUBE_STATE_METRICS = {
    "kube_pod_container_status_waiting_reason",
    "kube_pod_container_status_restarts_total",
}


def _rule_spec() -> dict[str, Any]:
    return load_yaml(RULES)["spec"]  # type: ignore[no-any-return]


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _rule_spec()["groups"] for rule in group["rules"]]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def test_the_guides_alerts_and_the_autoscalers_recording_rule_exist() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert {"RAGHighLatency", "RAGHighErrorRate", "RAGPodCrashLooping"} <= alerts
    assert {"RAGRedisMemoryHigh", "RAGRedisMemoryFullWithinADay"} <= alerts
    assert "rag_requests_per_second" in _recorded()
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.fixture(scope="module")
def promql() -> Any:
    return require_module("promql_parser", "promql-parser")


def _metric_names(promql: Any, expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector):
            if node.name:
                names.add(node.name)
            else:  # {__name__="..."}
                names.update(m.value for m in node.matchers.matchers if m.name == "__name__")

    promql.walk(promql.parse(expr), visit)
    return names


def test_every_expression_parses(promql: Any) -> None:
    for rule in _rules():
        promql.parse(rule["expr"])


def test_the_parser_rejects_bad_promql(promql: Any) -> None:
    with pytest.raises(ValueError):
        promql.parse("sum(rate(rag_requests_total[5m])")


def test_rules_name_only_metrics_that_exist(promql: Any) -> None:
    known = APP_METRICS | KUBE_STATE_METRICS | _recorded()
    for rule in _rules():
        names = _metric_names(promql, rule["expr"])
        assert names, rule
        assert names <= known, f"{rule.get('alert') or rule.get('record')}: {names - known}"


def test_app_alerts_use_app_metrics_only_where_the_app_can_see(promql: Any) -> None:
    by_name = {rule.get("alert") or rule.get("record"): rule for rule in _rules()}
    for name in ("RAGHighLatency", "RAGHighErrorRate", "rag_requests_per_second"):
        assert _metric_names(promql, by_name[name]["expr"]) <= APP_METRICS


def test_hpa_metrics_are_recorded_by_the_rules(rendered: dict[str, list[Doc]]) -> None:
    for overlay in ("dev", "prod"):
        for hpa in find(rendered[overlay], "HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] in {"Pods", "Object", "External"}:
                    name = metric[metric["type"].lower()]["metric"]["name"]
                    assert name in _recorded(), name


def test_adapter_serves_the_recorded_metric_per_pod() -> None:
    values = load_yaml(PROMETHEUS / "prometheus-adapter-values.yaml")
    rules = values["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    assert "rag_requests_per_second" in served
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


def test_rules_shipped_by_the_overlays_are_the_file(rendered: dict[str, list[Doc]]) -> None:
    for overlay in ("dev", "prod"):
        assert one(rendered[overlay], "PrometheusRule", "rag-pipeline")["spec"] == _rule_spec()
    assert (
        TARGETS["base"]
        .joinpath("kustomization.yaml")
        .read_text()
        .count("../../observability/prometheus")
        == 1
    )


@pytest.fixture(scope="module")
def promtool_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    promtool = require_tool(
        "promtool", "from the Debian package prometheus; see docs/deploy.md", "PROMTOOL_BIN"
    )
    directory = tmp_path_factory.mktemp("promtool")
    # promtool reads plain rule files: the PrometheusRule's spec is exactly one.
    (directory / "rag-pipeline.rules.yaml").write_text(yaml.safe_dump(_rule_spec()))
    shutil.copy(UNIT_TESTS, directory / UNIT_TESTS.name)
    return promtool, directory


def test_promtool_checks_the_rules(promtool_dir: tuple[str, Path]) -> None:
    promtool, directory = promtool_dir
    proc = subprocess.run(
        [promtool, "check", "rules", "rag-pipeline.rules.yaml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_unit_tests_pass(promtool_dir: tuple[str, Path]) -> None:
    """Alerts fire (and stay quiet) on synthetic series; the recording rule computes per pod."""
    promtool, directory = promtool_dir
    proc = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
