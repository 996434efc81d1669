"""The observability material: an importable Grafana dashboard (datasources as variables, trace
links through exemplars), a Jaeger v2 configuration that receives OTLP, and its README."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.deploy._support import Doc, find, one

OBSERVABILITY = ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "rag-pipeline.json"


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_takes_its_datasources_from_variables() -> None:
    """Importable as is: no datasource uid of the machine it was made on."""
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tracing"]["query"] == "jaeger"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns it on import
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_covers_what_the_issue_asks() -> None:
    exprs = " ".join(
        t["expr"] for p in _dashboard()["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for needle in (
        "rag_requests_total",  # request rate, errors
        "histogram_quantile(0.99, sum by (operation, le) (rate(rag_latency_seconds_bucket",
        "rag_stage_latency_seconds_bucket",  # stage breakdown
        "rag_embedding_cache_hits_total",  # cache hit ratio
        "rag_embedding_queue_size",
        'status=~"5.."',
        "rag_redis_memory_used_bytes",  # Redis memory against maxmemory
        "rag_redis_maxmemory_bytes",
        "rag_stream_memory_bytes",
    ):
        assert needle in exprs, needle
    latency = [p for p in _dashboard()["panels"] if "atency" in p["title"]]
    assert latency and all(t["exemplar"] for p in latency for t in p["targets"])


def test_exemplars_link_to_jaeger() -> None:
    provisioning = yaml.safe_load((OBSERVABILITY / "grafana" / "datasources.yaml").read_text())
    by_type = {d["type"]: d for d in provisioning["datasources"]}
    (destination,) = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": by_type["jaeger"]["uid"]}


def test_jaeger_receives_otlp_on_both_protocols() -> None:
    config = yaml.safe_load((OBSERVABILITY / "jaeger" / "config.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["exporters"]) <= set(config["exporters"])
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    storage = config["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert storage in config["extensions"]["jaeger_storage"]["backends"]
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] == storage


def test_readme_says_how_to_find_a_trace() -> None:
    text = (OBSERVABILITY / "README.md").read_text()
    assert "trace_id" in text and "x-trace-id" in text and "/trace/<trace_id>" in text


def test_dev_jaeger_runs_this_configuration(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    jaeger = one(docs, "Deployment", "jaeger")["spec"]["template"]["spec"]
    container = jaeger["containers"][0]
    assert container["args"] == ["--config", "/etc/jaeger/config.yaml"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/jaeger"]
    (volume,) = [v for v in jaeger["volumes"] if v["name"] == mount["name"]]
    configmaps = [
        d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    assert (
        configmaps[0]["data"]["config.yaml"]
        == (OBSERVABILITY / "jaeger" / "config.yaml").read_text()
    )
