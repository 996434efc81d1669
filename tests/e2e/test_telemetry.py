"""Telemetry of real `rag-pipeline serve` and `worker` processes: spans exported over OTLP/HTTP
to a receiver that decodes the protobuf, and every metric that the dashboard, the alert rules and
the autoscaler name served on /metrics."""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.e2e.server import Server

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "10f067aa0ba902b7"
UNSAMPLED_TRACE_ID = "6bf92f3577b34da6a3ce929d0e0e4736"
QUERY = "which hormone regulates glucose uptake"


class Receiver:
    """An OTLP/HTTP trace receiver on a free port: POST /v1/traces, protobuf in and out."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(request)
                receiver.paths.append(self.path)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.thread.start()
    yield made
    made.server.shutdown()


def test_spans_reach_an_otlp_http_receiver(data_dir: Path, receiver: Receiver) -> None:
    server = Server(
        data_dir,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "rag-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.namespace=rag",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        },
    ).start()
    try:
        with server.client() as http:
            ingest = http.post(
                "/api/v1/ingest?wait=true",
                json={"documents": [{"id": "insulin", "text": "Insulin regulates glucose."}]},
            )
            assert ingest.status_code == 200, ingest.text
            sampled = http.post(
                "/api/v1/search",
                json={"query": QUERY},
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            unsampled = http.post(
                "/api/v1/search",
                json={"query": QUERY},
                headers={"traceparent": f"00-{UNSAMPLED_TRACE_ID}-{PARENT_ID}-00"},
            )
    finally:
        # Shutdown flushes the batch processor: every span is sent before the process exits.
        assert server.stop() == 0
    assert sampled.json()["trace_id"] == TRACE_ID
    # Not sampled upstream: the trace id is still returned, but nothing is exported.
    assert unsampled.json()["trace_id"] == UNSAMPLED_TRACE_ID
    assert unsampled.headers["x-trace-id"] == UNSAMPLED_TRACE_ID

    assert receiver.requests, "no export reached the receiver"
    assert set(receiver.paths) == {"/v1/traces"}
    assert set(receiver.content_types) == {"application/x-protobuf"}
    spans = receiver.spans()
    resource = spans[0][0]
    assert resource["service.name"] == "rag-under-test"
    assert resource["deployment.environment"] == "test"
    assert resource["service.version"]
    by_trace: dict[str, list[Any]] = {}
    for _, span in spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    assert UNSAMPLED_TRACE_ID not in by_trace
    search = {span.name: span for span in by_trace[TRACE_ID]}
    server_span = search["POST /api/v1/search"]
    assert server_span.parent_span_id.hex() == PARENT_ID
    assert server_span.kind == server_span.SPAN_KIND_SERVER
    for stage in ("rag.embed", "rag.search", "rag.fusion", "rag.record"):
        assert search[stage].parent_span_id == server_span.span_id, stage
    assert any(name.startswith("qdrant.") for name in search)
    # The projector's batch made its own trace, linked to the ingest request.
    projects = [span for _, span in spans if span.name == "rag.project"]
    ingest_trace = next(
        t for t, s in by_trace.items() if any(x.name == "POST /api/v1/ingest" for x in s)
    )
    assert any(link.trace_id.hex() == ingest_trace for span in projects for link in span.links)
    for _, span in spans:
        for attribute in span.attributes:
            assert QUERY not in attribute.value.string_value


# --- metrics --------------------------------------------------------------------------------

OBSERVABILITY = ROOT / "observability"
# Grafana's template variables, replaced by what they stand for so a PromQL parser reads them.
_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def _metric_names(expr: str) -> set[str]:
    import promql_parser

    for variable, value in _VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _named_metrics() -> tuple[set[str], set[str], set[str]]:
    """Metric names in (the dashboard, the rules, the HPA), recording rules expanded."""
    dashboard = json.loads((OBSERVABILITY / "grafana" / "rag-pipeline.json").read_text())
    in_dashboard = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in _metric_names(target["expr"])
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<metric>, <label>)
            in_dashboard.add(re.match(r"label_values\((\w+)", variable["definition"])[1])
    rules = yaml.safe_load((OBSERVABILITY / "prometheus" / "rules.yaml").read_text())["spec"]
    recorded: dict[str, set[str]] = {}
    in_rules: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = _metric_names(rule["expr"])
            in_rules |= names
            if "record" in rule:
                recorded[rule["record"]] = names
    hpa = yaml.safe_load((ROOT / "kustomize" / "base" / "hpa.yaml").read_text())
    in_hpa = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert in_hpa <= set(recorded), in_hpa

    def expand(names: set[str]) -> set[str]:
        return {n for name in names for n in recorded.get(name, {name})}

    return expand(in_dashboard), expand(in_rules), expand(in_hpa)


def _served(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_the_dashboard_rules_and_hpa_name_is_served(server: Server) -> None:
    with server.client() as http:
        assert http.post("/api/v1/search", json={"query": "volcano"}).status_code == 200
        assert (
            http.post(
                "/api/v1/search", json={"query": "plants", "rerank": True, "diversity": 0.5}
            ).status_code
            == 200
        )
        assert http.get("/api/v1/documents/nope").status_code == 404
        assert http.post("/api/v1/search", json={"query": ""}).status_code == 422
        scrape = http.get("/metrics")
    assert scrape.status_code == 200
    served = _served(scrape.text)
    dashboard, rules, hpa = _named_metrics()
    # kube-state-metrics' series are about pods, seen from outside; the rest is ours.
    ours = {name for name in dashboard | rules | hpa if not name.startswith("kube_")}
    assert {
        "rag_requests_total",
        "rag_latency_seconds_bucket",
        "rag_stage_latency_seconds_bucket",
        "rag_embedding_queue_size",
        "rag_index_points",
    } <= ours
    missing = ours - served
    assert not missing, f"named by the dashboard, rules or HPA but not on /metrics: {missing}"
    assert re.search(r'rag_requests_total\{operation="search",status="200"\} [1-9]', scrape.text)
    assert re.search(
        r'rag_requests_total\{operation="get_document",status="404"\} [1-9]', scrape.text
    )
    assert re.search(r"rag_index_points [1-9]", scrape.text)
    for stage in ("embed", "search", "fusion", "rerank", "mmr"):
        assert f'rag_stage_latency_seconds_count{{stage="{stage}"}}' in scrape.text, stage
    assert "/health" not in scrape.text and 'operation="health"' not in scrape.text


def test_the_worker_serves_metrics_too(tmp_path: Path) -> None:
    worker = Server(tmp_path / "worker-data", command="worker").start()
    try:
        with worker.client() as http:
            scrape = http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    finally:
        worker.stop()
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    assert scrape.text.rstrip().endswith("# EOF")
    plain = _served(scrape.text.replace("# EOF", ""))
    for name in (
        "rag_embedding_queue_size",
        "rag_index_points",
        "rag_projector_dead_letters_total",
        "rag_embedding_cache_hits_total",
        "process_resident_memory_bytes",
    ):
        assert name in plain, name
