"""Crash loops: SIGKILL `rag-pipeline serve` (projector in process) or `rag-pipeline worker`
at random moments, every 0.5-5 s, while documents, new versions and deletes keep arriving;
after the last restart every acknowledged change must be in the index exactly once (its last
version's chunks, nothing missing, nothing extra, deleted documents gone) and nothing may be
dead-lettered: a death while a batch is in flight is not the batch's fault.

The kill moments are drawn without looking at what the process does, so they land during
start-up, mid-batch, mid-write and while idle, as an OOM kill or a failing liveness probe
does. `serve` is fed through its HTTP API in requests of 20 (a request that dies with the
process is sent again, as a client would); `worker` is fed through the write side from this
process. Backends: the machine's Redis (REDIS_URL) and the embedded Valkey (for `serve`, its
own, under the data directory, with its append-only file).

RAG_KILL_TEST_KILLS (default 8) and RAG_KILL_TEST_DOCUMENTS (default 150) size the run,
RAG_KILL_TEST_SEED seeds it; the figures in docs/benchmarks.md are from

    RAG_KILL_TEST_KILLS=30 RAG_KILL_TEST_DOCUMENTS=500 python -m pytest -s \
        tests/e2e/test_projector_kills.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import RedisEventLog
from app.domain.events import Streams
from app.domain.records import DEFAULT_TENANT, ChunkingParams, DocumentIn
from app.errors import NotFound
from app.services.indexing import Indexer, document_version
from app.services.ingest import LoggedIngest
from app.services.projector import GROUP
from tests.e2e.conftest import WORDS
from tests.e2e.server import REDIS_URL, Server, drop_keys, free_port

KILLS = int(os.environ.get("RAG_KILL_TEST_KILLS", "8"))
DOCUMENTS = int(os.environ.get("RAG_KILL_TEST_DOCUMENTS", "150"))
SEED = int(os.environ.get("RAG_KILL_TEST_SEED", "20261205"))
GAP_SECONDS = (0.5, 5.0)
REQUEST = 20  # documents per ingest request
CHUNKING = ChunkingParams(size=32, overlap=0)  # small chunks: one to several per document

pytestmark = pytest.mark.slow


class Report(msgspec.Struct, kw_only=True):
    command: str
    backend: str
    seed: int
    kills: int
    kills_in_flight: int  # entries were delivered and unacknowledged at the kill
    documents: int  # distinct documents acknowledged
    changes: int  # acknowledged changes (upserts, new versions, deletes)
    lost: int  # documents missing a chunk of their last version, or not deleted
    duplicated: int  # documents with points beyond their last version's chunks
    dead_letters: int
    seconds: float


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    made = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=1)
    yield made
    made.close()


def text(rng: random.Random) -> str:
    sentences = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
        for _ in range(rng.randint(1, 9))
    ]
    return " ".join(sentences)


def plan_changes(rng: random.Random) -> list[tuple[str, list[DocumentIn] | str]]:
    """Requests of REQUEST documents (new ones and new versions of earlier ones), with a
    delete of an earlier document now and then, until DOCUMENTS documents exist."""
    changes: list[tuple[str, list[DocumentIn] | str]] = []
    made = 0
    alive: list[str] = []
    while made < DOCUMENTS:
        batch: dict[str, DocumentIn] = {}
        for _ in range(REQUEST):
            if alive and rng.random() < 0.3:
                doc_id = rng.choice(alive)  # a new version
            else:
                doc_id, made = f"doc-{made:05d}", made + 1
            batch[doc_id] = DocumentIn(id=doc_id, text=text(rng), title=doc_id)
        changes.append(("ingest", list(batch.values())))
        alive = sorted(set(alive) | set(batch))
        for doc_id in rng.sample(alive, k=min(len(alive), REQUEST // 8)):
            changes.append(("delete", doc_id))
            alive.remove(doc_id)
    return changes


class Expected:
    """What was acknowledged: each document's last change (None: deleted)."""

    def __init__(self) -> None:
        self.docs: dict[str, DocumentIn | None] = {}
        self.changes = 0


async def feed_over_http(
    port: int, changes: list[tuple[str, list[DocumentIn] | str]], expected: Expected
) -> None:
    """Send each change until it is acknowledged, through whatever process is up."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for kind, what in changes:
            tries = 0
            while True:
                tries += 1
                try:
                    if kind == "ingest":
                        assert isinstance(what, list)
                        body = {
                            "documents": [msgspec.to_builtins(d) for d in what],
                            "chunk_size": CHUNKING.size,
                            "chunk_overlap": CHUNKING.overlap,
                        }
                        reply = await client.post("/api/v1/ingest", json=body)
                    else:
                        reply = await client.delete(f"/api/v1/documents/{what}")
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)  # the process is down: a client retries
                    continue
                if reply.status_code in (200, 202) or (
                    kind == "delete" and reply.status_code == 404 and tries > 1
                ):
                    break  # (a 404 on a retry: the first try was appended before the kill)
                assert reply.status_code == 503, (reply.status_code, reply.text)
                await asyncio.sleep(0.2)
            if kind == "ingest":
                assert isinstance(what, list)
                expected.docs.update({d.id: d for d in what})
                expected.changes += len(what)
            else:
                assert isinstance(what, str)
                expected.docs[what] = None
                expected.changes += 1


async def feed_write_side(
    url: str,
    prefix: str,
    model_id: str,
    changes: list[tuple[str, list[DocumentIn] | str]],
    expected: Expected,
    rng: random.Random,
) -> None:
    """The write side in this process (a worker has no ingest API), paced like clients."""
    log = RedisEventLog(url, pool_size=2)
    status = RedisDocStatus(url, prefix=prefix, pool_size=2)
    ingest = LoggedIngest(
        log,
        status,
        streams=Streams(prefix),
        index_id=model_id,
        max_documents=1000,
        wait_seconds=1,
    )
    try:
        for kind, what in changes:
            if kind == "ingest":
                assert isinstance(what, list)
                await ingest.ingest(DEFAULT_TENANT, what, CHUNKING)
                expected.docs.update({d.id: d for d in what})
                expected.changes += len(what)
            else:
                assert isinstance(what, str)
                with contextlib.suppress(NotFound):
                    await ingest.delete(DEFAULT_TENANT, what)
                expected.docs[what] = None
                expected.changes += 1
            await asyncio.sleep(rng.uniform(0, 0.3))
    finally:
        await log.close()
        await status.close()


async def in_flight(server: Server, url: str | None, streams: Streams) -> int | None:
    """Entries delivered and not acknowledged right now (None: cannot tell)."""
    try:
        if url is not None:
            log = RedisEventLog(url, pool_size=1)
            try:
                info = await log.group_info(streams.documents, GROUP)
            finally:
                await log.close()
            return None if info is None else info.pending
        async with httpx.AsyncClient(timeout=0.5) as client:
            stats = (await client.get(f"{server.url}/api/v1/stats")).json()
            return int(stats["events"]["indexer_pending"])
    except Exception:
        return None


async def crash_loop(
    server: Server,
    url: str | None,
    streams: Streams,
    feeding: asyncio.Task[None],
    rng: random.Random,
) -> tuple[Server, int]:
    """KILLS SIGKILLs at random gaps, each followed by a new incarnation on the same port;
    returns the one left running (once the feeding is done) and the kills that found
    entries in flight."""
    server.launch()
    hits = 0
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(*GAP_SECONDS))
        hits += bool(await in_flight(server, url, streams))
        server.kill()
        server = Server(server.data_dir, env=server.env, command=server.command, port=server.port)
        server.launch()
    await asyncio.to_thread(server.wait_ready, 120)
    await asyncio.wait_for(feeding, 600)
    return server, hits


def held_points(data_dir: Path, embedder: LocalEmbedder) -> dict[str, list[dict[str, Any]]]:
    index = EdgeIndex(data_dir, model_id=embedder.model_id, dim=embedder.dim)
    try:
        held: dict[str, list[dict[str, Any]]] = {}
        for _, payload, _ in asyncio.run(index.all_points(DEFAULT_TENANT)):
            held.setdefault(payload["doc_id"], []).append(payload)
        return held
    finally:
        index.close()


def count(
    expected: Expected, held: dict[str, list[dict[str, Any]]], embedder: LocalEmbedder
) -> tuple[int, int]:
    """Documents lost and duplicated, comparing (version, chunk index) of what the index
    holds with the last acknowledged version's plan."""
    planner = Indexer(embedder, None)  # type: ignore[arg-type]
    lost = duplicated = 0
    for doc_id, doc in expected.docs.items():
        want: list[tuple[str, int]] = []
        if doc is not None:
            version = document_version(doc, CHUNKING)
            plan = planner.plan(DEFAULT_TENANT, doc, version, CHUNKING)
            want = [(version, c.chunk_index) for c in plan]
        have = [(p["version"], p["chunk_index"]) for p in held.pop(doc_id, [])]
        lost += bool(set(want) - set(have))
        duplicated += bool(set(have) - set(want)) or len(have) > len(set(have))
    return lost, duplicated + len(held)  # what is left: documents nobody acknowledged


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("backend", ["redis", "valkey"] if REDIS_URL else ["valkey"])
def test_crash_loops_lose_duplicate_and_dead_letter_nothing(
    command: str, backend: str, tmp_path: Path, embedder: LocalEmbedder
) -> None:
    rng = random.Random(f"{SEED}-{command}-{backend}")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    prefix = f"test:kill:{uuid.uuid4().hex}:"
    # The defaults otherwise, RAG_PROJECTOR_MAX_DELIVERIES included.
    env = {"RAG_STREAM_PREFIX": prefix, "RAG_CHUNK_SIZE": "32", "RAG_CHUNK_OVERLAP": "0"}
    valkey: EmbeddedRedis | None = None
    if backend == "redis":
        url: str | None = REDIS_URL
    elif command == "worker":
        valkey = EmbeddedRedis(tmp_path / "valkey")
        url = valkey.start()
    else:
        url = None  # serve's own embedded Valkey under the data directory
    env["REDIS_URL"] = url or ""
    streams = Streams(prefix)
    changes = plan_changes(rng)
    expected = Expected()
    started = time.monotonic()

    async def drive() -> tuple[Server, int]:
        first = Server(data_dir, env=env, command=command, port=free_port())
        if command == "serve":
            feed = feed_over_http(first.port, changes, expected)
        else:
            assert url is not None
            feed = feed_write_side(url, prefix, embedder.model_id, changes, expected, rng)
        return await crash_loop(first, url, streams, asyncio.create_task(feed), rng)

    server = None
    try:
        server, hits = asyncio.run(drive())
        dead, views = asyncio.run(settle(server, url, prefix, embedder.model_id, expected))
        code = server.stop()
        server = None
        assert code == 0, "the last process did not stop cleanly"
        for doc_id, doc in expected.docs.items():
            assert views[doc_id] == ("deleted" if doc is None else "indexed"), doc_id
        lost, duplicated = count(expected, held_points(data_dir, embedder), embedder)
        report = Report(
            command=command,
            backend=backend,
            seed=SEED,
            kills=KILLS,
            kills_in_flight=hits,
            documents=len(expected.docs),
            changes=expected.changes,
            lost=lost,
            duplicated=duplicated,
            dead_letters=dead,
            seconds=round(time.monotonic() - started, 1),
        )
        print(f"\ncrash loop: {msgspec.json.encode(report).decode()}")
        assert (report.lost, report.duplicated, report.dead_letters) == (0, 0, 0), report
        # Random moments must have hit work in flight for the test to mean anything.
        assert report.kills_in_flight >= 1, report
    finally:
        if server is not None:
            server.kill()
        if valkey is not None:
            valkey.stop()
        if backend == "redis":
            drop_keys({prefix})


async def settle(
    server: Server, url: str | None, prefix: str, model_id: str, expected: Expected
) -> tuple[int, dict[str, str]]:
    """Wait until the projector has applied everything; dead letters and each document's
    status, read through the API (`serve`) or Redis (`worker`)."""
    deadline = time.monotonic() + 300
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        if url is None or server.command == "serve":
            while True:
                stats = (await client.get("/api/v1/stats")).json()["events"]
                if stats["indexer_pending"] == 0 and stats["indexer_lag"] == 0:
                    break
                assert time.monotonic() < deadline, f"the projector did not catch up: {stats}"
                await asyncio.sleep(0.2)
            views = {}
            for doc_id in expected.docs:
                reply = await client.get(f"/api/v1/documents/{doc_id}")
                views[doc_id] = reply.json()["status"] if reply.status_code == 200 else "absent"
            return int(stats["dead_letters"]), views
    log = RedisEventLog(url, pool_size=2)
    status = RedisDocStatus(url, prefix=prefix, pool_size=2)
    streams = Streams(prefix)
    try:
        while True:
            info = await log.group_info(streams.documents, GROUP)
            if info is not None and info.pending == 0 and info.lag == 0:
                break
            assert time.monotonic() < deadline, f"the worker did not catch up: {info}"
            await asyncio.sleep(0.2)
        ingest = LoggedIngest(
            log, status, streams=streams, index_id=model_id, max_documents=1, wait_seconds=1
        )
        views = {}
        for doc_id in expected.docs:
            view = await ingest.status(DEFAULT_TENANT, doc_id)
            views[doc_id] = "absent" if view is None else view.status
        return await log.length(streams.dead_letter), views
    finally:
        await log.close()
        await status.close()
