"""The backup file: gzip of a magic line, a versioned header, framed records, a checksummed trailer.

Layout of the decompressed bytes (docs/design.md, "Backup and restore"):

    MAGIC                          b"rag-pipeline backup\\n"
    frame(Header)                  msgpack map; `version` is read first, alone
    frame(Record) ...              msgpack ["r", stream, entry id, raw event bytes]
    frame(Trailer)                 msgpack ["end", records per stream, tombstones, sha256]

where frame(x) is a 4-byte big-endian length, then x. The SHA-256 covers every byte before
the trailer's frame (magic and header included); gzip's own CRC-32 covers the compressed
member. Only the magic and the header's `version` are fixed for good: everything after them
may change with the version, which a reader checks before anything else.

A file is written to FILE.tmp, fsynced and renamed, so FILE is either the previous backup or
a complete new one; `-` writes to standard output.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import msgspec

from app.domain.records import id_key
from app.errors import BackupFileError

FORMAT_VERSION = 1
MAGIC = b"rag-pipeline backup\n"
STDIO = "-"

StreamName = Literal["documents", "feedback"]

_LENGTH = struct.Struct(">I")
# Larger than any event this service writes (RAG_MAX_TEXT_CHARS of escaped JSON): a bigger
# length can only be corruption, and must not make the reader allocate it.
_MAX_FRAME = 64 * 1024 * 1024
# Frames are gathered and handed to gzip this many bytes at a time: one call per record
# would cost more than the compression of a small one.
_FLUSH_BYTES = 1024 * 1024


class StreamCut(msgspec.Struct, frozen=True, kw_only=True):
    """A stream as the export found it when it began: the cut."""

    last_id: str  # its last generated id: the export holds nothing after it
    length: int  # entries it held


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup holds and where it came from."""

    version: int = FORMAT_VERSION
    created_at: float  # epoch seconds when the export began
    build: str  # the rag-pipeline version that wrote it
    prefix: str  # RAG_STREAM_PREFIX of the deployment exported
    streams: dict[StreamName, StreamCut]  # the streams it holds records of
    compacted: bool = True  # documents: each document's newest entry only


class Record(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    """One stream entry: its original id and its stored `event` field, byte for byte."""

    stream: StreamName
    id: str
    raw: bytes


class Trailer(msgspec.Struct, frozen=True, array_like=True, tag="end"):
    """Counts and the SHA-256 of everything before the trailer."""

    records: dict[StreamName, int]
    tombstones: int  # of the document records, those that are DocumentDeleted
    sha256: str


class _Version(msgspec.Struct):
    """The one header field every version keeps."""

    version: int


_ENCODER = msgspec.msgpack.Encoder()
_FRAME_DECODER = msgspec.msgpack.Decoder(Record | Trailer)


class _Counting(io.RawIOBase):
    """A write-only stream that counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        written = self.sink.write(data)
        self.written += len(data)
        return written if written is not None else len(data)


class BackupWriter:
    """Writes one backup: `begin(header)`, `add(...)` per record in stream order, `finish()`.
    Leaving the `with` block without `finish()` removes the unfinished FILE.tmp."""

    def __init__(self, path: str, *, level: int = 6) -> None:
        self.path = path
        self._level = level
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self._counts: dict[StreamName, int] = {}
        self._last: dict[StreamName, tuple[int, int]] = {}
        self._tmp: Path | None = None
        self._handle: IO[bytes] | None = None
        self._counter: _Counting | None = None
        self._gzip: gzip.GzipFile | None = None
        self.raw_bytes = 0  # decompressed bytes so far

    @property
    def file_bytes(self) -> int:
        """Compressed bytes written so far (the file's size once finished)."""
        return self._counter.written if self._counter is not None else 0

    def __enter__(self) -> BackupWriter:
        try:
            if self.path == STDIO:
                sink: IO[bytes] = sys.stdout.buffer
            else:
                self._tmp = Path(f"{self.path}.tmp")
                sink = self._handle = self._tmp.open("wb")
        except OSError as exc:
            raise BackupFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._counter = _Counting(sink)
        # mtime=0: the same log exported twice gives the same bytes.
        self._gzip = gzip.GzipFile(
            fileobj=self._counter, mode="wb", compresslevel=self._level, mtime=0
        )
        self._put(MAGIC)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gzip is not None:  # not finished: drop what was written
            self._gzip = None
            if self._handle is not None:
                self._handle.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)

    def begin(self, header: Header) -> None:
        self._counts = dict.fromkeys(header.streams, 0)
        self._frame(_ENCODER.encode(header))

    def add(self, stream: StreamName, entry_id: str, raw: bytes) -> None:
        key = id_key(entry_id)
        if stream not in self._counts or key <= self._last.get(stream, (-1, -1)):
            raise ValueError(f"{stream} {entry_id}: not in the header, or out of stream order")
        self._last[stream] = key
        self._counts[stream] += 1
        self._frame(_ENCODER.encode(Record(stream, entry_id, raw)))

    def finish(self, *, tombstones: int) -> Trailer:
        """Write the trailer and make the file FILE (fsync, rename, fsync the directory)."""
        assert self._gzip is not None, "not begun, or finished already"
        self._flush()
        trailer = Trailer(dict(self._counts), tombstones, self._hash.hexdigest())
        body = _ENCODER.encode(trailer)
        try:
            self._gzip.write(_LENGTH.pack(len(body)) + body)
            self.raw_bytes += _LENGTH.size + len(body)
            self._gzip.close()
            self._gzip = None
            if self._handle is None:
                sys.stdout.buffer.flush()
            else:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                assert self._tmp is not None
                os.replace(self._tmp, self.path)
                directory = os.open(Path(self.path).resolve().parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except OSError as exc:
            raise BackupFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return trailer

    def _frame(self, body: bytes) -> None:
        self._put(_LENGTH.pack(len(body)))
        self._put(body)

    def _put(self, data: bytes) -> None:
        self._hash.update(data)
        self._pending += data
        self.raw_bytes += len(data)
        if len(self._pending) >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        assert self._gzip is not None
        try:
            self._gzip.write(self._pending)
        except OSError as exc:
            raise BackupFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._pending.clear()


class BackupReader:
    """Reads a backup, checking it as it goes: `header()` (magic and version first), then
    `records()`, which raises BackupFileError at the first thing wrong and, once the last
    record has been read, unless the trailer's counts and SHA-256 match what was read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trailer: Trailer | None = None  # set once records() has read the whole file

    def header(self) -> Header:
        with self._opened() as (_, _, header):
            return header

    def records(self) -> Iterator[Record]:
        with self._opened() as (source, digest, header):
            counts: dict[StreamName, int] = dict.fromkeys(header.streams, 0)
            last: dict[StreamName, tuple[int, int]] = {}
            while True:
                frame = self._frame(source)
                if frame is None:
                    raise self._refused("is truncated: it ends before its trailer")
                try:
                    item = _FRAME_DECODER.decode(frame[_LENGTH.size :])
                except msgspec.DecodeError as exc:
                    raise self._refused(f"is corrupt (a record does not decode: {exc})") from exc
                if isinstance(item, Trailer):
                    break
                digest.update(frame)
                if item.stream not in counts:
                    raise self._refused(f"is corrupt (a {item.stream} record, not in its header)")
                key = _id_key(item.id)
                if key is None or key <= last.get(item.stream, (-1, -1)):
                    raise self._refused(
                        f"is corrupt ({item.stream} entry {item.id!r} out of order)"
                    )
                last[item.stream] = key
                counts[item.stream] += 1
                yield item
            if digest.hexdigest() != item.sha256:
                raise self._refused("is corrupt: its SHA-256 does not match its trailer")
            if counts != item.records:
                raise self._refused("is corrupt: its record counts do not match its trailer")
            if self._read(source, 1):
                raise self._refused("is corrupt: there are bytes after its trailer")
            self.trailer = item

    @contextlib.contextmanager
    def _opened(self) -> Iterator[tuple[io.BufferedIOBase, Any, Header]]:
        """The file opened past its header: (decompressed bytes, their SHA-256 so far,
        header). The version is checked before anything that may depend on it."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise self._refused(f"cannot be read: {exc.strerror or exc}") from exc
        with handle, gzip.GzipFile(fileobj=handle, mode="rb") as source:
            digest = hashlib.sha256()
            magic = self._read(source, len(MAGIC))
            if magic != MAGIC:
                raise self._refused("is not a rag-pipeline backup (no magic line)")
            digest.update(magic)
            frame = self._frame(source)
            if frame is None:
                raise self._refused("is truncated: it ends before its header")
            body = frame[_LENGTH.size :]
            try:
                version = msgspec.msgpack.decode(body, type=_Version).version
            except msgspec.DecodeError as exc:
                raise self._refused(f"is corrupt (its header does not decode: {exc})") from exc
            if not 1 <= version <= FORMAT_VERSION:
                raise self._refused(
                    f"is backup format version {version}; this build reads version "
                    f"{FORMAT_VERSION} (import it with a build at least as new as the one "
                    "that exported it)"
                )
            try:
                header = msgspec.msgpack.decode(body, type=Header)
            except msgspec.DecodeError as exc:
                raise self._refused(f"is corrupt (its header does not decode: {exc})") from exc
            digest.update(frame)
            yield source, digest, header

    def _frame(self, source: io.BufferedIOBase) -> bytes | None:
        head = self._read(source, _LENGTH.size)
        if not head:
            return None
        if len(head) < _LENGTH.size:
            raise self._refused("is truncated (it ends inside a record)")
        (length,) = _LENGTH.unpack(head)
        if length > _MAX_FRAME:
            raise self._refused(f"is corrupt (a record claims {length} bytes)")
        body = self._read(source, length)
        if len(body) < length:
            raise self._refused("is truncated (it ends inside a record)")
        return head + body

    def _read(self, source: io.BufferedIOBase, size: int) -> bytes:
        try:
            return source.read(size)
        except EOFError as exc:
            raise self._refused("is truncated (the compressed data ends early)") from exc
        except gzip.BadGzipFile as exc:
            raise self._refused(f"is corrupt or not a backup (gzip: {exc})") from exc
        except zlib.error as exc:
            raise self._refused(f"is corrupt (gzip: {exc})") from exc
        except OSError as exc:
            raise self._refused(f"cannot be read: {exc.strerror or exc}") from exc

    def _refused(self, problem: str) -> BackupFileError:
        return BackupFileError(f"{self.path} {problem}; refused, nothing written")


def _id_key(entry_id: str) -> tuple[int, int] | None:
    ms, sep, seq = entry_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        return None
    return int(ms), int(seq)
