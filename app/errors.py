"""The error tree: every failure the service raises on purpose is one of these."""

from __future__ import annotations


class RagError(Exception):
    """Root of the tree; adapters translate library errors into a subclass with `raise ... from`."""


class SettingsError(RagError):
    """A setting is missing or malformed; start-up stops with this message."""


class InvalidRequest(RagError):
    """The client sent something we cannot accept (HTTP 4xx)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 422,
        code: str = "invalid_request",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.code = code


class NotFound(RagError):
    """The named resource does not exist (HTTP 404)."""


class DependencyUnavailable(RagError):
    """A dependency (index, embedder, event log) cannot serve now; retry later (HTTP 503)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReplicated(DependencyUnavailable):
    """Redis took a write, but fewer replicas than RAG_REDIS_MIN_REPLICAS confirmed it in time:
    a failover may or may not keep it, so the request is not acknowledged (HTTP 503)."""

    def __init__(self, message: str, *, confirmed: int, wanted: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed
        self.wanted = wanted


class ModelIntegrityError(RagError):
    """A model or tokenizer file does not match its published checksum."""


class EventDecodeError(RagError):
    """An entry's bytes are not an event of a schema this build reads; dead-letter it."""


class EventLogError(RagError):
    """The event log refused a command for a reason a retry cannot fix (bad credentials, a key
    of the wrong type): a misconfiguration or a bug, not an outage."""


class EmbedderUnavailable(DependencyUnavailable):
    """The embeddings API cannot embed now (outage, rate limit, breaker open, bad credentials,
    no quota): the texts are not at fault, so the projector holds their events, never
    dead-letters them."""


class EmbedderRejected(RagError):
    """The embeddings API refused these texts (400/422): a retry of the same texts fails too."""


class Unauthenticated(RagError):
    """No API key, or one the keys file does not hold (HTTP 401)."""

    def __init__(self, message: str, *, token_given: bool) -> None:
        super().__init__(message)
        self.token_given = token_given


class Forbidden(RagError):
    """A valid API key without the scope the endpoint needs (HTTP 403)."""


class RateLimited(RagError):
    """The key's token bucket is empty (HTTP 429); `headers` carry Retry-After and RateLimit-*."""

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class BackupFileError(RagError):
    """A backup file this build will not load (corrupt, truncated, not a backup, written by a
    newer build), or cannot write; refused before anything is written to Redis."""
