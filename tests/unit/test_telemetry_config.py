"""The telemetry registry (the YAML is generated from it) and the tracer provider from Settings."""

from __future__ import annotations

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased

from app.errors import SettingsError
from app.settings import Settings
from app.telemetry import schema, schema_yaml, tracing
from tests.conftest import ROOT

REGISTRY = ROOT / "observability" / "telemetry-schema.yaml"


def test_the_committed_yaml_registry_is_generated_from_the_python_one() -> None:
    assert REGISTRY.read_text() == schema_yaml.render(), (
        "observability/telemetry-schema.yaml is stale: "
        "python -m app.telemetry.schema_yaml > observability/telemetry-schema.yaml"
    )


def test_the_yaml_says_what_the_python_registry_says() -> None:
    """The hand-rolled YAML writer, read back by a YAML parser."""
    doc = yaml.safe_load(schema_yaml.render())
    assert {
        name: (spec["kind"], spec["doc"], tuple(spec["attributes"]))
        for name, spec in doc["spans"].items()
    } == {name: (spec.kind, spec.doc, spec.attributes) for name, spec in schema.SPANS.items()}
    assert {
        name: (spec["type"], spec["doc"], tuple(spec["labels"]))
        for name, spec in doc["metrics"].items()
    } == {name: (spec.type, spec.doc, spec.labels) for name, spec in schema.METRICS.items()}
    assert tuple(doc["stages"]) == schema.STAGES
    assert tuple(doc["latency_buckets_seconds"]) == schema.LATENCY_BUCKETS
    assert schema.LATENCY_BUCKETS[0] == 0.001 and schema.LATENCY_BUCKETS[-1] == 10.0


def test_every_name_constant_is_registered() -> None:
    """A span name or attribute key defined in the schema module but not in the registry
    would be emitted without operators knowing it exists."""
    values = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    spans = set(schema.SPANS)
    attributes = {a for spec in schema.SPANS.values() for a in spec.attributes}
    metrics = set(schema.METRICS)
    assert values <= spans | attributes | metrics, values - spans - attributes - metrics


def test_client_spans_must_be_registered() -> None:
    with pytest.raises(ValueError, match=r"not in app\.telemetry\.schema"):
        tracing.client_span("redis.unknown", "redis", "GET")


def test_otel_settings_defaults_and_parsing() -> None:
    default = Settings.from_env({})
    assert default.otel_service_name == "rag-pipeline"
    assert default.otel_exporter_otlp_protocol == "http/protobuf"
    assert default.otel_traces_sampler == "parentbased_always_on"
    assert tracing.exporter_for(default) is None  # no endpoint: spans are made, not sent
    settings = Settings.from_env(
        {
            "OTEL_SERVICE_NAME": "rag-pipeline-worker",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=rag,deployment.environment=prod%2Deu,"
            "service.name=ignored",
        }
    )
    resource = tracing.resource_for(settings).attributes
    assert resource["service.name"] == "rag-pipeline-worker"  # OTEL_SERVICE_NAME wins
    assert resource["deployment.environment"] == "prod-eu"
    assert resource["service.namespace"] == "rag"
    assert resource["service.version"]
    assert isinstance(tracing.exporter_for(settings), GrpcExporter)
    sampler = tracing.sampler_for(settings)
    assert isinstance(sampler, ParentBased)
    root = sampler._root  # the sampler a root span (no parent) gets
    assert isinstance(root, TraceIdRatioBased) and root.rate == 0.25


def test_http_exporter_appends_the_signal_path() -> None:
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_TRACES_SAMPLER": "always_off",
        }
    )
    exporter = tracing.exporter_for(settings)
    assert isinstance(exporter, HttpExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    assert isinstance(tracing.sampler_for(settings), StaticSampler)


def test_sdk_disabled_builds_no_provider() -> None:
    assert tracing.build_provider(Settings.from_env({"OTEL_SDK_DISABLED": "true"})) is None
    assert tracing.build_provider(Settings.from_env({})) is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment"),
        ("RAG_TRACE_QUERY_TEXT", "maybe"),
    ],
)
def test_bad_otel_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
