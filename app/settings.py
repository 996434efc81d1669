"""The one frozen Settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

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
    cache_ttl_seconds: Annotated[int, Meta(ge=1, le=10 * 365 * 86400)] = msgspec.field(
        default=7 * 86400, name="RAG_CACHE_TTL_SECONDS"
    )
    event_redact_queries: bool = msgspec.field(default=False, name="RAG_EVENT_REDACT_QUERIES")
    retrieval_retention: str = msgspec.field(default="7d", name="RAG_RETRIEVAL_RETENTION")
    record_retrievals: bool = msgspec.field(default=True, name="RAG_RECORD_RETRIEVALS")
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
    ingest_wait_seconds: Annotated[float, Meta(gt=0, le=600)] = msgspec.field(
        default=30.0, name="RAG_INGEST_WAIT_SECONDS"
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
        _check_redis_url(settings.redis_url)
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


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _check_redis_url(url: str) -> None:
    if url and urlsplit(url).scheme not in _REDIS_SCHEMES:
        raise SettingsError(
            f"REDIS_URL: expected a redis://, rediss:// or unix:// URL, got scheme "
            f"{urlsplit(url).scheme!r}"
        )


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
    "RAG_CACHE_TTL_SECONDS": "How long a cached embedding (keyed by tenant, model and text) "
    "lives in Redis.",
    "RAG_EVENT_REDACT_QUERIES": "Record retrievals with the query's SHA-256 instead of its text.",
    "RAG_RETRIEVAL_RETENTION": "Age after which retrieval events are trimmed: seconds, or a "
    "number with a unit s, m, h or d (e.g. `90m`, `7d`).",
    "RAG_RECORD_RETRIEVALS": "Whether every search is recorded on the retrievals stream. "
    "`false` stops recording: `GET /api/v1/retrievals/{id}` and feedback then answer 404 for "
    "new searches, and `/api/v1/quality` has nothing new to count (for benchmarks, or where "
    "no query may be kept even hashed).",
    "RAG_PROJECTOR_MAX_DELIVERIES": "Deliveries of a document event that fail before it is "
    "moved to the dead-letter stream.",
    "RAG_PROJECTOR_BATCH": "Document events the projector reads and applies at a time.",
    "RAG_PROJECTOR_CLAIM_IDLE_MS": "How long an event may sit unacknowledged with a consumer "
    "before another consumer claims it (the first is presumed dead).",
    "RAG_PROJECTOR_IN_PROCESS": "Whether `serve` runs the projector (document events -> index) "
    "itself. The embedded index has one writer: the process that opened it, so `worker` runs "
    "only when no `serve` holds the data directory; `false` pauses indexing while `serve` "
    "runs (events wait in the stream).",
    "RAG_INGEST_WAIT_SECONDS": "Longest an ingest or delete with `?wait=true` waits for the "
    "projector before answering 202 with status pending.",
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
