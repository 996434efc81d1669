"""SIGKILL `rag-pipeline worker` at seeded random moments mid-batch, many times, while
documents keep arriving; after the last restart every acknowledged document must be indexed
exactly once: its planned chunks, at its last version, nothing missing, nothing extra.

RAG_KILL_TEST_KILLS (default 10) sets the number of kills, RAG_KILL_TEST_SEED the seed:

    RAG_KILL_TEST_KILLS=50 python -m pytest tests/e2e/test_projector_kills.py -s
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from app.adapters.edge_index import EdgeIndex
from app.adapters.embedded_redis import EmbeddedRedis
from app.adapters.local_embedder import LocalEmbedder
from app.adapters.redis_doc_status import RedisDocStatus
from app.adapters.redis_streams import RedisEventLog
from app.domain import DEFAULT_TENANT, ChunkingParams, DocumentIn
from app.events import Streams
from app.indexing import Indexer, document_version
from app.ingest import LoggedIngest
from app.projector import GROUP
from tests.e2e.server import REDIS_URL, Server, drop_keys

KILLS = int(os.environ.get("RAG_KILL_TEST_KILLS", "10"))
SEED = int(os.environ.get("RAG_KILL_TEST_SEED", "20261126"))
CHUNKING = ChunkingParams(size=32, overlap=0)  # small chunks: one to several per document
WORDS = [
    "river",
    "mountain",
    "glacier",
    "desert",
    "forest",
    "ocean",
    "volcano",
    "canyon",
    "meadow",
    "island",
    "valley",
    "storm",
    "thunder",
    "comet",
    "planet",
    "orbit",
    "crystal",
    "mineral",
    "fossil",
    "coral",
    "tide",
    "harbor",
    "lantern",
    "compass",
    "quartz",
    "basalt",
    "granite",
    "marble",
    "willow",
    "cedar",
    "falcon",
    "heron",
    "otter",
    "badger",
    "lynx",
]


class Report(msgspec.Struct, kw_only=True):
    seed: int
    kills: int
    kills_mid_batch: int  # entries were pending (delivered, unacknowledged) at the kill
    documents: int  # distinct documents acknowledged
    events: int  # acknowledged appends (upserts, new versions, deletes)
    lost: int  # documents missing any chunk of their last version, or not deleted
    duplicated: int  # documents with points beyond their last version's chunks
    dead_letters: int
    seconds: float


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    """One backend is enough here: the machine's Redis when set, else an embedded Valkey."""
    if REDIS_URL:
        yield REDIS_URL
        return
    with EmbeddedRedis(tmp_path / "valkey") as server:
        yield server.url


@pytest.fixture()
def prefix() -> Iterator[str]:
    value = f"test:kill:{uuid.uuid4().hex}:"
    yield value
    drop_keys({value})  # on the machine's Redis; an embedded Valkey goes with its directory


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


class Workload:
    """The write side, driven from this process, and what it acknowledged."""

    def __init__(self, url: str, prefix: str, embedder: LocalEmbedder, rng: random.Random):
        self.log = RedisEventLog(url, pool_size=2)
        self.status = RedisDocStatus(url, prefix=prefix, pool_size=2)
        self.streams = Streams(prefix)
        self.ingest = LoggedIngest(
            self.log,
            self.status,
            streams=self.streams,
            projection=embedder.model_id,
            max_documents=1000,
            wait_seconds=1,
        )
        self.rng = rng
        self.expected: dict[str, DocumentIn | None] = {}  # None: deleted
        self.events = 0
        self._next = 0

    async def wave(self, size: int) -> None:
        """New documents, new versions of existing ones, and deletes; all acknowledged."""
        docs: dict[str, DocumentIn] = {}
        alive = sorted(k for k, v in self.expected.items() if v is not None)
        for _ in range(size):
            roll = self.rng.random()
            if alive and roll < 0.3:
                doc_id = self.rng.choice(alive)  # a new version
            else:
                doc_id, self._next = f"doc-{self._next:05d}", self._next + 1
            docs[doc_id] = DocumentIn(id=doc_id, text=text(self.rng), title=doc_id)
        accepted = await self.ingest.ingest(DEFAULT_TENANT, list(docs.values()), CHUNKING)
        self.events += sum(a.status == "pending" for a in accepted)
        self.expected.update(docs)
        for doc_id in self.rng.sample(alive, k=min(len(alive), size // 8)):
            if doc_id not in docs:
                await self.ingest.delete(DEFAULT_TENANT, doc_id)
                self.expected[doc_id] = None
                self.events += 1

    async def progress(self) -> tuple[int, int, str]:
        """Entries pending (delivered, not acknowledged), lag (not delivered), last read."""
        info = await self.log.group_info(self.streams.documents, GROUP)
        if info is None:
            return 0, await self.log.length(self.streams.documents), "0-0"
        return info.pending, info.lag or 0, info.last_delivered

    async def close(self) -> None:
        await self.log.close()
        await self.status.close()


async def run_kills(
    data_dir: Path, env: dict[str, str], workload: Workload, rng: random.Random
) -> int:
    """Kill the worker KILLS times, each at a random moment after it took a batch."""
    mid_batch = 0
    worker = await asyncio.to_thread(Server(data_dir, env=env, command="worker").start, 120)
    try:
        await workload.wave(60)
        for _ in range(KILLS):
            _, _, before = await workload.progress()
            await workload.wave(rng.randint(10, 40))
            # Until the worker holds entries of this wave unacknowledged (or has already
            # finished it), then a random moment within about one batch's work. Waiting for
            # a batch in hand rather than a fixed delay keeps most kills mid-batch however
            # fast the machine embeds.
            deadline = time.monotonic() + 30
            while True:
                pending, lag, last = await workload.progress()
                if last != before and (pending > 0 or lag == 0):
                    break
                assert time.monotonic() < deadline, "the worker reads nothing"
                await asyncio.sleep(0.002)
            await asyncio.sleep(rng.uniform(0, 0.15))
            mid_batch += (await workload.progress())[0] > 0
            worker.kill()
            worker = await asyncio.to_thread(Server(data_dir, env=env, command="worker").start, 120)
        deadline = time.monotonic() + 300
        while (await workload.progress())[:2] != (0, 0):
            assert time.monotonic() < deadline, "the worker did not catch up"
            await asyncio.sleep(0.1)
    finally:
        code = await asyncio.to_thread(worker.stop)
    assert code == 0, "the last worker did not stop cleanly"
    return mid_batch


def test_killed_projectors_lose_and_duplicate_nothing(
    tmp_path: Path, redis_url: str, prefix: str, embedder: LocalEmbedder
) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    env = {
        "REDIS_URL": redis_url,
        "RAG_STREAM_PREFIX": prefix,
        # Kills are external faults, not poison: however often a batch is killed, it must
        # be applied in the end rather than dead-lettered.
        "RAG_PROJECTOR_MAX_DELIVERIES": "1000",
        "RAG_PROJECTOR_BATCH": "32",
    }
    started = time.monotonic()

    async def drive() -> tuple[Workload, int, int]:
        workload = Workload(redis_url, prefix, embedder, rng)
        try:
            mid = await run_kills(data_dir, env, workload, rng)
            dead = await workload.log.length(workload.streams.dead_letter)
            views = {
                doc_id: await workload.ingest.status(DEFAULT_TENANT, doc_id)
                for doc_id in workload.expected
            }
            for doc_id, doc in workload.expected.items():
                view = views[doc_id]
                assert view is not None, doc_id
                assert view.status == ("deleted" if doc is None else "indexed"), (doc_id, view)
            return workload, mid, dead
        finally:
            await workload.close()

    workload, mid_batch, dead_letters = asyncio.run(drive())

    index = EdgeIndex(data_dir, model_id=embedder.model_id, dim=embedder.dim)
    try:
        held: dict[str, set[tuple[str, str]]] = {}
        for point_id, payload, _ in asyncio.run(index.all_points(DEFAULT_TENANT)):
            held.setdefault(payload["doc_id"], set()).add((point_id, payload["version"]))
    finally:
        index.close()
    planner = Indexer(embedder, index)
    lost = duplicated = 0
    for doc_id, doc in workload.expected.items():
        want: set[tuple[str, str]] = set()
        if doc is not None:
            version = document_version(doc, CHUNKING)
            plan = planner.plan(DEFAULT_TENANT, doc, version, CHUNKING)
            want = {(c.chunk_id, version) for c in plan}
        have = held.pop(doc_id, set())
        lost += bool(want - have)
        duplicated += bool(have - want)
    duplicated += len(held)  # documents nobody acknowledged

    report = Report(
        seed=SEED,
        kills=KILLS,
        kills_mid_batch=mid_batch,
        documents=len(workload.expected),
        events=workload.events,
        lost=lost,
        duplicated=duplicated,
        dead_letters=dead_letters,
        seconds=round(time.monotonic() - started, 1),
    )
    print(f"\nprojector kill test: {msgspec.json.encode(report).decode()}")
    assert (report.lost, report.duplicated, report.dead_letters) == (0, 0, 0), report
    # The kills must actually have hit work in progress for the test to mean anything.
    assert report.kills_mid_batch >= KILLS // 2, report
