"""Backup and restore through the real service: documents with several versions and deletions
ingested through `serve`, `rag-pipeline export` while it runs, `rag-pipeline import` into a
fresh prefix and data directory, a new `serve` on it: the same document statuses, the same
index (point for point) and the same search results, before and after a replay there."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.domain.records import id_key
from tests.e2e.conftest import WORDS
from tests.e2e.server import PREFIXES, REDIS_URL, Server, prefix_for

Points = dict[str, tuple[dict[str, Any], list[float]]]

QUERIES = [
    ("comets and how they behave", "hybrid"),
    ("glaciers over the years", "hybrid"),
    ("observation about a falcon", "bm25"),
    ("ice carving valleys slowly", "dense"),
    ("volcanic eruptions", "hybrid"),
]


def note(i: int, subject: str = "comets", extra: str = "") -> dict[str, Any]:
    # Words of its own and a length of its own, so that no two documents tie in BM25.
    words = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 2 + i % 5))
    return {
        "id": f"n{i}",
        "title": f"Note {i}",
        "text": f"Observation {i} about {subject} and {words}, over the years. {extra}",
        "metadata": {"n": i, "subject": subject},
    }


def rag(
    data_dir: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The CLI against the Redis and prefix `Server(data_dir)` uses."""
    env = {"RAG_STREAM_PREFIX": prefix_for(data_dir)} if REDIS_URL else {}
    PREFIXES.update(env.values())
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "--data-dir", str(data_dir)],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def statuses(http: httpx.Client, ids: list[str]) -> dict[str, Any]:
    return {doc_id: http.get(f"/api/v1/documents/{doc_id}").json() for doc_id in ids}


def searches(http: httpx.Client) -> list[list[tuple[str, str, float, dict[str, float]]]]:
    """Each query's results: ids, fused score and stage scores. top_k 100 takes every chunk
    into the candidate pool: with a smaller pool, which of several chunks tied at its edge
    get in depends on the order points sit in the index (as after any replay), and the fused
    scores, normalised over the pool, with it."""
    out = []
    for query, mode in QUERIES:
        response = http.post("/api/v1/search", json={"query": query, "mode": mode, "top_k": 100})
        assert response.status_code == 200, response.text
        out.append(
            [
                (
                    r["doc_id"],
                    r["chunk_id"],
                    round(r["score"], 5),
                    {stage: round(value, 5) for stage, value in r["scores"].items()},
                )
                for r in response.json()["results"]
            ]
        )
    return out


def settled(http: httpx.Client, ids: list[str], want: dict[str, Any], timeout: float = 120) -> None:
    """Wait until the projector has applied the restored log: the statuses read as before."""
    deadline = time.monotonic() + timeout
    while (now := statuses(http, ids)) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now == want


def snapshot(data_dir: Path, model_id: str, dim: int) -> Points:
    """The active generation's points, read from disk (no server may run)."""
    catalog = EdgeCatalog(data_dir, model_id=model_id, dim=dim)
    try:
        points = asyncio.run(catalog.current().all_points())
        return {pid: (payload, vector) for pid, payload, vector in points}
    finally:
        catalog.close()


def same_points(got: Points, want: Points) -> None:
    assert got.keys() == want.keys()
    for pid, (payload, vector) in want.items():
        assert got[pid][0] == payload, pid
        np.testing.assert_array_equal(np.float32(got[pid][1]), np.float32(vector))


def test_a_restored_log_serves_the_same_statuses_index_and_results(tmp_path: Path) -> None:
    ids = [f"n{i}" for i in range(30)]
    source_dir, restored_dir = tmp_path / "source" / "data", tmp_path / "restored" / "data"
    source_dir.parent.mkdir()
    restored_dir.parent.mkdir()
    source = Server(source_dir).start()
    try:
        with source.client() as http:
            for batch in (
                [note(i) for i in range(30)],
                [note(i, "glaciers") for i in range(0, 12)],  # second versions
                [note(i, "glaciers", "Long. " * 300) for i in range(12, 16)],  # more chunks
                [note(i, "ice ages") for i in range(0, 4)],  # third versions
            ):
                assert http.post("/api/v1/ingest?wait=true", json={"documents": batch}).is_success
            for doc_id in ("n5", "n13", "n20", "n21"):
                assert http.delete(f"/api/v1/documents/{doc_id}?wait=true").status_code == 200
            # Deleted, then back.
            back = {"documents": [note(21, "volcanic eruptions")]}
            assert http.post("/api/v1/ingest?wait=true", json=back).is_success
            before = statuses(http, ids)
            results = searches(http)
            assert all(len(hits) > 10 for hits in results)
            index = http.get("/api/v1/stats").json()["index"]
            assert sum(s["status"] == "deleted" for s in before.values()) == 3
            assert sum(s["status"] == "indexed" for s in before.values()) == 27

            # Exported while the service runs; once to a file, once through a pipe.
            exported = rag(source_dir, "export", str(tmp_path / "backup.ragbak"), "--feedback")
            assert exported.returncode == 0, exported.stderr.decode()
            assert b"exported 30 documents (3 of them deleted)" in exported.stdout
            piped = rag(source_dir, "export", "-")
            assert piped.returncode == 0, piped.stderr.decode()
    finally:
        assert source.stop() == 0
    live = snapshot(source_dir, index["model_id"], index["dim"])
    assert len(live) == index["chunks"] > 27

    loaded = rag(restored_dir, "import", str(tmp_path / "backup.ragbak"))
    assert loaded.returncode == 0, loaded.stderr.decode()
    assert b"imported 30 entries" in loaded.stdout
    # Once only: a second import is refused and changes nothing.
    again = rag(restored_dir, "import", "-", stdin=piped.stdout)
    assert again.returncode == 1 and b"already holds 30 entries" in again.stderr

    restored = Server(restored_dir).start()
    try:
        with restored.client() as http:
            settled(http, ids, before)
            assert searches(http) == results
    finally:
        assert restored.stop() == 0
    same_points(snapshot(restored_dir, index["model_id"], index["dim"]), live)

    restored = Server(restored_dir).start()
    try:
        with restored.client() as http:
            job = http.post("/api/v1/reindex").json()
            deadline = time.monotonic() + 120
            while job["phase"] not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                job = http.get(f"/api/v1/reindex/{job['job_id']}").json()
            assert job["phase"] == "done", job
            assert statuses(http, ids) == before
            assert searches(http) == results
            # What is written after the restore sorts after everything restored.
            after = http.post("/api/v1/ingest", json={"documents": [note(40)]}).json()
            newest = max(id_key(s["event_id"]) for s in before.values())
            assert id_key(after["documents"][0]["event_id"]) > newest
    finally:
        assert restored.stop() == 0
