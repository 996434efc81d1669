"""Settings: defaults, parsing, errors that name the variable, and the README table."""

from __future__ import annotations

import pytest

from app.errors import SettingsError
from app.settings import ENV_NAMES, Settings, hash_tag, parse_sentinels, settings_table
from tests.conftest import ROOT


def test_defaults_need_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.top_k == 10
    assert settings.rerank is False
    assert settings.data_path.is_absolute()


def test_values_are_parsed_from_strings() -> None:
    settings = Settings.from_env(
        {
            "RAG_TOP_K": "25",
            "RAG_RERANK": "false",
            "RAG_MIN_SCORE": "0.3",
            "LOG_LEVEL": "DEBUG",
            "RAG_METADATA_INDEXES": "source:keyword, year:integer",
            "UNRELATED": "x",
        }
    )
    assert (settings.top_k, settings.rerank, settings.min_score) == (25, False, 0.3)
    assert settings.metadata_index_fields() == {"source": "keyword", "year": "integer"}


def test_event_log_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.redis_url, defaults.stream_prefix, defaults.redis_pool_size) == (
        "",
        "rag:",
        16,
    )
    assert defaults.retrieval_retention_seconds == 7 * 86400
    assert defaults.cache_ttl_seconds == 7 * 86400
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://:secret@cache:6380/2",
            "RAG_STREAM_PREFIX": "blue:",
            "RAG_EVENT_REDACT_QUERIES": "true",
            "RAG_PROJECTOR_MAX_DELIVERIES": "3",
            "RAG_PROJECTOR_BATCH": "128",
            "RAG_PROJECTOR_CLAIM_IDLE_MS": "5000",
        }
    )
    assert settings.redis_url == "redis://:secret@cache:6380/2"
    assert settings.stream_prefix == "blue:"
    assert settings.event_redact_queries is True
    assert (settings.projector_max_deliveries, settings.projector_batch) == (3, 128)
    assert settings.projector_claim_idle_ms == 5000


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3600", 3600),
        ("45s", 45),
        ("90m", 5400),
        ("36h", 129600),
        ("7d", 604800),
        (" 2 d ", 172800),
    ],
)
def test_retention_units(value: str, seconds: int) -> None:
    settings = Settings.from_env({"RAG_RETRIEVAL_RETENTION": value})
    assert settings.retrieval_retention_seconds == seconds


def test_a_bad_redis_url_is_named_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@cache:6379"})
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("REDIS_URL", "redis://cache:notaport/0", "REDIS_URL"),
        ("QDRANT_URL", "http://", "QDRANT_URL: the URL names no host"),
        ("QDRANT_URL", "http://qdrant:port", "QDRANT_URL"),
    ],
)
def test_urls_that_cannot_be_used_are_refused_at_start(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({name: value})


def test_qdrant_settings() -> None:
    assert Settings.from_env({}).qdrant_url == ""  # the embedded index
    assert Settings.from_env({"QDRANT_URL": ":memory:"}).qdrant_url == ":memory:"
    settings = Settings.from_env(
        {
            "QDRANT_URL": "https://qdrant.example:6333",
            "QDRANT_API_KEY": "k",
            "QDRANT_POOL_SIZE": "4",
            "QDRANT_TIMEOUT_SECONDS": "3",
            "QDRANT_PREFER_GRPC": "true",
            "QDRANT_COLLECTION_PREFIX": "prod_",
        }
    )
    assert (
        settings.qdrant_api_key,
        settings.qdrant_pool_size,
        settings.qdrant_timeout_seconds,
        settings.qdrant_prefer_grpc,
        settings.qdrant_collection_prefix,
    ) == ("k", 4, 3, True, "prod_")


def test_empty_values_mean_unset() -> None:
    assert Settings.from_env({"RAG_TOP_K": "  "}).top_k == 10


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RAG_BATCH_SIZE": "lots"}, "RAG_BATCH_SIZE"),
        ({"RAG_BATCH_SIZE": "0"}, "RAG_BATCH_SIZE"),
        ({"RAG_TOP_K": "101"}, "RAG_TOP_K"),
        ({"RAG_RERANK": "maybe"}, "RAG_RERANK"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"RAG_PORT": "70000"}, "RAG_PORT"),
        ({"RAG_MIN_SCORE": "1.5"}, "RAG_MIN_SCORE"),
        ({"RAG_METADATA_INDEXES": "year:date"}, "RAG_METADATA_INDEXES"),
        ({"RAG_CHUNK_SIZE": "64", "RAG_CHUNK_OVERLAP": "64"}, "RAG_CHUNK_OVERLAP"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_POOL_SIZE": "0"}, "REDIS_POOL_SIZE"),
        ({"RAG_STREAM_PREFIX": "rag docs:"}, "RAG_STREAM_PREFIX"),
        ({"RAG_CACHE_TTL_SECONDS": "0"}, "RAG_CACHE_TTL_SECONDS"),
        ({"RAG_EVENT_REDACT_QUERIES": "sometimes"}, "RAG_EVENT_REDACT_QUERIES"),
        ({"RAG_RETRIEVAL_RETENTION": "7w"}, "RAG_RETRIEVAL_RETENTION"),
        ({"RAG_RETRIEVAL_RETENTION": "0d"}, "RAG_RETRIEVAL_RETENTION"),
        ({"RAG_RETRIEVAL_RETENTION": "-5"}, "RAG_RETRIEVAL_RETENTION"),
        ({"RAG_PROJECTOR_MAX_DELIVERIES": "0"}, "RAG_PROJECTOR_MAX_DELIVERIES"),
        ({"RAG_PROJECTOR_BATCH": "many"}, "RAG_PROJECTOR_BATCH"),
        ({"RAG_PROJECTOR_CLAIM_IDLE_MS": "10"}, "RAG_PROJECTOR_CLAIM_IDLE_MS"),
        ({"QDRANT_URL": "qdrant:6333"}, "QDRANT_URL"),
        ({"QDRANT_URL": "grpc://qdrant:6334"}, "QDRANT_URL"),
        ({"QDRANT_POOL_SIZE": "0"}, "QDRANT_POOL_SIZE"),
        ({"QDRANT_TIMEOUT_SECONDS": "0.5"}, "QDRANT_TIMEOUT_SECONDS"),
        ({"QDRANT_PREFER_GRPC": "perhaps"}, "QDRANT_PREFER_GRPC"),
        ({"QDRANT_COLLECTION_PREFIX": "rag/"}, "QDRANT_COLLECTION_PREFIX"),
        ({"REDIS_SENTINELS": "sentinel-0", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s:70000", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_CLUSTER": "true"}, "REDIS_URL"),
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h:7000"}, "RAG_STREAM_PREFIX"),
        (
            {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h", "RAG_STREAM_PREFIX": "{}:"},
            "RAG_STREAM_PREFIX",
        ),
        (
            {"REDIS_CLUSTER": "true", "REDIS_SENTINELS": "s:1", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_CLUSTER",
        ),
        ({"RAG_REDIS_MIN_REPLICAS": "1"}, "RAG_REDIS_MIN_REPLICAS"),
        ({"RAG_REDIS_MIN_REPLICAS": "-1", "REDIS_URL": "redis://h"}, "RAG_REDIS_MIN_REPLICAS"),
        ({"RAG_REDIS_REPLICA_TIMEOUT_MS": "0"}, "RAG_REDIS_REPLICA_TIMEOUT_MS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(name)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.top_k = 3  # type: ignore[misc]


def test_readme_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table()
    assert all(f"`{name}`" in readme for name in ENV_NAMES)


def test_openai_embedder_settings() -> None:
    settings = Settings.from_env(
        {
            "RAG_EMBEDDER": "openai",
            "OPENAI_API_KEY": "sk-test",
            "RAG_EMBEDDING_DIMENSIONS": "256",
            "OPENAI_BASE_URL": "http://vllm:8000/v1",
            "RAG_EMBEDDER_BREAKER_FAILURES": "3",
        }
    )
    assert (settings.embedder, settings.embedding_model) == ("openai", "text-embedding-3-small")
    assert (settings.embedding_dimensions, settings.embedder_breaker_failures) == (256, 3)
    assert Settings.from_env({}).embedder == "local"


def test_security_settings() -> None:
    defaults = Settings.from_env({})
    assert defaults.api_keys_file == "" and defaults.cors_origin_list() == []
    assert (defaults.rate_limit_per_second, defaults.rate_limit_burst) == (20.0, 40)
    assert (defaults.max_query_chars, defaults.max_text_chars) == (4096, 1_000_000)
    settings = Settings.from_env(
        {
            "RAG_API_KEYS_FILE": "/etc/keys.json",
            "RAG_RATE_LIMIT_PER_SECOND": "0",
            "RAG_CORS_ORIGINS": "https://a.example.com, http://localhost:3000",
        }
    )
    assert settings.api_keys_file == "/etc/keys.json" and settings.rate_limit_per_second == 0
    assert settings.cors_origin_list() == ["https://a.example.com", "http://localhost:3000"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RAG_EMBEDDER": "cohere"}, "RAG_EMBEDDER"),
        ({"RAG_EMBEDDER": "openai", "OPENAI_BASE_URL": "vllm:8000"}, "OPENAI_BASE_URL"),
        ({"RAG_EMBEDDER": "openai"}, "OPENAI_API_KEY"),
        ({"RAG_MAX_MEMORY_MB": "-1"}, "RAG_MAX_MEMORY_MB"),
    ],
)
def test_bad_embedder_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RAG_CORS_ORIGINS": "https://a.example.com/path"}, "RAG_CORS_ORIGINS"),
        ({"RAG_CORS_ORIGINS": "a.example.com"}, "RAG_CORS_ORIGINS"),
        ({"RAG_RATE_LIMIT_BURST": "0"}, "RAG_RATE_LIMIT_BURST"),
        ({"RAG_MAX_QUERY_CHARS": "5000"}, "RAG_MAX_QUERY_CHARS"),
        ({"RAG_MAX_TEXT_CHARS": "2000000"}, "RAG_MAX_TEXT_CHARS"),
    ],
)
def test_bad_security_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_repr_hides_secrets_and_url_passwords() -> None:
    settings = Settings.from_env(
        {
            "OPENAI_API_KEY": "sk-very-secret",
            "QDRANT_API_KEY": "qd-very-secret",
            "REDIS_URL": "redis://user:hunter2@redis:6379/0",
            "QDRANT_URL": "http://qdrant:6333",
        }
    )
    shown = repr(settings)
    assert "sk-very-secret" not in shown and "qd-very-secret" not in shown
    assert "hunter2" not in shown and "redis://user:***@redis:6379/0" in shown
    assert "http://qdrant:6333" in shown and "openai_api_key='***'" in shown
    assert "openai_api_key=''" in repr(Settings.from_env({}))


def test_redis_topologies_that_are_accepted() -> None:
    sentinel = Settings.from_env(
        {
            "REDIS_SENTINELS": "sentinel-0:26379, [::1]:26380",
            "REDIS_SENTINEL_MASTER": "rag-primary",
            "RAG_REDIS_MIN_REPLICAS": "1",
        }
    )
    assert parse_sentinels(sentinel.redis_sentinels) == [("sentinel-0", 26379), ("::1", 26380)]
    cluster = Settings.from_env(
        {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h:7000", "RAG_STREAM_PREFIX": "{rag}:"}
    )
    assert hash_tag(cluster.stream_prefix) == "rag"
    # Redis hashes the text between the first { and the next }: these have no usable tag.
    assert [hash_tag(p) for p in ("rag:", "{}rag:", "rag{:", "a}{b}:")] == [None, None, None, "b"]


def test_the_sentinel_password_is_never_shown() -> None:
    settings = Settings.from_env(
        {"REDIS_SENTINELS": "s:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_PASSWORD": "pw"}
    )
    assert "pw" not in repr(settings)
