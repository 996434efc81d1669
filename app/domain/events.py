"""The events on the streams: past-tense, versioned, tagged structs and their one codec."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import msgspec

from app.errors import EventDecodeError

# Events are stored as JSON, not msgpack. The document stream is the source of truth and
# outlives every build of this code, so its entries should be readable without it: with
# `redis-cli XRANGE` during an incident, with `jq`, from any language. msgspec's JSON codec
# costs microseconds per event, nothing next to embedding the same document. JSON cannot
# hold NaN or infinity (msgspec writes null, and decoding into a float then fails), so
# producers must not put them in scores or timings; bytes fields travel as base64.


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event: `type` names it on the wire, `schema` is its layout version."""

    # The newest layout of this event type this build can read; bump it (and the field
    # default) with every incompatible change, and deploy readers before writers.
    SCHEMA: ClassVar[int] = 1
    schema: int = 1


class DocumentUpserted(_Event, frozen=True, kw_only=True, tag="DocumentUpserted"):
    """A document's content (at a content-hash version) was accepted for indexing."""

    tenant: str
    doc_id: str
    version: str
    title: str
    text: str
    metadata: dict[str, Any]
    chunk_size: int
    chunk_overlap: int
    at: float  # epoch seconds at the writer
    traceparent: str | None  # W3C trace context of the request that caused it


class DocumentDeleted(_Event, frozen=True, kw_only=True, tag="DocumentDeleted"):
    """A document was deleted; every version of it leaves the index."""

    tenant: str
    doc_id: str
    at: float
    traceparent: str | None


class RecordedResult(msgspec.Struct, frozen=True, kw_only=True):
    """One result of a recorded retrieval: what was returned and what each stage scored."""

    chunk_id: str
    doc_id: str
    score: float
    scores: dict[str, float]


class RetrievalRecorded(_Event, frozen=True, kw_only=True, tag="RetrievalRecorded"):
    """A search was answered: its query (or the query's hash), parameters, results, timings."""

    retrieval_id: str
    tenant: str
    query: str | None  # None when queries are redacted
    query_sha256: str | None  # set when redacted, so identical queries still group together
    params: dict[str, Any]
    results: list[RecordedResult]
    timings_ms: dict[str, float]
    trace_id: str | None
    at: float


class FeedbackGiven(_Event, frozen=True, kw_only=True, tag="FeedbackGiven"):
    """A client judged one result of a retrieval (by document or by chunk)."""

    retrieval_id: str
    tenant: str
    doc_id: str | None
    chunk_id: str | None
    relevance: int
    at: float


class EventDeadLettered(_Event, frozen=True, kw_only=True, tag="EventDeadLettered"):
    """An entry could not be applied after repeated deliveries and was set aside with why."""

    source_stream: str
    source_id: str
    group: str
    raw: bytes  # the entry exactly as it was stored, so it can be inspected or re-appended
    error: str
    deliveries: int
    at: float


Event = DocumentUpserted | DocumentDeleted | RetrievalRecorded | FeedbackGiven | EventDeadLettered

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)


def decode_event(raw: bytes) -> Event:
    """Decode one stored event; anything else (garbage, unknown type, newer schema) raises
    EventDecodeError, so a consumer can dead-letter it instead of crashing on it."""
    try:
        event = _DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise EventDecodeError(f"not a valid event: {exc}") from exc
    if event.schema > event.SCHEMA or event.schema < 1:
        # A newer layout may carry fields this build would silently drop; refuse to guess.
        raise EventDecodeError(
            f"{type(event).__name__} schema {event.schema} is not readable by this build "
            f"(reads 1..{event.SCHEMA})"
        )
    return event


def query_sha256(query: str) -> str:
    """The hash stored instead of a redacted query.

    Unsalted, so identical queries group together in quality figures; for the same reason a
    short, guessable query can be recovered by hashing guesses, which redaction does not stop.
    """
    return hashlib.sha256(query.encode()).hexdigest()


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One stream entry as read: its decoded event, or the error that stopped decoding.

    `raw` is the stored `event` field, or, for an entry without one, the msgpack encoding of
    its field/value pairs; either way it keeps everything needed to dead-letter the entry.
    """

    id: str
    event: Event | None
    raw: bytes
    error: str | None

    @property
    def timestamp_ms(self) -> int:
        """When the log accepted the entry (server clock, epoch ms), from its id."""
        return int(self.id.partition("-")[0])


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer group's position on its stream."""

    consumers: int
    pending: int  # delivered to some consumer and not yet acknowledged
    lag: int | None  # entries not yet delivered; None when the server cannot tell (after trims)
    last_delivered: str


class ConsumerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer of a group: what it holds and how long since it last read."""

    name: str
    pending: int  # delivered to it and not yet acknowledged
    idle_ms: int  # since its last read (or attempt, on Redis >= 7.2)


class StoreMemory(msgspec.Struct, frozen=True, kw_only=True):
    """The memory of the server holding the log (Redis INFO memory), every key of it counted."""

    used_bytes: int  # used_memory
    max_bytes: int  # maxmemory; 0 when the server has no limit (it grows until the host is full)
    policy: str  # maxmemory-policy: what the server does at the limit


class Streams(msgspec.Struct, frozen=True):
    """The stream names under one prefix (`RAG_STREAM_PREFIX`)."""

    prefix: str = "rag:"

    @property
    def documents(self) -> str:
        return f"{self.prefix}documents"

    @property
    def retrievals(self) -> str:
        return f"{self.prefix}retrievals"

    @property
    def feedback(self) -> str:
        return f"{self.prefix}feedback"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.documents, self.retrievals, self.feedback, self.dead_letter)
