"""Erasure end to end on the embedded defaults: a canary document with several versions, searched,
judged and dead-lettered, is erased; then no byte of its text, title or metadata is left in any
Redis key (streams read entry by entry, every value DUMPed whole) or in any file under the data
directory (index generations, write-ahead logs, the Valkey append-only file)."""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import EVENT_FIELD
from app.domain.events import DocumentUpserted, EventDeadLettered, Streams, encode_event
from tests.e2e.server import Server

# Unique strings that occur nowhere but in the canary: its text, title and metadata.
TEXT_MARK = "zqxcanarytext"
TITLE_MARK = "zqxcanarytitle"
META_MARK = "zqxcanarymeta"


def _encoded(mark: bytes) -> list[bytes]:
    """The mark, and the base64 it becomes inside any longer base64 text (at each of the
    three alignments; a dead letter's `raw` event is base64 in its JSON)."""
    forms = [mark]
    for pad in range(3):
        text = base64.b64encode(b"\0" * pad + mark)
        forms.append(text[math.ceil(pad * 8 / 6) : (pad + len(mark)) * 8 // 6])
    return forms


MARKS = [form for m in (TEXT_MARK, TITLE_MARK, META_MARK) for form in _encoded(m.encode())]


def _canary(version: int) -> dict[str, object]:
    return {
        "id": "canary",
        "title": f"Pelican report {TITLE_MARK}",
        "text": f"Version {version}: pelicans nest on basalt cliffs near {TEXT_MARK} lagoons. "
        f"The colony counted {100 + version} pairs this spring, {TEXT_MARK}{version}.",
        "metadata": {"owner": f"{META_MARK}-{version}", "year": 2020 + version},
    }


OTHERS = [
    {"id": f"other-{i}", "text": f"Granite quarries and {w} in the valley, report {i}."}
    for i, w in enumerate(["herons", "tides", "kilns", "lichens"])
]


def test_an_erased_document_leaves_no_byte_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # The embedded defaults: Valkey with its append-only file in the data directory.
    srv = Server(data_dir, env={"REDIS_URL": "", "RAG_STREAM_PREFIX": "rag:"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for version in range(3):
                r = http.post("/api/v1/ingest?wait=true", json={"documents": [_canary(version)]})
                assert r.json()["documents"][0]["status"] == "indexed", r.text
            r = http.post("/api/v1/ingest?wait=true", json={"documents": OTHERS})
            assert r.status_code == 200, r.text
            found = http.post("/api/v1/search", json={"query": "pelicans nesting on cliffs"})
            body = found.json()
            assert body["results"][0]["doc_id"] == "canary"
            feedback = http.post(
                "/api/v1/feedback",
                json={"retrieval_id": body["retrieval_id"], "doc_id": "canary", "relevance": 1},
            )
            assert feedback.status_code == 201, feedback.text
            url = EmbeddedRedis(data_dir).start()
            raw = redis.Redis.from_url(url)
            # Uncompressed DUMPs, so a mark inside a stream node is found byte for byte.
            raw.config_set("rdbcompression", "no")
            _dead_letter_a_canary_version(raw)
            # The recorder flushes retrieval events in the background.
            _wait_for(lambda: raw.xlen("rag:retrievals") > 0 and raw.xlen("rag:feedback") > 0)
            # The scans find the canary where it is before the erasure: in the streams, the
            # index's segments and write-ahead log, the append-only file.
            assert set(_keys_holding_marks(raw)) >= {"rag:documents", "rag:dead-letter"}
            before = _files_holding_marks(data_dir)
            assert any(f.startswith("index/") for f in before), before
            assert any(f.startswith("redis/") for f in before), before

            r = http.delete("/api/v1/documents/canary?erase=true")
            assert r.status_code == 202, r.text
            erasure = r.json()["erasure"]
            assert r.headers["location"] == f"/api/v1/erasures/{erasure['erasure_id']}"
            erasure = _until_complete(http, r.headers["location"])

            assert erasure["events_removed"] == 3
            assert erasure["dead_letters_removed"] == 1
            assert erasure["feedback_removed"] == 1
            assert erasure["retrievals_scrubbed"] >= 1
            assert erasure["cached_embeddings_removed"] >= 3
            assert erasure["redis_persistence"] == "append-only file rewritten"
            assert erasure["completed_at"] is not None
            status = http.get("/api/v1/documents/canary").json()
            assert status["status"] == "deleted"
            after = http.post("/api/v1/search", json={"query": "pelicans nesting on cliffs"})
            assert "canary" not in {h["doc_id"] for h in after.json()["results"]}
            # The rest is untouched.
            assert http.get("/api/v1/documents/other-1").json()["status"] == "indexed"

            assert _keys_holding_marks(raw) == []
            assert _files_holding_marks(data_dir) == []
            raw.close()
    finally:
        srv.stop()


def _dead_letter_a_canary_version(raw: redis.Redis) -> None:
    """A dead letter holding a canary event, as the projector leaves one when it gives up."""
    doc = _canary(9)
    event = DocumentUpserted(
        tenant="default",
        doc_id="canary",
        version="v9",
        title=str(doc["title"]),
        text=str(doc["text"]),
        metadata=dict(doc["metadata"]),  # type: ignore[call-overload]
        chunk_size=128,
        chunk_overlap=16,
        at=time.time(),
        traceparent=None,
    )
    letter = EventDeadLettered(
        source_stream="rag:documents",
        source_id="1-1",
        group="indexer",
        raw=encode_event(event),
        error="could not apply",
        deliveries=5,
        at=time.time(),
    )
    raw.xadd(Streams("rag:").dead_letter, {EVENT_FIELD: encode_event(letter)})


def _until_complete(http: httpx.Client, location: str) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        erasure = http.get(location).json()
        if erasure["phase"] == "complete":
            return erasure  # type: ignore[no-any-return]
        time.sleep(0.3)
    pytest.fail(f"erasure not complete in 180 s: {erasure}")


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    pytest.fail("condition not met in time")


def _keys_holding_marks(raw: redis.Redis) -> list[str]:
    """Every key whose value, DUMPed whole (a stream's nodes with whatever XDEL only flagged
    included) or read entry by entry, holds a canary mark."""
    holding = []
    for key in raw.scan_iter(count=1000):
        dumped = raw.dump(key) or b""
        kind = raw.type(key).decode()
        parts = [key, dumped]
        if kind == "stream":
            for _, fields in raw.xrange(key):
                parts += [b for kv in fields.items() for b in kv]
        elif kind == "hash":
            parts += [b for kv in raw.hgetall(key).items() for b in kv]
        elif kind == "string":
            parts.append(raw.get(key) or b"")
        if any(mark in part for part in parts for mark in MARKS):
            holding.append(key.decode(errors="replace"))
    return holding


def _files_holding_marks(data_dir: Path) -> list[str]:
    return [
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.is_file() and any(mark in path.read_bytes() for mark in MARKS)
    ]


def test_the_cli_erases_and_compacts_where_no_process_holds_the_index(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    srv = Server(data_dir, env={"REDIS_URL": "", "RAG_STREAM_PREFIX": "rag:"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for version in range(2):
                http.post(
                    "/api/v1/ingest?wait=true", json={"documents": [_canary(version)]}
                ).raise_for_status()
            http.post("/api/v1/ingest?wait=true", json={"documents": OTHERS}).raise_for_status()
    finally:
        srv.stop()
    env = {**os.environ, "REDIS_URL": "", "RAG_STREAM_PREFIX": "rag:"}

    def rag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    erased = rag("erase", "--tenant", "default", "canary")
    assert erased.returncode == 0, erased.stderr
    (record,) = [json.loads(line) for line in erased.stdout.splitlines()]
    assert record["phase"] == "complete" and record["events_removed"] == 2, record
    compacted = rag("compact")
    assert compacted.returncode == 0, compacted.stderr
    result = json.loads(compacted.stdout)
    assert result["phase"] == "done" and result["entries_after"] == len(OTHERS) + 1, result

    srv = Server(data_dir, env={"REDIS_URL": "", "RAG_STREAM_PREFIX": "rag:"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            assert http.get("/api/v1/documents/canary").json()["status"] == "deleted"
            hits = http.post("/api/v1/search", json={"query": "pelicans nesting on cliffs"})
            assert "canary" not in {h["doc_id"] for h in hits.json()["results"]}
    finally:
        srv.stop()
    assert _files_holding_marks(data_dir) == []
