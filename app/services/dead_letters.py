"""Dead letters an operator can act on: list, show, requeue and drop what the projector gave up on.

The projector moves an event it cannot apply to `{prefix}dead-letter` (an EventDeadLettered
carrying the stored entry's bytes) and marks its document failed. From here an operator can
read those entries (paged, newest or oldest first, one tenant's or all), requeue one once its
cause is gone, or drop it.

Requeue appends the original event to the document stream as a new entry and records it as
the document's newest write, so the document reads `pending` again exactly as after an
ingest, then removes the dead letter. A change to the document accepted after the
dead-lettered one wins: then nothing is appended, the answer is `superseded`, and the dead
letter is removed all the same (its content is stale). The check, the append, the record and
the removal are one atomic step in the store (`DeadLetterStore.requeue`), so an ingest of the
same document cannot slip in between.
"""

from __future__ import annotations

import re
import time
from typing import Literal

import msgspec

from app.domain.doc_status import DocView, resolve
from app.domain.events import (
    DocumentDeleted,
    DocumentUpserted,
    Entry,
    EventDeadLettered,
    Streams,
    decode_event,
)
from app.errors import EventDecodeError, InvalidRequest, NotFound
from app.ports import DeadLetterStore, DocStatusStore, EventLog
from app.telemetry import metrics

Order = Literal["newest", "oldest"]

# A dead letter's id as the API and the CLI take it: the full "<ms>-<seq>" form (a bare
# "<ms>" would name every entry of that millisecond), each part a Redis stream id's u64.
_ENTRY_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")
_U64 = 2**64 - 1
# Listing reads the stream in pages and keeps the tenant's entries; past this many entries
# read in one call it answers with what it found and a cursor, so a tenant with few dead
# letters among many never holds the event loop (or Redis) for long.
_READ_PAGE = 200
_MAX_SCANNED = 5_000
# Requeue looks through the document-stream entries the projector has not acknowledged for
# a newer change to the document that has no status record yet; past this many the check
# would hold Redis too long, and the requeue is refused until the projector catches up.
DEFAULT_SCAN_LIMIT = 10_000


def entry_id(value: str) -> str | None:
    """`value` as Redis writes it ("007-0" is "7-0") if it is a complete stream entry id
    Redis accepts, else None."""
    match = _ENTRY_ID.match(value)
    if match is None:
        return None
    ms, seq = (int(part) for part in match.groups())
    return f"{ms}-{seq}" if ms <= _U64 and seq <= _U64 else None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the dead-letter stream, with what its original event says about itself."""

    id: str  # the entry in the dead-letter stream
    source_stream: str  # where the original entry was
    source_id: str  # the original entry's id
    group: str  # the consumer group that gave up on it
    error: str  # why
    deliveries: int
    at: float  # when it was dead-lettered, epoch seconds
    # From the original event: None when it cannot be read (then only the CLI, which sees
    # every tenant, shows the entry; a tenant never sees what it cannot be shown to own).
    tenant: str | None
    doc_id: str | None
    event_type: str | None  # "DocumentUpserted", "DocumentDeleted", ...
    version: str | None  # an upsert's content version
    # Why it cannot be requeued as it is (does not decode, not a document event, ...);
    # None when it can.
    problem: str | None
    raw: bytes  # the original entry as stored


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    letters: list[DeadLetter]
    # Pass as `after` for the next page; None once the stream has no more in this order.
    next: str | None


class Requeued(msgspec.Struct, frozen=True, kw_only=True):
    """What a requeue did. requeued: the event is in the document stream again as `event_id`
    and the document is pending; superseded: a newer change (`event_id`) to the document was
    accepted since, nothing was appended. Either way the dead letter is gone."""

    letter: DeadLetter
    outcome: Literal["requeued", "superseded"]
    event_id: str


class RequeueCommand(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the store needs to requeue one dead letter atomically."""

    letter_stream: str
    letter_id: str
    stream: str  # the document stream the event goes back to
    group: str  # the consumer group projecting that stream
    index_id: str  # whose applied records say what the index reflects
    tenant: str
    doc_id: str
    after: str  # the dead-lettered entry's id: any change to the document newer than it wins
    event: bytes  # the event to append, encoded
    op: Literal["upsert", "delete"]
    version: str | None  # an upsert's version, for the document's written record
    at: float  # for the written record


class RequeueReply(msgspec.Struct, frozen=True, kw_only=True):
    """requeued / superseded: see Requeued (`event_id` set); gone: the dead letter was not
    there (requeued or dropped already); busy: more than the scan limit of unacknowledged
    document entries would have had to be searched for a newer change."""

    outcome: Literal["requeued", "superseded", "gone", "busy"]
    event_id: str | None = None


class DeadLetters:
    """The dead-letter stream of one deployment, for the API (one tenant at a time) and the
    CLI (`tenant=None`: every tenant, undecodable entries included).

    `index_id` is the index whose applied records tell what the index reflects (its
    embedding model id), as for LoggedIngest.
    """

    def __init__(
        self,
        log: EventLog,
        store: DeadLetterStore,
        status: DocStatusStore,
        *,
        streams: Streams,
        index_id: str,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> None:
        self.log = log
        self.store = store
        self.status_store = status
        self.streams = streams
        self.index_id = index_id
        self.scan_limit = scan_limit

    @property
    def stream(self) -> str:
        return self.streams.dead_letter

    async def count(self) -> int:
        """Entries in the dead-letter stream, every tenant's."""
        return await self.log.length(self.stream)

    async def page(
        self,
        *,
        tenant: str | None,
        order: Order = "newest",
        after: str | None = None,
        limit: int = 20,
    ) -> DeadLetterPage:
        """Up to `limit` dead letters of `tenant` (None: all), in `order`, from just past
        `after`. Fewer than `limit` with a `next` cursor means the read stopped at its bound
        (many other tenants' entries): ask again from `next`."""
        if limit < 1:
            raise InvalidRequest("limit must be at least 1", field="limit")
        cursor = None if after is None else entry_id(after)
        if after is not None and cursor is None:
            raise InvalidRequest(
                f"after must be a dead letter id like 1700000000000-0, got {after!r}",
                field="after",
            )
        found: list[DeadLetter] = []
        scanned = 0
        while True:
            want = min(_READ_PAGE, _MAX_SCANNED - scanned)
            entries = await self._read(order, cursor, want)
            for entry in entries:
                cursor = entry.id
                letter = view(entry)
                if tenant is None or letter.tenant == tenant:
                    found.append(letter)
                    if len(found) == limit:
                        return DeadLetterPage(letters=found, next=entry.id)
            scanned += len(entries)
            if len(entries) < want:
                return DeadLetterPage(letters=found, next=None)
            if scanned >= _MAX_SCANNED:
                return DeadLetterPage(letters=found, next=cursor)

    async def _read(self, order: Order, cursor: str | None, count: int) -> list[Entry]:
        if order == "oldest":
            if cursor == f"{_U64}-{_U64}":
                return []  # nothing can follow the largest id (and Redis refuses "(" on it)
            start = "-" if cursor is None else f"({cursor}"
            return await self.log.range(self.stream, start=start, count=count)
        if cursor == "0-0":
            return []  # nothing precedes the smallest id (and Redis refuses "(0-0")
        end = "+" if cursor is None else f"({cursor}"
        return await self.store.newest_first(self.stream, end=end, count=count)

    async def get(self, letter_id: str, *, tenant: str | None) -> DeadLetter:
        """One dead letter; NotFound if there is none by that id for `tenant` (another
        tenant's is as unknown as one that never was)."""
        wanted = entry_id(letter_id)
        entry = None if wanted is None else await self.log.get(self.stream, wanted)
        if entry is None or entry.id != wanted:
            raise NotFound(f"dead letter {letter_id!r} is not in the dead-letter stream")
        letter = view(entry)
        if tenant is not None and letter.tenant != tenant:
            raise NotFound(f"dead letter {letter_id!r} is not in the dead-letter stream")
        return letter

    async def show(
        self, letter_id: str, *, tenant: str | None
    ) -> tuple[DeadLetter, DocView | None]:
        """A dead letter and its document's status now (None if it cannot be told: no
        tenant or id, or a document the status records do not know)."""
        letter = await self.get(letter_id, tenant=tenant)
        if letter.tenant is None or letter.doc_id is None:
            return letter, None
        ((written, applied),) = await self.status_store.both(
            self.index_id, letter.tenant, [letter.doc_id]
        )
        return letter, resolve(letter.doc_id, written, applied)

    async def requeue(self, letter_id: str, *, tenant: str | None) -> Requeued:
        """Append the dead letter's event again (or find it superseded) and remove it.

        NotFound for an unknown id (also one requeued or dropped a moment ago); InvalidRequest
        (409) for an entry that cannot be requeued (it does not decode, is not a document
        event, or came from another stream) or while too many document entries wait for the
        projector to tell whether a newer change exists.
        """
        letter = await self.get(letter_id, tenant=tenant)
        if letter.problem is not None:
            raise InvalidRequest(
                f"dead letter {letter.id} cannot be requeued: {letter.problem}; drop it once "
                "you have what you need from it",
                field="letter_id",
                status=409,
                code="not_requeueable",
            )
        if letter.source_stream != self.streams.documents:
            # Only the projector of the document stream dead-letters; anything else here was
            # put by hand, and where it belongs is not ours to guess.
            raise InvalidRequest(
                f"dead letter {letter.id} came from {letter.source_stream!r}, not from the "
                f"document stream {self.streams.documents!r}",
                field="letter_id",
                status=409,
                code="not_requeueable",
            )
        event = decode_event(letter.raw)  # decodes: `problem` would say otherwise
        assert isinstance(event, DocumentUpserted | DocumentDeleted)
        reply = await self.store.requeue(
            RequeueCommand(
                letter_stream=self.stream,
                letter_id=letter.id,
                stream=self.streams.documents,
                group=letter.group,
                index_id=self.index_id,
                tenant=event.tenant,
                doc_id=event.doc_id,
                after=letter.source_id,
                event=letter.raw,  # exactly as it was first appended
                op="upsert" if isinstance(event, DocumentUpserted) else "delete",
                version=event.version if isinstance(event, DocumentUpserted) else None,
                at=time.time(),
            ),
            scan_limit=self.scan_limit,
        )
        if reply.outcome == "gone":
            raise NotFound(f"dead letter {letter_id!r} is not in the dead-letter stream")
        if reply.outcome == "busy":
            raise InvalidRequest(
                f"more than {self.scan_limit} document events wait for the projector, too many "
                "to check for a newer change to the document now; requeue once it has caught "
                "up (rag_embedding_queue_size)",
                field="letter_id",
                status=409,
                code="projector_behind",
            )
        assert reply.event_id is not None
        metrics.dead_letters_removed(1)
        return Requeued(letter=letter, outcome=reply.outcome, event_id=reply.event_id)

    async def drop(self, letter_id: str, *, tenant: str | None) -> DeadLetter:
        """Delete a dead letter for good; NotFound if it is not there (dropped already)."""
        letter = await self.get(letter_id, tenant=tenant)
        if not await self.store.delete(self.stream, letter.id):
            raise NotFound(f"dead letter {letter_id!r} is not in the dead-letter stream")
        metrics.dead_letters_removed(1)
        return letter


class _Addressed(msgspec.Struct):
    """The fields every document event has had, read from an event this build cannot decode
    whole (a newer schema, say), so it can still be shown to its tenant."""

    tenant: str
    doc_id: str | None = None
    type: str | None = None


def view(entry: Entry) -> DeadLetter:
    """A dead-letter stream entry as an operator sees it, whatever it holds."""
    letter = entry.event
    if not isinstance(letter, EventDeadLettered):
        what = entry.error or f"a {type(letter).__name__}"
        return DeadLetter(
            id=entry.id,
            source_stream="",
            source_id="",
            group="",
            error=f"not a dead letter: {what}",
            deliveries=0,
            at=entry.timestamp_ms / 1000,
            tenant=None,
            doc_id=None,
            event_type=None,
            version=None,
            problem="it is not a dead letter (nothing the projector wrote)",
            raw=entry.raw,
        )
    tenant: str | None = None
    doc_id: str | None = None
    event_type: str | None = None
    version: str | None = None
    problem: str | None = None
    try:
        event = decode_event(letter.raw)
    except EventDecodeError as exc:
        problem = f"its event does not decode ({exc})"
        try:
            addressed = msgspec.json.decode(letter.raw, type=_Addressed)
        except msgspec.DecodeError:
            pass
        else:
            tenant, doc_id, event_type = addressed.tenant, addressed.doc_id, addressed.type
    else:
        event_type = type(event).__name__
        tenant = getattr(event, "tenant", None)
        if isinstance(event, DocumentUpserted | DocumentDeleted):
            doc_id = event.doc_id
            version = event.version if isinstance(event, DocumentUpserted) else None
        else:
            problem = f"{event_type} is not a document event"
    if problem is None and entry_id(letter.source_id) is None:
        problem = f"its source id {letter.source_id!r} is not a stream entry id"
    return DeadLetter(
        id=entry.id,
        source_stream=letter.source_stream,
        source_id=letter.source_id,
        group=letter.group,
        error=letter.error,
        deliveries=letter.deliveries,
        at=letter.at,
        tenant=tenant,
        doc_id=doc_id,
        event_type=event_type,
        version=version,
        problem=problem,
        raw=letter.raw,
    )
