"""The telemetry registry (app/telemetry/schema.py) written out as YAML for operators:
`python -m app.telemetry.schema_yaml > observability/telemetry-schema.yaml`."""

from __future__ import annotations

import json

from app.telemetry import schema

_HEADER = """\
# The telemetry registry: every span name, span attribute key and metric name rag-pipeline emits.
# Generated from app/telemetry/schema.py, where the code takes its names from; do not edit here:
#   python -m app.telemetry.schema_yaml > observability/telemetry-schema.yaml
# tests/unit/test_telemetry_config.py fails while this file is stale, and the span-tree tests
# hold what the code emits to the registry.
#
# Spans: `http.server` stands for the server span of an API request, named "<METHOD> <route>"
# (e.g. "POST /api/v1/search"). Query and document text never appear in spans, except
# rag.query.text on rag.search when RAG_TRACE_QUERY_TEXT=true. Client spans (redis.*, qdrant.*)
# are made only inside a recorded trace. Metrics: counters are named with their _total suffix;
# histograms add _bucket, _sum and _count; process_* and python_* come from prometheus-client.
"""


def _list(key: str, items: tuple[object, ...], indent: str) -> list[str]:
    if not items:
        return [f"{indent}{key}: []"]
    return [f"{indent}{key}:", *(f"{indent}- {item}" for item in items)]


def render() -> str:
    """The registry as YAML; doc strings double-quoted (a JSON string is a YAML scalar)."""
    lines = [_HEADER.rstrip("\n"), "spans:"]
    for name, span in schema.SPANS.items():
        lines += [f"  {name}:", f"    kind: {span.kind}", f"    doc: {json.dumps(span.doc)}"]
        lines += _list("attributes", span.attributes, "    ")
    lines.append("metrics:")
    for name, metric in schema.METRICS.items():
        lines += [f"  {name}:", f"    type: {metric.type}", f"    doc: {json.dumps(metric.doc)}"]
        lines += _list("labels", metric.labels, "    ")
    lines += _list("stages", schema.STAGES, "")
    lines += _list("latency_buckets_seconds", schema.LATENCY_BUCKETS, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
