"""The one frozen Settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta

from app.errors import SettingsError

# Each field's wire name is its environment variable, so msgspec's error path names the
# variable an operator has to fix, and the README table is generated from this one place.


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """Every setting of the service; see `SETTINGS_DOC` for what each one does."""

    host: str = msgspec.field(default="127.0.0.1", name="RAG_HOST")
    port: Annotated[int, Meta(ge=0, le=65535)] = msgspec.field(default=8000, name="RAG_PORT")
    data_dir: str = msgspec.field(default="./rag-data", name="RAG_DATA_DIR")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = msgspec.field(
        default="INFO", name="LOG_LEVEL"
    )
    graceful_timeout_seconds: Annotated[float, Meta(gt=0, le=600)] = msgspec.field(
        default=20.0, name="RAG_GRACEFUL_TIMEOUT_SECONDS"
    )
    max_body_bytes: Annotated[int, Meta(ge=1024, le=1 << 30)] = msgspec.field(
        default=8 * 1024 * 1024, name="RAG_MAX_BODY_BYTES"
    )
    max_documents_per_request: Annotated[int, Meta(ge=1, le=10_000)] = msgspec.field(
        default=1000, name="RAG_MAX_DOCUMENTS_PER_REQUEST"
    )
    batch_size: Annotated[int, Meta(ge=1, le=1024)] = msgspec.field(
        default=32, name="RAG_BATCH_SIZE"
    )
    max_concurrent_batches: Annotated[int, Meta(ge=1, le=64)] = msgspec.field(
        default=1, name="MAX_CONCURRENT_BATCHES"
    )
    embedder_threads: Annotated[int, Meta(ge=0, le=256)] = msgspec.field(
        default=0, name="RAG_EMBEDDER_THREADS"
    )
    chunk_size: Annotated[int, Meta(ge=16, le=256)] = msgspec.field(
        default=256, name="RAG_CHUNK_SIZE"
    )
    chunk_overlap: Annotated[int, Meta(ge=0, le=128)] = msgspec.field(
        default=32, name="RAG_CHUNK_OVERLAP"
    )
    top_k: Annotated[int, Meta(ge=1, le=100)] = msgspec.field(default=10, name="RAG_TOP_K")
    # Off by default: on this 2-core reference machine it lifts nDCG@10 by 0.01 on SciFact
    # but takes search p50 from ~15 ms to ~25 ms, past the 20 ms target (docs/benchmarks.md).
    rerank: bool = msgspec.field(default=False, name="RAG_RERANK")
    rerank_top_k: Annotated[int, Meta(ge=1, le=1000)] = msgspec.field(
        default=30, name="RAG_RERANK_TOP_K"
    )
    min_score: Annotated[float, Meta(ge=-1.0, le=1.0)] = msgspec.field(
        default=-1.0, name="RAG_MIN_SCORE"
    )
    mmr_max_candidates: Annotated[int, Meta(ge=1, le=1000)] = msgspec.field(
        default=100, name="MMR_MAX_CANDIDATES"
    )
    metadata_indexes: str = msgspec.field(default="", name="RAG_METADATA_INDEXES")
    redis_url: str = msgspec.field(default="", name="REDIS_URL")
    redis_pool_size: Annotated[int, Meta(ge=1, le=1024)] = msgspec.field(
        default=16, name="REDIS_POOL_SIZE"
    )
    stream_prefix: Annotated[str, Meta(max_length=100, pattern=r"^\S+$")] = msgspec.field(
        default="rag:", name="RAG_STREAM_PREFIX"
    )
    redis_sentinels: str = msgspec.field(default="", name="REDIS_SENTINELS")
    redis_sentinel_master: str = msgspec.field(default="", name="REDIS_SENTINEL_MASTER")
    redis_sentinel_password: str = msgspec.field(default="", name="REDIS_SENTINEL_PASSWORD")
    redis_cluster: bool = msgspec.field(default=False, name="REDIS_CLUSTER")
    redis_min_replicas: Annotated[int, Meta(ge=0, le=16)] = msgspec.field(
        default=0, name="RAG_REDIS_MIN_REPLICAS"
    )
    redis_replica_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = msgspec.field(
        default=1000, name="RAG_REDIS_REPLICA_TIMEOUT_MS"
    )
    cache_ttl_seconds: Annotated[int, Meta(ge=1, le=10 * 365 * 86400)] = msgspec.field(
        default=7 * 86400, name="RAG_CACHE_TTL_SECONDS"
    )
    event_redact_queries: bool = msgspec.field(default=False, name="RAG_EVENT_REDACT_QUERIES")
    retrieval_retention: str = msgspec.field(default="7d", name="RAG_RETRIEVAL_RETENTION")
    record_retrievals: bool = msgspec.field(default=True, name="RAG_RECORD_RETRIEVALS")
    feedback_retention: str = msgspec.field(default="90d", name="RAG_FEEDBACK_RETENTION")
    feedback_max_entries: Annotated[int, Meta(ge=0, le=1_000_000_000)] = msgspec.field(
        default=1_000_000, name="RAG_FEEDBACK_MAX_ENTRIES"
    )
    dead_letter_retention: str = msgspec.field(default="30d", name="RAG_DEAD_LETTER_RETENTION")
    dead_letter_max_entries: Annotated[int, Meta(ge=0, le=1_000_000_000)] = msgspec.field(
        default=100_000, name="RAG_DEAD_LETTER_MAX_ENTRIES"
    )
    projector_max_deliveries: Annotated[int, Meta(ge=1, le=1000)] = msgspec.field(
        default=5, name="RAG_PROJECTOR_MAX_DELIVERIES"
    )
    projector_batch: Annotated[int, Meta(ge=1, le=10_000)] = msgspec.field(
        default=64, name="RAG_PROJECTOR_BATCH"
    )
    projector_claim_idle_ms: Annotated[int, Meta(ge=100, le=86_400_000)] = msgspec.field(
        default=60_000, name="RAG_PROJECTOR_CLAIM_IDLE_MS"
    )
    projector_in_process: bool = msgspec.field(default=True, name="RAG_PROJECTOR_IN_PROCESS")
    fault_kill_doc_id: str = msgspec.field(default="", name="RAG_FAULT_KILL_DOC_ID")
    ingest_wait_seconds: Annotated[float, Meta(gt=0, le=600)] = msgspec.field(
        default=30.0, name="RAG_INGEST_WAIT_SECONDS"
    )
    qdrant_url: str = msgspec.field(default="", name="QDRANT_URL")
    qdrant_api_key: str = msgspec.field(default="", name="QDRANT_API_KEY")
    qdrant_pool_size: Annotated[int, Meta(ge=1, le=1024)] = msgspec.field(
        default=10, name="QDRANT_POOL_SIZE"
    )
    # Whole seconds: qdrant-client passes the value to its gRPC and HTTP clients as an int.
    qdrant_timeout_seconds: Annotated[int, Meta(ge=1, le=600)] = msgspec.field(
        default=5, name="QDRANT_TIMEOUT_SECONDS"
    )
    qdrant_prefer_grpc: bool = msgspec.field(default=False, name="QDRANT_PREFER_GRPC")
    qdrant_collection_prefix: Annotated[str, Meta(max_length=100, pattern=r"^[A-Za-z0-9_-]*$")] = (
        msgspec.field(default="rag_", name="QDRANT_COLLECTION_PREFIX")
    )
    embedder: Literal["local", "openai"] = msgspec.field(default="local", name="RAG_EMBEDDER")
    # A secret: from the Secret rag-pipeline-secrets, never the ConfigMap; never logged.
    openai_api_key: str = msgspec.field(default="", name="OPENAI_API_KEY")
    openai_base_url: str = msgspec.field(
        default="https://api.openai.com/v1", name="OPENAI_BASE_URL"
    )
    embedding_model: Annotated[str, Meta(min_length=1, max_length=200)] = msgspec.field(
        default="text-embedding-3-small", name="RAG_EMBEDDING_MODEL"
    )
    embedding_dimensions: Annotated[int, Meta(ge=0, le=16384)] = msgspec.field(
        default=0, name="RAG_EMBEDDING_DIMENSIONS"
    )
    embedder_timeout_seconds: Annotated[float, Meta(gt=0, le=600)] = msgspec.field(
        default=10.0, name="RAG_EMBEDDER_TIMEOUT_SECONDS"
    )
    embedder_max_retries: Annotated[int, Meta(ge=0, le=20)] = msgspec.field(
        default=4, name="RAG_EMBEDDER_MAX_RETRIES"
    )
    embedder_breaker_failures: Annotated[int, Meta(ge=1, le=1000)] = msgspec.field(
        default=5, name="RAG_EMBEDDER_BREAKER_FAILURES"
    )
    embedder_breaker_cooldown_seconds: Annotated[float, Meta(gt=0, le=3600)] = msgspec.field(
        default=5.0, name="RAG_EMBEDDER_BREAKER_COOLDOWN_SECONDS"
    )
    max_memory_mb: Annotated[int, Meta(ge=0, le=1 << 20)] = msgspec.field(
        default=2048, name="RAG_MAX_MEMORY_MB"
    )
    # Telemetry: the standard OpenTelemetry SDK variables (the subset this service supports),
    # read here like every other setting and passed to the SDK explicitly (app/telemetry).
    otel_sdk_disabled: bool = msgspec.field(default=False, name="OTEL_SDK_DISABLED")
    otel_service_name: Annotated[str, Meta(min_length=1, max_length=200)] = msgspec.field(
        default="rag-pipeline", name="OTEL_SERVICE_NAME"
    )
    otel_exporter_otlp_endpoint: str = msgspec.field(default="", name="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_protocol: Literal["grpc", "http/protobuf"] = msgspec.field(
        default="http/protobuf", name="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = msgspec.field(default="parentbased_always_on", name="OTEL_TRACES_SAMPLER")
    otel_traces_sampler_arg: Annotated[float, Meta(ge=0.0, le=1.0)] = msgspec.field(
        default=1.0, name="OTEL_TRACES_SAMPLER_ARG"
    )
    otel_resource_attributes: str = msgspec.field(default="", name="OTEL_RESOURCE_ATTRIBUTES")
    trace_query_text: bool = msgspec.field(default=False, name="RAG_TRACE_QUERY_TEXT")
    metrics: bool = msgspec.field(default=True, name="RAG_METRICS")
    api_keys_file: str = msgspec.field(default="", name="RAG_API_KEYS_FILE")
    api_keys_reload_seconds: Annotated[float, Meta(ge=0, le=3600)] = msgspec.field(
        default=5.0, name="RAG_API_KEYS_RELOAD_SECONDS"
    )
    rate_limit_per_second: Annotated[float, Meta(ge=0, le=1_000_000)] = msgspec.field(
        default=20.0, name="RAG_RATE_LIMIT_PER_SECOND"
    )
    rate_limit_burst: Annotated[int, Meta(ge=1, le=1_000_000)] = msgspec.field(
        default=40, name="RAG_RATE_LIMIT_BURST"
    )
    max_query_chars: Annotated[int, Meta(ge=1, le=4096)] = msgspec.field(
        default=4096, name="RAG_MAX_QUERY_CHARS"
    )
    max_batch_searches: Annotated[int, Meta(ge=1, le=100)] = msgspec.field(
        default=16, name="RAG_MAX_BATCH_SEARCHES"
    )
    max_text_chars: Annotated[int, Meta(ge=1, le=1_000_000)] = msgspec.field(
        default=1_000_000, name="RAG_MAX_TEXT_CHARS"
    )
    cors_origins: str = msgspec.field(default="", name="RAG_CORS_ORIGINS")
    trace_url_template: str = msgspec.field(default="", name="RAG_TRACE_URL_TEMPLATE")
    replay_batch: Annotated[int, Meta(ge=1, le=10_000)] = msgspec.field(
        default=512, name="RAG_REPLAY_BATCH"
    )
    tombstone_retention_hours: Annotated[float, Meta(ge=0, le=87_600)] = msgspec.field(
        default=24.0, name="RAG_TOMBSTONE_RETENTION_HOURS"
    )
    compact_min_entries: Annotated[int, Meta(ge=0, le=1_000_000_000)] = msgspec.field(
        default=10_000, name="RAG_COMPACT_MIN_ENTRIES"
    )
    compact_growth: Annotated[float, Meta(ge=1.1, le=1000)] = msgspec.field(
        default=2.0, name="RAG_COMPACT_GROWTH"
    )
    compact_check_seconds: Annotated[float, Meta(ge=1, le=86_400)] = msgspec.field(
        default=60.0, name="RAG_COMPACT_CHECK_SECONDS"
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def metadata_index_fields(self) -> dict[str, str]:
        """`RAG_METADATA_INDEXES` parsed: metadata field -> keyword | integer | float | bool."""
        return _parse_metadata_indexes(self.metadata_indexes)

    @property
    def retrieval_retention_seconds(self) -> int:
        """`RAG_RETRIEVAL_RETENTION` in seconds."""
        return _parse_duration("RAG_RETRIEVAL_RETENTION", self.retrieval_retention)

    @property
    def feedback_retention_seconds(self) -> int:
        """`RAG_FEEDBACK_RETENTION` in seconds."""
        return _parse_duration("RAG_FEEDBACK_RETENTION", self.feedback_retention)

    @property
    def dead_letter_retention_seconds(self) -> int:
        """`RAG_DEAD_LETTER_RETENTION` in seconds."""
        return _parse_duration("RAG_DEAD_LETTER_RETENTION", self.dead_letter_retention)

    def resource_attributes(self) -> dict[str, str]:
        """`OTEL_RESOURCE_ATTRIBUTES` parsed: `key=value` pairs, percent-encoded values."""
        return _parse_resource_attributes(self.otel_resource_attributes)

    def cors_origin_list(self) -> list[str]:
        """`RAG_CORS_ORIGINS` parsed: the origins browsers may call from (empty: no CORS)."""
        return _parse_origins(self.cors_origins)

    def __repr__(self) -> str:
        # Settings get logged and shown in tracebacks: secrets and URL passwords never are.
        shown = []
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.encode_name in SECRET_NAMES and value:
                value = "***"
            elif field.encode_name.endswith("_URL") and isinstance(value, str):
                value = _without_password(value)
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: object) -> Settings:
        return msgspec.structs.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; a bad one raises SettingsError naming it."""
        env = os.environ if environ is None else environ
        raw = {name: env[name] for name in ENV_NAMES if env.get(name, "").strip() != ""}
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_name_the_variable(str(exc))) from exc
        _parse_metadata_indexes(settings.metadata_indexes)
        _parse_duration("RAG_RETRIEVAL_RETENTION", settings.retrieval_retention)
        _parse_duration("RAG_FEEDBACK_RETENTION", settings.feedback_retention)
        _parse_duration("RAG_DEAD_LETTER_RETENTION", settings.dead_letter_retention)
        _check_redis_url(settings.redis_url)
        _check_redis_topology(settings)
        _check_qdrant_url(settings.qdrant_url)
        _check_embedder(settings)
        _check_otlp_endpoint(settings.otel_exporter_otlp_endpoint)
        _parse_resource_attributes(settings.otel_resource_attributes)
        _parse_origins(settings.cors_origins)
        _check_trace_url_template(settings.trace_url_template)
        if settings.chunk_overlap >= settings.chunk_size:
            raise SettingsError(
                f"RAG_CHUNK_OVERLAP ({settings.chunk_overlap}) must be smaller than "
                f"RAG_CHUNK_SIZE ({settings.chunk_size})"
            )
        return settings


_INDEX_TYPES = ("keyword", "integer", "float", "bool")


def _parse_metadata_indexes(spec: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, kind = item.partition(":")
        if not sep or not name.strip() or kind.strip() not in _INDEX_TYPES:
            raise SettingsError(
                f"RAG_METADATA_INDEXES: expected 'field:type' items with type one of "
                f"{', '.join(_INDEX_TYPES)}, got {item!r}"
            )
        fields[name.strip()] = kind.strip()
    return fields


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(name: str, value: str) -> int:
    match = _DURATION.match(value)
    seconds = 0 if match is None else int(match[1]) * _UNIT_SECONDS[match[2]]
    if not 0 < seconds <= 100 * 365 * 86400:
        raise SettingsError(
            f"{name}: expected a positive whole number of seconds, or one with a unit "
            f"s, m, h or d (e.g. 3600, 90m, 7d), got {value!r}"
        )
    return seconds


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


def _parse_origins(spec: str) -> list[str]:
    origins = [part.strip() for part in spec.split(",") if part.strip()]
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise SettingsError(
                "RAG_CORS_ORIGINS: expected origins like https://app.example.com (scheme, "
                f"host, optional port; no path) separated by commas, or *, got {origin!r}"
            )
    return origins


def _check_trace_url_template(template: str) -> None:
    if template and (
        "{trace_id}" not in template or not template.startswith(("http://", "https://"))
    ):
        raise SettingsError(
            "RAG_TRACE_URL_TEMPLATE: expected an http(s) URL holding {trace_id}, e.g. "
            f"http://jaeger:16686/trace/{{trace_id}}, got {template!r}"
        )


_REDIS_SCHEMES = ("redis", "rediss", "unix")


SECRET_NAMES = frozenset({"OPENAI_API_KEY", "QDRANT_API_KEY", "REDIS_SENTINEL_PASSWORD"})


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_redis_url(url: str) -> None:
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise SettingsError(
            f"REDIS_URL: expected a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}"
        )
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL: {exc}") from exc


_HASH_TAG = re.compile(r"\{([^}]*)\}")


def hash_tag(prefix: str) -> str | None:
    """The hash tag Redis Cluster would hash every key under `prefix` by: the text between the
    first `{` and the next `}`, if not empty (Redis's own rule); None if there is none."""
    match = _HASH_TAG.search(prefix)
    return match[1] if match and match[1] else None


def parse_sentinels(spec: str) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs; SettingsError naming the variable if malformed."""
    nodes = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"REDIS_SENTINELS: expected host:port items separated by commas, got {item!r}"
            )
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _check_redis_topology(settings: Settings) -> None:
    sentinels = parse_sentinels(settings.redis_sentinels)
    if sentinels and not settings.redis_sentinel_master:
        raise SettingsError(
            "REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS (the service name the "
            "Sentinels monitor the primary under)"
        )
    if settings.redis_sentinel_master and not sentinels:
        raise SettingsError("REDIS_SENTINELS: required with REDIS_SENTINEL_MASTER")
    if settings.redis_cluster:
        if sentinels:
            raise SettingsError(
                "REDIS_CLUSTER: a Redis Cluster fails over by itself; set either "
                "REDIS_CLUSTER=true or REDIS_SENTINELS, not both"
            )
        if not settings.redis_url:
            raise SettingsError("REDIS_URL: REDIS_CLUSTER=true needs the URL of one cluster node")
        if hash_tag(settings.stream_prefix) is None:
            # Scripts and MULTI/EXEC touch several keys: on a cluster they must share a slot.
            raise SettingsError(
                f"RAG_STREAM_PREFIX: on a Redis Cluster the prefix must hold a hash tag so every "
                f"key shares one slot, e.g. {{rag}}: (got {settings.stream_prefix!r}); data "
                "under another prefix is not read, see docs/deploy.md (Redis Cluster)"
            )
    if settings.redis_min_replicas and not (settings.redis_url or sentinels):
        raise SettingsError(
            "RAG_REDIS_MIN_REPLICAS: the embedded Valkey (REDIS_URL empty) has no replicas to "
            "wait for; set it to 0 or point REDIS_URL or REDIS_SENTINELS at a replicated Redis"
        )


def _check_qdrant_url(url: str) -> None:
    if not url or url == ":memory:":
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SettingsError(
            f"QDRANT_URL: expected empty (the embedded index), :memory: (qdrant-client's "
            f"local mode) or an http:// or https:// URL, got scheme {parts.scheme!r}"
        )
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError as exc:
        raise SettingsError(f"QDRANT_URL: {exc}") from exc
    if not parts.hostname:
        # Such a URL would start a process that never becomes ready.
        raise SettingsError("QDRANT_URL: the URL names no host")


def _check_embedder(settings: Settings) -> None:
    if settings.embedder != "openai":
        return
    parts = urlsplit(settings.openai_base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(
            "OPENAI_BASE_URL: expected an http:// or https:// URL, got "
            f"{settings.openai_base_url!r}"
        )
    if not settings.openai_api_key and parts.hostname == "api.openai.com":
        raise SettingsError("OPENAI_API_KEY: required when RAG_EMBEDDER=openai talks to OpenAI")


def _check_otlp_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT: expected an http:// or https:// URL such as "
            f"http://jaeger:4317, got {url!r}"
        )


def _parse_resource_attributes(spec: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                f"OTEL_RESOURCE_ATTRIBUTES: expected 'key=value' items separated by commas, "
                f"got {item!r}"
            )
        attributes[key.strip()] = unquote(value.strip())
    return attributes


def _name_the_variable(message: str) -> str:
    # msgspec says "Expected `int` >= 1 - at `$.RAG_BATCH_SIZE`"; lead with the variable.
    head, sep, path = message.rpartition(" - at `$.")
    if sep:
        return f"{path.rstrip('`')}: {head}"
    return message


ENV_NAMES: tuple[str, ...] = tuple(field.encode_name for field in msgspec.structs.fields(Settings))

SETTINGS_DOC: dict[str, str] = {
    "RAG_HOST": "Address `serve` listens on.",
    "RAG_PORT": "Port `serve` listens on.",
    "RAG_DATA_DIR": "Directory for the embedded index (one Qdrant Edge shard per embedding model) "
    "and, when `REDIS_URL` is empty, the embedded Valkey's data.",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR.",
    "RAG_GRACEFUL_TIMEOUT_SECONDS": "On SIGTERM, how long in-flight requests may take before the "
    "server closes; keep it below the pod's terminationGracePeriodSeconds.",
    "RAG_MAX_BODY_BYTES": "Largest request body accepted; larger ones get 413.",
    "RAG_MAX_DOCUMENTS_PER_REQUEST": "Most documents in one ingest request; more get 422.",
    "RAG_BATCH_SIZE": "Texts per embedding batch (texts are length-sorted before batching).",
    "MAX_CONCURRENT_BATCHES": "Embedding batches in flight at once during ingest.",
    "RAG_EMBEDDER_THREADS": "onnxruntime intra-op threads of the local embedder; 0 = one a core.",
    "RAG_CHUNK_SIZE": "Default chunk size in embedder tokens, title and section path included; "
    "capped at what the model reads (254 text tokens for MiniLM).",
    "RAG_CHUNK_OVERLAP": "Default overlap between consecutive chunks, in tokens.",
    "RAG_TOP_K": "Results returned when a search names no top_k.",
    "RAG_RERANK": "Whether searches rerank by late interaction unless they say otherwise "
    "(+0.01 nDCG@10 on SciFact for ~10 ms a search on two cores).",
    "RAG_RERANK_TOP_K": "How many fused candidates the late-interaction reranker rescores.",
    "RAG_MIN_SCORE": "Default minimum dense cosine similarity (-1..1) a result must reach; "
    "-1 keeps everything.",
    "MMR_MAX_CANDIDATES": "Candidate pool MMR selects from when a search asks for diversity.",
    "RAG_METADATA_INDEXES": "Metadata fields to index for filtering, as `field:type` items "
    "separated by commas (type: keyword, integer, float, bool), e.g. "
    "`source:keyword,year:integer`. "
    "Unindexed fields can still be filtered on, by a slower scan.",
    "REDIS_URL": "Redis (>= 7) holding the event streams and the embedding cache, e.g. "
    "`redis://host:6379/0`. Empty: `serve` starts an embedded Valkey with its data and "
    "append-only file under `RAG_DATA_DIR/redis`, and `worker`/`replay` on the same data "
    "directory use it.",
    "REDIS_POOL_SIZE": "Connections each process keeps to Redis for ordinary commands; blocking "
    "stream reads use their own.",
    "RAG_STREAM_PREFIX": "Prefix of every stream and cache key (`documents`, `retrievals`, "
    "`feedback`, `dead-letter`, `emb:`), so several deployments can share one Redis.",
    "REDIS_SENTINELS": "Comma-separated `host:port` of the Sentinels watching the primary, e.g. "
    "`sentinel-0:26379,sentinel-1:26379,sentinel-2:26379`. Set: every client asks them for the "
    "current primary and finds a new one after a failover by itself; `REDIS_URL` then only "
    "carries the data nodes' database, user and password (its host is ignored) or is empty.",
    "REDIS_SENTINEL_MASTER": "The service name the Sentinels monitor the primary under "
    "(`sentinel monitor <name> ...`); required with `REDIS_SENTINELS`.",
    "REDIS_SENTINEL_PASSWORD": "Password of the Sentinels themselves, when they need one "
    "(the data nodes' password goes in `REDIS_URL`). A secret.",
    "REDIS_CLUSTER": "`true`: `REDIS_URL` names one node of a Redis Cluster and the client "
    "discovers the rest. `RAG_STREAM_PREFIX` must then hold a hash tag (e.g. `{rag}:`) so all "
    "keys share one slot and every script and transaction runs.",
    "RAG_REDIS_MIN_REPLICAS": "Replicas that must confirm a request's events (Redis `WAIT`) "
    "before it is acknowledged; fewer within `RAG_REDIS_REPLICA_TIMEOUT_MS` answers 503 and "
    "the client retries (ingest is idempotent). 0: acknowledged once the primary has them, "
    "which a failover can lose. The prod overlay sets 1.",
    "RAG_REDIS_REPLICA_TIMEOUT_MS": "How long a write waits for `RAG_REDIS_MIN_REPLICAS` "
    "replicas to confirm it.",
    "RAG_CACHE_TTL_SECONDS": "How long a cached embedding (keyed by tenant, model and text) "
    "lives in Redis.",
    "RAG_EVENT_REDACT_QUERIES": "Record retrievals with the query's SHA-256 instead of its text.",
    "RAG_RETRIEVAL_RETENTION": "Age after which retrieval events are trimmed: seconds, or a "
    "number with a unit s, m, h or d (e.g. `90m`, `7d`).",
    "RAG_RECORD_RETRIEVALS": "Whether every search is recorded on the retrievals stream. "
    "`false` stops recording: `GET /api/v1/retrievals/{id}` and feedback then answer 404 for "
    "new searches, and `/api/v1/quality` has nothing new to count (for benchmarks, or where "
    "no query may be kept even hashed).",
    "RAG_FEEDBACK_RETENTION": "Age after which feedback events are trimmed (as "
    "`RAG_RETRIEVAL_RETENTION`). Longer than the retrievals' by default: judgements outlive "
    "the quality window as evaluation data.",
    "RAG_FEEDBACK_MAX_ENTRIES": "Most feedback events kept; the oldest beyond it are trimmed "
    "(exactly). 0: no bound but age.",
    "RAG_DEAD_LETTER_RETENTION": "Age after which dead letters are trimmed, looked at or not "
    "(each one trimmed is logged with its tenant and document, and counted in "
    "`rag_stream_trimmed_total`); its document stays `failed` until sent again or replayed. "
    "Keep it longer than anyone takes to answer the `RAGDeadLetters` alert.",
    "RAG_DEAD_LETTER_MAX_ENTRIES": "Most dead letters kept (a backstop against a storm of "
    "failures filling Redis: each holds its event whole); the oldest beyond it are trimmed "
    "and logged as by age. 0: no bound but age.",
    "RAG_PROJECTOR_MAX_DELIVERIES": "Strikes against a document event before it is moved to "
    "the dead-letter stream: a strike is an attempt to apply the event on its own that failed, "
    "or during which the process died. A batch's death, a restart or a takeover is never one.",
    "RAG_PROJECTOR_BATCH": "Document events the projector reads and applies at a time.",
    "RAG_PROJECTOR_CLAIM_IDLE_MS": "How long an event may sit unacknowledged with a consumer "
    "before another consumer claims it (the first is presumed dead).",
    "RAG_PROJECTOR_IN_PROCESS": "Whether `serve` runs the projector (document events -> index) "
    "itself. The embedded index has one writer: the process that opened it, so `worker` runs "
    "only when no `serve` holds the data directory; `false` pauses indexing while `serve` "
    "runs (events wait in the stream).",
    "RAG_FAULT_KILL_DOC_ID": "Fault injection for tests, never for production: the projector "
    "kills its own process (SIGKILL) whenever it is about to apply the document with this id, "
    "as a poison event would. Empty: off.",
    "RAG_INGEST_WAIT_SECONDS": "Longest an ingest or delete with `?wait=true` waits for the "
    "projector before answering 202 with status pending.",
    "QDRANT_URL": "The Qdrant cluster holding the index, e.g. `http://qdrant:6333`; serve "
    "replicas and workers share it. Empty: the embedded Qdrant Edge shard under `RAG_DATA_DIR` "
    "(one writer). `:memory:`: qdrant-client's in-process local mode (tests and trials only: "
    "nothing is kept, and every call runs on the event loop).",
    "QDRANT_API_KEY": "API key of the Qdrant cluster (a secret); empty sends none.",
    "QDRANT_POOL_SIZE": "Connections (HTTP) or channels (gRPC) each process keeps to Qdrant.",
    "QDRANT_TIMEOUT_SECONDS": "Longest a call to Qdrant may take before the request fails with "
    "503 and `Retry-After`.",
    "QDRANT_PREFER_GRPC": "Talk to Qdrant over gRPC (port 6334) instead of HTTP.",
    "QDRANT_COLLECTION_PREFIX": "Prefix of the alias (`<prefix><model id>`) search and the "
    "projector use, and of the generation collections behind it, so several deployments can "
    "share one cluster.",
    "RAG_EMBEDDER": "`local` (MiniLM in process) or `openai`: any OpenAI-compatible "
    "`/v1/embeddings` API (OpenAI, vLLM, TEI, Ollama, LiteLLM). An API embedder gives no token "
    "vectors, so its index has no late-interaction rerank (searches say `rerank_skipped`).",
    "OPENAI_API_KEY": "API key for `RAG_EMBEDDER=openai` (a secret: from the Secret, never the "
    "ConfigMap); may be empty for a server that needs none.",
    "OPENAI_BASE_URL": "Base URL of the OpenAI-compatible API, e.g. `http://vllm:8000/v1`.",
    "RAG_EMBEDDING_MODEL": "Model `RAG_EMBEDDER=openai` asks for. With its dimension it names "
    "the index: changing either builds a new index (replay) rather than mixing vectors.",
    "RAG_EMBEDDING_DIMENSIONS": "Vector dimension of the API model; 0 = the model's own "
    "(known for OpenAI's text-embedding-3-small/-large and ada-002, required for others). For "
    "text-embedding-3 models a smaller value is requested from the API (`dimensions`); for "
    "other models it declares the dimension and a response of another size is an error.",
    "RAG_EMBEDDER_TIMEOUT_SECONDS": "Timeout of one embeddings API request (connect, send, "
    "wait, read).",
    "RAG_EMBEDDER_MAX_RETRIES": "Retries of a failed embeddings API request while indexing "
    "(capped exponential backoff with jitter, or the server's Retry-After); a search retries "
    "at most once. None for 400, 401, 403, 404 or insufficient_quota.",
    "RAG_EMBEDDER_BREAKER_FAILURES": "Consecutive failed embeddings API requests that open the "
    "circuit breaker: searches then answer 503 at once and the projector stops taking events.",
    "RAG_EMBEDDER_BREAKER_COOLDOWN_SECONDS": "How long the breaker stays open before one probe "
    "request may test the API (longer if the API's Retry-After asks for more).",
    "RAG_MAX_MEMORY_MB": "Memory budget of the process: a request is refused with 503 and "
    "Retry-After when resident memory plus what admitted requests may still allocate (their "
    "body size times 4) would pass it. 0 = no limit.",
    "OTEL_SDK_DISABLED": "`true` turns tracing off: no spans, no `trace_id` in responses.",
    "OTEL_SERVICE_NAME": "`service.name` of this process's traces (the worker Deployment sets "
    "`rag-pipeline-worker`).",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "Where spans are sent over OTLP, e.g. `http://jaeger:4317` "
    "(gRPC) or `http://jaeger:4318` (HTTP; `/v1/traces` is appended). Empty: spans are made "
    "(trace ids in responses, links) but not exported.",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "`grpc` or `http/protobuf`.",
    "OTEL_TRACES_SAMPLER": "always_on, always_off, traceidratio, parentbased_always_on, "
    "parentbased_always_off or parentbased_traceidratio (parentbased: an incoming "
    "`traceparent`'s sampled flag decides).",
    "OTEL_TRACES_SAMPLER_ARG": "Share of traces sampled (0..1) by the traceidratio samplers.",
    "OTEL_RESOURCE_ATTRIBUTES": "Extra resource attributes as `key=value` pairs separated by "
    "commas, e.g. `deployment.environment=prod`; `service.name` and `service.version` are set "
    "by the service.",
    "RAG_TRACE_QUERY_TEXT": "Put query text in the `rag.search` span (`rag.query.text`); off, "
    "spans carry no query or document text.",
    "RAG_METRICS": "Count requests, stages and events for `GET /metrics`; `false` only to "
    "measure what that costs (bench/telemetry_overhead.py).",
    "RAG_API_KEYS_FILE": "JSON file of API keys (their SHA-256, tenant, scopes; "
    "docs/security.md). Empty: no authentication, one tenant (a warning at start-up). Set but "
    "unreadable or invalid: start-up stops.",
    "RAG_API_KEYS_RELOAD_SECONDS": "How often, at most, the keys file is checked for changes "
    "(rotation without restart); an invalid new version is logged and the old keys stay.",
    "RAG_RATE_LIMIT_PER_SECOND": "Requests a second each API key may make on average (token "
    "bucket in Redis; a key in the keys file may set its own). 0: no rate limit.",
    "RAG_RATE_LIMIT_BURST": "Requests an API key may make at once, above its steady rate "
    "(the bucket's size).",
    "RAG_MAX_QUERY_CHARS": "Longest search query, in characters; longer ones get 422.",
    "RAG_MAX_BATCH_SEARCHES": "Most searches in one `POST /api/v1/search/batch` (1..100); "
    "more get 422. Their queries are embedded together, and each counts against the key's "
    "rate limit.",
    "RAG_MAX_TEXT_CHARS": "Longest document text, in characters; longer ones get 422.",
    "RAG_CORS_ORIGINS": "Origins browsers may call the API from, separated by commas (or `*`). "
    "Empty: no CORS headers, so browsers refuse cross-origin calls.",
    "RAG_REPLAY_BATCH": "Documents a replay (`rag-pipeline replay`, `POST /api/v1/reindex`) "
    "applies at a time; their chunks are embedded (or read from the cache) and written together.",
    "RAG_TRACE_URL_TEMPLATE": "Where the console links a search's trace: an http(s) URL with "
    "`{trace_id}` in it (e.g. `http://jaeger:16686/trace/{trace_id}`); empty: no link.",
    "RAG_TOMBSTONE_RETENTION_HOURS": "How long compaction keeps a deleted document's delete "
    "event (it holds no text): once every consumer group has acknowledged it and it is this "
    "old, it goes too.",
    "RAG_COMPACT_MIN_ENTRIES": "Automatic compaction of the document stream: not below this "
    "many entries; 0 turns it off (`rag-pipeline compact` and `POST /api/v1/compact` still work).",
    "RAG_COMPACT_GROWTH": "Automatic compaction runs once the document stream holds this many "
    "times the entries the last compaction left.",
    "RAG_COMPACT_CHECK_SECONDS": "How often the process that projects checks the document "
    "stream's length for automatic compaction.",
}

if set(SETTINGS_DOC) != set(ENV_NAMES):  # pragma: no cover - caught at import in every test run
    raise RuntimeError(f"settings without docs: {set(ENV_NAMES) ^ set(SETTINGS_DOC)}")


def settings_table() -> str:
    """The README's settings table, generated so the documentation cannot drift."""
    defaults = Settings()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for field in msgspec.structs.fields(Settings):
        default = getattr(defaults, field.name)
        rows.append(f"| `{field.encode_name}` | `{default}` | {SETTINGS_DOC[field.encode_name]} |")
    return "\n".join(rows)
