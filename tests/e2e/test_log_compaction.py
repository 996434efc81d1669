"""Compaction on a running service: automatic and requested compactions while clients edit and
delete documents; every acknowledged change ends applied, and a replay of the compacted
stream answers as before."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import WORDS
from tests.e2e.server import Server

CLIENTS = 3
DOCS_PER_CLIENT = 12
ROUNDS = 8


def _text(doc_id: str, n: int, rng: random.Random) -> str:
    return f"{doc_id} edit {n}: " + " ".join(rng.choice(WORDS) for _ in range(12))


def test_compaction_under_edits_loses_no_acknowledged_change(data_dir: Path) -> None:
    srv = Server(
        data_dir,
        env={
            "RAG_COMPACT_MIN_ENTRIES": "60",
            "RAG_COMPACT_GROWTH": "1.2",
            "RAG_COMPACT_CHECK_SECONDS": "1",
            "RAG_TOMBSTONE_RETENTION_HOURS": "0",
        },
    ).start()
    # doc id -> the text last acknowledged for it, or None once its delete was acknowledged
    expected: dict[str, str | None] = {}
    errors: list[str] = []

    def client(c: int) -> None:
        rng = random.Random(c)
        docs = [f"c{c}-d{i}" for i in range(DOCS_PER_CLIENT)]
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for n in range(ROUNDS):
                for doc_id in docs:
                    if expected.get(doc_id) is not None and rng.random() < 0.15:
                        r = http.delete(f"/api/v1/documents/{doc_id}")
                        if r.status_code in (200, 202):
                            expected[doc_id] = None
                        else:
                            errors.append(f"delete {doc_id}: {r.status_code} {r.text}")
                        continue
                    text = _text(doc_id, n, rng)
                    r = http.post(
                        "/api/v1/ingest", json={"documents": [{"id": doc_id, "text": text}]}
                    )
                    if r.status_code in (200, 202):
                        expected[doc_id] = text
                    else:
                        errors.append(f"ingest {doc_id}: {r.status_code} {r.text}")

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        requested = 0
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            while any(t.is_alive() for t in threads):
                r = http.post("/api/v1/compact")
                assert r.status_code in (202, 409), r.text  # 409: an automatic one runs
                requested += r.status_code == 202
                time.sleep(0.3)
            for t in threads:
                t.join()
            assert errors == []
            assert requested >= 1

            _settle(http, expected)
            # Deletes are settled now and retention is 0: a last compaction leaves one entry
            # per live document.
            job = _finished(http, "/api/v1/compact")
            live = sum(text is not None for text in expected.values())
            assert job["entries_after"] == live, job
            _check(http, expected)

            # A replay reads the compacted stream and rebuilds the same documents.
            replay = _finished(http, "/api/v1/reindex")
            assert replay["failed"] == 0 and replay["documents"] == live
            _check(http, expected)
        assert "compacted" in srv.log.read_text()
    finally:
        srv.stop()


def _finished(http: httpx.Client, path: str) -> dict[str, object]:
    for _ in range(100):
        started = http.post(path)
        if started.status_code == 202:
            break
        assert started.status_code == 409, started.text
        time.sleep(0.2)
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = http.get(f"{path}/{job_id}").json()
        if job["phase"] in ("done", "failed"):
            assert job["phase"] == "done", job
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{path} {job_id} did not finish")


def _settle(http: httpx.Client, expected: dict[str, str | None]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        statuses = {d: http.get(f"/api/v1/documents/{d}").json().get("status") for d in expected}
        # (a 404's body has no status: that document is settled too)
        if "pending" not in statuses.values():
            return
        time.sleep(0.3)
    raise AssertionError("documents still pending after 120 s")


def _check(http: httpx.Client, expected: dict[str, str | None]) -> None:
    for doc_id, text in expected.items():
        response = http.get(f"/api/v1/documents/{doc_id}")
        if text is None:
            # 404 once compaction dropped its settled delete: the document is unknown again.
            assert response.status_code == 404 or response.json()["status"] == "deleted", (
                doc_id,
                response.text,
            )
            continue
        status = response.json()
        assert status["status"] == "indexed", (doc_id, status)
        hits = http.post("/api/v1/search", json={"query": text, "top_k": 3}).json()["results"]
        assert any(h["doc_id"] == doc_id and h["text"] in text for h in hits), (doc_id, hits)
