"""Backup and restore of the event log in Redis: a consistent cut of the document stream, folded
to each document's newest entry, written to a backup file; a backup loaded into an empty log
with its original entry ids.

Export. One script reads every exported stream's last id and length at once: the cut. The
document stream up to it is read twice in XRANGE pages: first folded to the id of each
document's newest entry (app/domain/document_log.py; only ids are kept, so memory grows with
the number of documents, not their text), then again to write exactly those entries, tombstones
included, as stored. Entries up to the cut can only disappear, never appear, so both passes
finding as many entries as the cut's length proves none was deleted meanwhile (a compaction or
an erasure running beside the export); otherwise the export fails and is run again. Feedback,
when asked for, is every entry up to its cut.

Import. The whole file is checked first (format, version, checksum, counts, and every document
event decodable by this build): a file that fails is refused before anything is written. Then
pages of entries are appended with their original ids by a script that first checks the
stream's last id is still the one the import left it at (so a writer that was not stopped is
noticed at once, never interleaved), together with the written records those entries stand for
(app/adapters/redis/doc_status.py): document status then reads `pending` right after the
import, and `indexed` or `deleted` once the projector, whose group starts at the stream's
beginning, has applied them. Last, XSETID moves the stream's last id to the cut, so what is
appended later sorts after everything the source had ever written. Applied records, the
embedding cache and the dead letters are not restored: the projector rebuilds the first two,
and retries what had been dead-lettered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal

import msgspec

from app.adapters.backup_file import (
    BackupReader,
    BackupWriter,
    Header,
    Record,
    StreamCut,
    StreamName,
)
from app.adapters.redis.client import RedisClient, RedisTarget, as_text, translated
from app.adapters.redis.doc_status import written_key
from app.adapters.redis.replication import run_replicated
from app.adapters.redis.streams import EVENT_FIELD, EVENT_LOG, entries_of
from app.domain.document_log import DocKey, newest_per_document, written_record
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams, decode_event
from app.domain.records import id_key
from app.errors import BackupFileError, DependencyUnavailable, EventDecodeError, EventLogError

_PAGE = 1000  # entries per XRANGE
# A load script appends at most this many entries, or this many bytes of them: big enough
# that round trips do not dominate, small enough not to hold the server for long.
_LOAD_ENTRIES = 500
_LOAD_BYTES = 4 * 1024 * 1024

# KEYS: the streams. Replies {last generated id, length} per stream ({'0-0', 0} if missing).
_CUT = """
local out = {}
for i, key in ipairs(KEYS) do
  local last, length = '0-0', 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
    end
    length = redis.call('XLEN', key)
  end
  out[i] = {last, length}
end
return out
"""

_LAST_ID = """
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
"""

# KEYS: 1 the stream, 2.. written-record hashes. ARGV: 1 the event field, 2 the stream's last
# id as the import left it, 3 entries in this page, then (id, event) pairs, then (hash as an
# index into KEYS, doc id, record) triples. Replies {1, new last id} or {0, actual last id}.
_LOAD = (
    _LAST_ID
    + """
if last ~= ARGV[2] then return {0, last} end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('XADD', KEYS[1], ARGV[i], ARGV[1], ARGV[i + 1])
  last = ARGV[i]
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSET', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
return {1, last}
"""
)

# KEYS: 1 the stream. ARGV: 1 its last id as the import left it, 2 the last id to set.
_SET_LAST_ID = (
    _LAST_ID
    + """
if last ~= ARGV[1] then return {0, last} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'rag-import', '0', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'rag-import')
end
redis.call('XSETID', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""
)

_JSON = msgspec.json.Encoder()


class ExportProgress(msgspec.Struct, kw_only=True):
    """Where an export is; updated page by page."""

    phase: Literal["folding", "writing", "feedback", "done"] = "folding"
    read: int = 0  # stream entries read, over both passes and the feedback stream
    total: int = 0  # entries there are to read (the document stream's twice)
    documents: int = 0  # document records written (each document's newest entry)
    tombstones: int = 0  # of those, deletions
    feedback: int = 0  # feedback records written
    left_out: int = 0  # entries not exported: older versions, no event, no `event` field


class ImportProgress(msgspec.Struct, kw_only=True):
    """Where an import is; updated page by page."""

    phase: Literal["verifying", "checking", "loading", "done"] = "verifying"
    records: int = 0  # in the file (known once it has been verified)
    verified: int = 0
    loaded: int = 0  # appended by this run
    present: int = 0  # found in place already (--resume)
    documents: int = 0  # document records in the file
    tombstones: int = 0
    feedback: int = 0
    raw_bytes: int = 0  # bytes of the events appended


Progress = Callable[[Any], None]


def _stream_names(streams: Streams) -> dict[StreamName, str]:
    return {"documents": streams.documents, "feedback": streams.feedback}


async def read_cut(
    client: RedisClient, streams: Streams, names: Iterable[StreamName]
) -> dict[StreamName, StreamCut]:
    """Each named stream's last id and length, read at one instant."""
    wanted = list(names)
    keys = [_stream_names(streams)[name] for name in wanted]
    with translated(EVENT_LOG, "read the streams' last ids"):
        reply = await client.eval(_CUT, len(keys), *keys)
    return {
        name: StreamCut(last_id=as_text(last), length=int(length))
        for name, (last, length) in zip(wanted, reply, strict=True)
    }


async def _pages(
    client: RedisClient, stream: str, upto: str
) -> AsyncIterator[list[tuple[Any, Any]]]:
    """XRANGE pages of `stream` from its start up to `upto`, inclusive."""
    if upto == "0-0":
        return
    start = "-"
    while True:
        with translated(EVENT_LOG, f"XRANGE {stream}"):
            rows: list[tuple[Any, Any]] = (
                await client.xrange(stream, min=start, max=upto, count=_PAGE) or []
            )
        if not rows:
            return
        yield rows
        if len(rows) < _PAGE:
            return
        start = "(" + as_text(rows[-1][0])


async def export_log(
    client: RedisClient,
    streams: Streams,
    writer: BackupWriter,
    *,
    feedback: bool,
    build: str,
    created_at: float,
    on_progress: Progress | None = None,
) -> ExportProgress:
    """Write the document log (and, with `feedback`, the feedback stream) up to the cut to
    `writer`, which must be open; see the module doc. EventLogError if entries up to the cut
    were deleted while it ran: the file is then not finished."""
    names: list[StreamName] = ["documents", "feedback"] if feedback else ["documents"]
    cut = await read_cut(client, streams, names)
    progress = ExportProgress(
        total=2 * cut["documents"].length + (cut["feedback"].length if feedback else 0)
    )

    def moved(**changes: Any) -> None:
        for name, value in changes.items():
            setattr(progress, name, value)
        if on_progress is not None:
            on_progress(progress)

    writer.begin(
        Header(created_at=created_at, build=build, prefix=streams.prefix, streams=dict(cut))
    )
    # Pass 1: each document's newest entry id, and whether it is a deletion.
    newest: dict[DocKey, tuple[str, bool]] = {}
    folded = 0
    async for rows in _pages(client, streams.documents, cut["documents"].last_id):
        for key, entry in newest_per_document(entries_of(rows)).items():
            newest[key] = (entry.id, isinstance(entry.event, DocumentDeleted))
        folded += len(rows)
        moved(read=progress.read + len(rows))
    keep = dict(newest.values())
    del newest
    moved(phase="writing", left_out=folded - len(keep))
    # Pass 2: those entries, as stored, in stream order.
    written = 0
    async for rows in _pages(client, streams.documents, cut["documents"].last_id):
        kept = tombstones = 0
        for entry_id, fields in rows:
            deleted = keep.get(as_text(entry_id))
            if deleted is not None:
                writer.add("documents", as_text(entry_id), fields[EVENT_FIELD])
                kept += 1
                tombstones += deleted
        written += len(rows)
        moved(
            read=progress.read + len(rows),
            documents=progress.documents + kept,
            tombstones=progress.tombstones + tombstones,
        )
    expected = cut["documents"].length
    if folded != expected or written != expected or progress.documents != len(keep):
        raise EventLogError(
            f"the document stream changed under the export: of the {expected} entries it "
            f"held at the start, {min(folded, written)} were still there (a compaction or an "
            "erasure deleted entries meanwhile); nothing was kept, run the export again"
        )
    if feedback:
        moved(phase="feedback")
        async for rows in _pages(client, streams.feedback, cut["feedback"].last_id):
            kept = 0
            for entry_id, fields in rows:
                raw = fields.get(EVENT_FIELD)
                if raw is not None:
                    writer.add("feedback", as_text(entry_id), raw)
                    kept += 1
            moved(
                read=progress.read + len(rows),
                feedback=progress.feedback + kept,
                left_out=progress.left_out + len(rows) - kept,
            )
    writer.finish(tombstones=progress.tombstones)
    moved(phase="done")
    return progress


def _document_event(reader: BackupReader, record: Record) -> DocumentUpserted | DocumentDeleted:
    try:
        event = decode_event(record.raw)
    except EventDecodeError as exc:
        raise BackupFileError(
            f"{reader.path}: document entry {record.id} is not readable by this build ({exc}); "
            "refused, nothing written"
        ) from exc
    if not isinstance(event, DocumentUpserted | DocumentDeleted):
        raise BackupFileError(
            f"{reader.path} is corrupt: document entry {record.id} is a {type(event).__name__}; "
            "refused, nothing written"
        )
    return event


async def import_log(
    client: RedisClient,
    target: RedisTarget,
    streams: Streams,
    reader: BackupReader,
    *,
    resume: bool = False,
    on_progress: Progress | None = None,
) -> ImportProgress:
    """Load the backup `reader` reads into the streams under `streams.prefix`; see the module
    doc. BackupFileError, before anything is written, for a file that fails its checks;
    EventLogError, before anything is written, if a stream it holds entries for is not
    empty, unless `resume` and that stream holds exactly the file's first entries of it (an
    interrupted import of the same file, which then goes on where it stopped)."""
    progress = ImportProgress()

    def moved(**changes: Any) -> None:
        for name, value in changes.items():
            setattr(progress, name, value)
        if on_progress is not None:
            on_progress(progress)

    header = reader.header()
    for record in reader.records():
        if record.stream == "documents":
            event = _document_event(reader, record)
            progress.documents += 1
            progress.tombstones += isinstance(event, DocumentDeleted)
        else:
            progress.feedback += 1
        progress.verified += 1
        if progress.verified % _PAGE == 0:
            moved()
    trailer = reader.trailer
    assert trailer is not None
    if progress.tombstones != trailer.tombstones:
        raise BackupFileError(
            f"{reader.path} is corrupt: its tombstone count does not match its trailer; "
            "refused, nothing written"
        )
    moved(phase="checking", records=progress.verified)

    names = _stream_names(streams)
    there = await read_cut(client, streams, header.streams)
    for name, state in there.items():
        if state.length == 0 and state.last_id == "0-0":
            continue
        if not resume:
            raise EventLogError(
                f"{names[name]} already holds {state.length} entries (last id "
                f"{state.last_id}): import into an empty RAG_STREAM_PREFIX, or use --resume "
                "to finish an interrupted import of this same file; nothing written"
            )
        if state.length > trailer.records[name]:
            raise EventLogError(
                f"{names[name]} holds {state.length} entries, more than the "
                f"{trailer.records[name]} of this backup: --resume refused, nothing written"
            )
    if resume:
        await _check_beginning(client, reader, names, there)
    moved(phase="loading")

    last = {name: state.last_id for name, state in there.items()}
    skip = {name: state.length for name, state in there.items()}
    page: list[Record] = []
    size = 0
    try:
        for record in reader.records():
            if skip[record.stream] > 0:
                skip[record.stream] -= 1
                progress.present += 1
                continue
            if page and (
                record.stream != page[0].stream
                or len(page) >= _LOAD_ENTRIES
                or size + len(record.raw) > _LOAD_BYTES
            ):
                last[page[0].stream] = await _load(client, target, streams, page, last)
                moved(loaded=progress.loaded + len(page), raw_bytes=progress.raw_bytes + size)
                page, size = [], 0
            page.append(record)
            size += len(record.raw)
        if page:
            last[page[0].stream] = await _load(client, target, streams, page, last)
            moved(loaded=progress.loaded + len(page), raw_bytes=progress.raw_bytes + size)
        for name, cut in header.streams.items():
            if cut.last_id != "0-0" and cut.last_id != last[name]:
                await _set_last_id(client, target, names[name], last[name], cut.last_id)
    except DependencyUnavailable as exc:
        raise DependencyUnavailable(
            f"the import stopped after {progress.present + progress.loaded} of "
            f"{progress.records} entries ({exc}); run it again with --resume to go on",
            retry_after=exc.retry_after,
        ) from exc
    moved(phase="done")
    return progress


async def _check_beginning(
    client: RedisClient,
    reader: BackupReader,
    names: dict[StreamName, str],
    there: dict[StreamName, StreamCut],
) -> None:
    """EventLogError unless each stream holds exactly the file's first entries of it, ids and
    bytes alike: only then is going on where an import stopped the same as importing anew."""
    rows: dict[StreamName, AsyncIterator[list[tuple[Any, Any]]]] = {
        name: _pages(client, names[name], state.last_id) for name, state in there.items()
    }
    buffered: dict[StreamName, list[tuple[Any, Any]]] = {name: [] for name in there}
    left = {name: state.length for name, state in there.items()}
    for record in reader.records():
        if not any(left.values()):
            return
        if left[record.stream] == 0:
            continue
        if not buffered[record.stream]:
            buffered[record.stream] = list(await anext(rows[record.stream], []))
            buffered[record.stream].reverse()
        entry_id, fields = buffered[record.stream].pop() if buffered[record.stream] else (b"", {})
        if as_text(entry_id) != record.id or fields.get(EVENT_FIELD) != record.raw:
            raise EventLogError(
                f"{names[record.stream]} does not hold the beginning of this backup (entry "
                f"{as_text(entry_id) or 'missing'} where it has {record.id}): --resume "
                "refused, nothing written"
            )
        left[record.stream] -= 1


async def _load(
    client: RedisClient,
    target: RedisTarget,
    streams: Streams,
    page: list[Record],
    last: dict[StreamName, str],
) -> str:
    """Append one page of one stream (and, for documents, their written records); the
    stream's new last id."""
    name = page[0].stream
    stream = _stream_names(streams)[name]
    if id_key(page[0].id) <= id_key(last[name]):
        # XADD would refuse it half-way through the script, leaving half a page.
        raise EventLogError(
            f"{stream}'s last id {last[name]} is not before the backup's next entry "
            f"{page[0].id}: it holds something else; import into an empty RAG_STREAM_PREFIX"
        )
    keys = [stream]
    args: list[Any] = [EVENT_FIELD, last[name], len(page)]
    for record in page:
        args += [record.id, record.raw]
    if name == "documents":
        hashes: dict[str, int] = {}
        for record in page:
            event = decode_event(record.raw)
            assert isinstance(event, DocumentUpserted | DocumentDeleted)  # checked already
            key = written_key(streams.prefix, event.tenant)
            if key not in hashes:
                hashes[key] = len(keys) + 1  # Lua counts from 1
                keys.append(key)
            record_json = _JSON.encode(written_record(record.id, event))
            args += [hashes[key], event.doc_id, record_json]
    with translated(EVENT_LOG, f"append {len(page)} entries to {stream}"):
        ok, now = await run_replicated(client, target, _LOAD, keys, args)
    if not int(ok):
        raise EventLogError(
            f"{stream} was written to by something else during the import (its last id is "
            f"{as_text(now)}, the import left it at {last[name]}): stop every writer (serve, "
            "worker) before importing; the prefix now holds part of the backup and those "
            "entries, so delete its keys and import again"
        )
    return as_text(now)


async def _set_last_id(
    client: RedisClient, target: RedisTarget, stream: str, expected: str, last_id: str
) -> None:
    with translated(EVENT_LOG, f"XSETID {stream}"):
        ok, now = await run_replicated(client, target, _SET_LAST_ID, [stream], [expected, last_id])
    if not int(ok):
        raise EventLogError(
            f"{stream} was written to by something else during the import (its last id is "
            f"{as_text(now)}): stop every writer before importing"
        )
