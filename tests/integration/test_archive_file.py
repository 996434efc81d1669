"""A backup file that cannot be trusted is refused before anything reaches Redis: every flipped
byte, every truncation, a newer format or event schema, a checksum or count that disagrees,
bytes after the trailer. The command says so in one line and exits 1."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from app.adapters.backup_file import (
    MAGIC,
    BackupReader,
    BackupWriter,
    Header,
    StreamCut,
    Trailer,
)
from app.adapters.redis.archive import import_log
from app.adapters.redis.client import RedisClient, RedisTarget, close_client, durable_client
from app.domain.events import (
    DocumentDeleted,
    DocumentUpserted,
    FeedbackGiven,
    Streams,
    encode_event,
)
from app.errors import BackupFileError
from tests.integration.redis_fixtures import sync_client

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio


def upserted(doc_id: str) -> bytes:
    return encode_event(
        DocumentUpserted(
            tenant="acme",
            doc_id=doc_id,
            version=f"v-{doc_id}",
            title=doc_id,
            text=f"the text of {doc_id} " * 20,
            metadata={},
            chunk_size=64,
            chunk_overlap=8,
            at=1.0,
            traceparent=None,
        )
    )


def write(
    path: Path, *, version: int = 1, documents: list[tuple[str, bytes]] | None = None
) -> None:
    """A small valid backup (unless told otherwise): 30 documents, one deleted, and feedback."""
    if documents is None:
        documents = [(f"1-{i}", upserted(f"d{i}")) for i in range(30)]
        documents.append(
            (
                "2-0",
                encode_event(
                    DocumentDeleted(tenant="acme", doc_id="d30", at=1.0, traceparent=None)
                ),
            )
        )
    feedback = encode_event(
        FeedbackGiven(
            retrieval_id="r", tenant="acme", doc_id="d1", chunk_id=None, relevance=1, at=1.0
        )
    )
    cut = {
        "documents": StreamCut(last_id="2-0", length=40),
        "feedback": StreamCut(last_id="3-0", length=1),
    }
    with BackupWriter(str(path)) as writer:
        writer.begin(
            Header(version=version, created_at=1.0, build="test", prefix="p:", streams=cut)
        )
        for entry_id, raw in documents:
            writer.add("documents", entry_id, raw)
        writer.add("feedback", "3-0", feedback)
        writer.finish(tombstones=sum(b"DocumentDeleted" in raw for _, raw in documents))


def frames(path: Path) -> tuple[bytes, list[bytes]]:
    """The decompressed file as (magic, frame bodies)."""
    data = gzip.decompress(path.read_bytes())
    assert data.startswith(MAGIC)
    at, bodies = len(MAGIC), []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        bodies.append(data[at + 4 : at + 4 + length])
        at += 4 + length
    return data[: len(MAGIC)], bodies


def rewrite(path: Path, magic: bytes, bodies: list[bytes]) -> None:
    out = io.BytesIO()
    out.write(magic)
    for body in bodies:
        out.write(struct.pack(">I", len(body)) + body)
    path.write_bytes(gzip.compress(out.getvalue()))


@pytest.fixture()
async def client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    made = durable_client(redis_target, pool_size=2, socket_timeout=10.0, connect_timeout=2.0)
    yield made
    await close_client(made)


async def refused(client: RedisClient, target: RedisTarget, prefix: str, path: Path) -> str:
    with pytest.raises(BackupFileError) as caught:
        await import_log(client, target, Streams(prefix), BackupReader(path))
    message = str(caught.value)
    assert "\n" not in message and message.endswith("refused, nothing written")
    return message


def keys_under(target: RedisTarget, prefix: str) -> list[bytes]:
    raw = sync_client(target)
    try:
        return list(raw.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        raw.close()


async def test_the_valid_file_loads(
    client: RedisClient, redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    """The control: the file the other tests damage is accepted as written."""
    write(tmp_path / "ok.ragbak")
    done = await import_log(
        client, redis_target, Streams(prefix), BackupReader(tmp_path / "ok.ragbak")
    )
    assert (done.documents, done.tombstones, done.feedback) == (31, 1, 1)


async def test_every_flipped_byte_is_refused_or_changes_nothing(
    client: RedisClient, redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    """A flip in the data is refused (gzip's CRC-32, the SHA-256, the framing). Deflate has
    a few bits that decode to nothing (padding after the last block, the code of a symbol
    never used): a flip there leaves the content as it was, which the SHA-256 then proves."""
    path = tmp_path / "ok.ragbak"
    write(path)
    good = path.read_bytes()
    records = list(BackupReader(path).records())
    damaged = tmp_path / "flipped.ragbak"
    # gzip's bytes 4-9 (mtime, extra flags, OS) hold nothing that is read.
    positions = [0, 1, 2, 3, *range(10, len(good))]
    harmless = []
    for at in positions:
        damaged.write_bytes(good[:at] + bytes([good[at] ^ 0x10]) + good[at + 1 :])
        try:
            same = list(BackupReader(damaged).records())
        except BackupFileError:
            await refused(client, redis_target, prefix, damaged)
            continue
        assert same == records
        harmless.append(at)
    assert len(positions) > 500 and len(harmless) < len(positions) // 50
    assert keys_under(redis_target, prefix) == []


async def test_every_truncation_is_refused(
    client: RedisClient, redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "ok.ragbak"
    write(path)
    good = path.read_bytes()
    cut = tmp_path / "cut.ragbak"
    for length in range(len(good)):
        cut.write_bytes(good[:length])
        await refused(client, redis_target, prefix, cut)
    # Cut inside the decompressed data, recompressed properly: only the framing can tell.
    magic, bodies = frames(path)
    rewrite(cut, magic, bodies[:-1])
    assert "truncated" in await refused(client, redis_target, prefix, cut)
    assert keys_under(redis_target, prefix) == []


async def test_a_newer_format_or_event_schema_is_refused(
    client: RedisClient, redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "v2.ragbak"
    write(path, version=2)
    assert "format version 2; this build reads version 1" in await refused(
        client, redis_target, prefix, path
    )
    future = upserted("d0").replace(b'"schema":1', b'"schema":2')
    write(path, documents=[("1-0", upserted("d1")), ("1-1", future)])
    assert "document entry 1-1 is not readable by this build" in await refused(
        client, redis_target, prefix, path
    )
    assert keys_under(redis_target, prefix) == []


async def test_a_checksum_count_or_trailer_that_disagrees_is_refused(
    client: RedisClient, redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "ok.ragbak"
    write(path)
    magic, bodies = frames(path)
    bad = tmp_path / "bad.ragbak"

    # One byte of one event changed, then compressed anew: gzip is content, the hash is not.
    rewrite(bad, magic, [*bodies[:5], bodies[5].replace(b"text of", b"text on"), *bodies[6:]])
    assert "SHA-256 does not match" in await refused(client, redis_target, prefix, bad)

    # A record left out, its trailer's hash made to fit: the counts still tell.
    kept = [bodies[0], *bodies[2:-1]]
    trailer = msgspec.msgpack.decode(bodies[-1], type=Trailer)
    digest = hashlib.sha256(magic)
    for body in kept:
        digest.update(struct.pack(">I", len(body)) + body)
    forged = msgspec.msgpack.encode(
        Trailer(trailer.records, trailer.tombstones, digest.hexdigest())
    )
    rewrite(bad, magic, [*kept, forged])
    assert "record counts do not match" in await refused(client, redis_target, prefix, bad)

    # Two backups glued together.
    bad.write_bytes(path.read_bytes() * 2)
    assert "bytes after its trailer" in await refused(client, redis_target, prefix, bad)

    bad.write_bytes(b"PK\x03\x04 a zip file, say")
    assert "not a backup" in await refused(client, redis_target, prefix, bad)
    bad.write_bytes(gzip.compress(b"some other gzip file"))
    assert "not a rag-pipeline backup" in await refused(client, redis_target, prefix, bad)
    assert keys_under(redis_target, prefix) == []


def test_the_command_refuses_in_one_line(
    redis_target: RedisTarget, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "ok.ragbak"
    write(path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    env = {**os.environ, "REDIS_URL": redis_target.url, "RAG_STREAM_PREFIX": prefix}
    done = subprocess.run(
        [sys.executable, "-m", "app", "import", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rag-pipeline: ") and "truncated" in last, done.stderr
    assert keys_under(redis_target, prefix) == []
