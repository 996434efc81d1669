"""`rag-pipeline compact` SIGKILLed at random moments while documents keep changing: the stream
never loses a document's newest acknowledged event, and the compaction after the last kill
finishes (the lock a killed one held expires; its half-made copy is removed)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from app.adapters.redis.streams import RedisEventLog
from app.domain.events import DocumentUpserted, Streams
from tests.e2e.server import REDIS_URL

KILLS = int(os.environ.get("RAG_COMPACTION_KILLS", "6"))
DOCS = 2000
VERSIONS = 8

pytestmark = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the machine's Redis)")


def _event(doc: int, version: int) -> DocumentUpserted:
    return DocumentUpserted(
        tenant="kills",
        doc_id=f"d{doc}",
        version=f"v{version}",
        title="",
        text=f"Document {doc} at version {version}. " * 12,
        metadata={},
        chunk_size=128,
        chunk_overlap=16,
        at=time.time(),
        traceparent=None,
    )


def test_compaction_killed_at_random_loses_no_newest_event(tmp_path: Path) -> None:
    prefix = f"{{kills-{uuid.uuid4().hex[:8]}}}:"
    stream = Streams(prefix).documents
    copy = f"{stream}:rewrite"
    newest: dict[str, str] = {}  # doc id -> the id of its newest acknowledged event
    lock = threading.Lock()

    async def append(events: list[DocumentUpserted]) -> None:
        log = RedisEventLog(REDIS_URL, pool_size=2)
        try:
            for start in range(0, len(events), 200):
                part = events[start : start + 200]
                ids = await log.append_many(stream, part)
                with lock:
                    newest.update({e.doc_id: i for e, i in zip(part, ids, strict=True)})
        finally:
            await log.close()

    asyncio.run(append([_event(d, v) for v in range(VERSIONS) for d in range(DOCS)]))
    stop = threading.Event()

    def keep_changing() -> None:
        rng, version = random.Random(1), VERSIONS
        while not stop.is_set():
            asyncio.run(append([_event(rng.randrange(DOCS), version) for _ in range(20)]))
            version += 1

    writer = threading.Thread(target=keep_changing)
    writer.start()
    env = {**os.environ, "REDIS_URL": REDIS_URL, "RAG_STREAM_PREFIX": prefix}
    raw = redis.Redis.from_url(REDIS_URL)
    rng = random.Random(7)
    killed = 0
    try:
        for _ in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "compact"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Kill while it copies: once the copy beside the stream exists, at a random moment.
            deadline = time.monotonic() + 20
            while proc.poll() is None and not raw.exists(copy) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None and raw.exists(copy):
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            _check(raw, stream, newest, lock)
        stop.set()
        writer.join()
        # The last compaction runs to the end once the killed one's lock has expired.
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [sys.executable, "-m", "app", "compact"], env=env, capture_output=True, text=True
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            assert "being rewritten" in done.stderr, done.stderr  # the dead one's lock
            time.sleep(1)
        assert done.returncode == 0, done.stderr
        _check(raw, stream, newest, lock)
        assert raw.xlen(stream) == DOCS  # one entry per document after a full compaction
        assert not raw.exists(copy)  # no half-made copy left behind
        assert killed >= KILLS // 2, f"only {killed} of {KILLS} runs were killed while copying"
    finally:
        stop.set()
        writer.join()
        keys = list(raw.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            raw.delete(*keys)
        raw.close()


def _check(raw: redis.Redis, stream: str, newest: dict[str, str], lock: threading.Lock) -> None:
    with lock:
        wanted = dict(newest)
    present = {
        (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        for entry_id, _ in raw.xrange(stream)
    }
    lost = [doc for doc, entry_id in wanted.items() if entry_id not in present]
    assert lost == [], f"{len(lost)} documents lost their newest event, e.g. {lost[:5]}"
