"""Replay through real servers: the rebuilt generation equals the live one, point for point;
searches and ingest go on during it; the swap survives a restart; one replay at a time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.adapters.qdrant.edge_catalog import EdgeCatalog
from tests.e2e.server import Server, free_port

Points = dict[str, tuple[dict[str, Any], list[float]]]


def note(i: int, subject: str = "comets", extra: str = "") -> dict[str, Any]:
    return {
        "id": f"n{i}",
        "title": f"Note {i}",
        "text": f"Observation {i} about {subject} and how they behave over the years. {extra}",
        "metadata": {"n": i},
    }


def ingest(http: httpx.Client, docs: list[dict[str, Any]]) -> None:
    response = http.post("/api/v1/ingest?wait=true", json={"documents": docs})
    assert response.status_code == 200, response.text


def delete(http: httpx.Client, doc_id: str) -> None:
    response = http.delete(f"/api/v1/documents/{doc_id}?wait=true")
    assert response.status_code == 200, response.text


def snapshot(data_dir: Path, model_id: str, dim: int) -> tuple[str, Points]:
    """The active generation and its points, read from disk (no server may run)."""
    catalog = EdgeCatalog(data_dir, model_id=model_id, dim=dim)
    try:
        points = asyncio.run(catalog.current().all_points())
        return catalog.active, {pid: (payload, vector) for pid, payload, vector in points}
    finally:
        catalog.close()


def replay(http: httpx.Client, timeout: float = 120) -> dict[str, Any]:
    started = http.post("/api/v1/reindex")
    assert started.status_code == 202, started.text
    job: dict[str, Any] = started.json()
    assert started.headers["location"] == f"/api/v1/reindex/{job['job_id']}"
    deadline = time.monotonic() + timeout
    while job["phase"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = http.get(f"/api/v1/reindex/{job['job_id']}").json()
    assert job["phase"] == "done", job
    return job


def statuses(http: httpx.Client, ids: list[str]) -> dict[str, Any]:
    out = {}
    for doc_id in ids:
        body = http.get(f"/api/v1/documents/{doc_id}").json()
        out[doc_id] = {k: body.get(k) for k in ("status", "version", "chunks", "event_id")}
    return out


def test_replay_rebuilds_the_same_points_and_the_swap_survives_a_restart(data_dir: Path) -> None:
    ids = [f"n{i}" for i in range(40)]
    server = Server(data_dir).start()
    try:
        with server.client() as http:
            ingest(http, [note(i) for i in range(40)])
            # New versions, some much longer (more chunks, then fewer again).
            ingest(http, [note(i, "glaciers") for i in range(0, 10)])
            ingest(http, [note(i, "glaciers", "Long. " * 400) for i in range(10, 15)])
            ingest(http, [note(i, "tides") for i in range(10, 13)])
            # Back to an earlier version: the newest event wins, not the newest content.
            ingest(http, [note(1)])
            for i in range(20, 26):
                delete(http, f"n{i}")
            ingest(http, [note(21, "volcanoes")])  # deleted, then back
            stats = http.get("/api/v1/stats").json()["index"]
            before = statuses(http, ids)
    finally:
        assert server.stop() == 0
    model_id, dim = stats["model_id"], stats["dim"]
    old_generation, live = snapshot(data_dir, model_id, dim)
    assert len(live) == stats["chunks"] > 40

    server = Server(data_dir).start()
    try:
        with server.client() as http:
            job = replay(http)
            assert job["documents"] == 40 and job["failed"] == 0
            assert job["chunks"] == len(live)
            assert job["generation"] != old_generation
            assert statuses(http, ids) == before
    finally:
        assert server.stop() == 0
    generation, rebuilt = snapshot(data_dir, model_id, dim)
    assert generation == job["generation"]
    assert sorted(p.name for p in (data_dir / "index").iterdir() if p.is_dir()) == [
        f"{model_id}.gen-{generation}"
    ], "the old generation is dropped"

    assert rebuilt.keys() == live.keys()
    for pid, (payload, vector) in live.items():
        assert rebuilt[pid][0] == payload, pid
        np.testing.assert_array_equal(np.float32(rebuilt[pid][1]), np.float32(vector))
    assert {p["doc_id"] for p, _ in rebuilt.values()} == {
        f"n{i}" for i in range(40) if i not in (20, 22, 23, 24, 25)
    }

    # A restart serves the new generation (the active one is recorded on disk).
    server = Server(data_dir).start()
    try:
        with server.client() as http:
            assert http.get("/api/v1/stats").json()["index"]["chunks"] == len(live)
            hits = http.post("/api/v1/search", json={"query": "volcanoes", "top_k": 1}).json()
            assert hits["results"][0]["doc_id"] == "n21"
            assert statuses(http, ids) == before
    finally:
        server.stop()


def test_searches_and_ingest_go_on_during_a_replay(data_dir: Path) -> None:
    # Small replay batches make the replay last long enough to work beside it.
    server = Server(data_dir, env={"RAG_REPLAY_BATCH": "2"}).start()
    try:
        with server.client() as http:
            ingest(http, [note(i, "comets" if i % 2 else "glaciers") for i in range(120)])
            started = http.post("/api/v1/reindex")
            assert started.status_code == 202, started.text
            job_id = started.json()["job_id"]
            second = http.post("/api/v1/reindex")
            assert second.status_code == 409, second.text
            assert second.json()["error"]["code"] == "replay_running"
            assert http.get("/api/v1/reindex/nope").status_code == 404
            spec = http.get("/openapi.json").json()["paths"]
            # Admin work: the key's 401/403/429 besides the replay's own answers.
            assert set(spec["/api/v1/reindex"]["post"]["responses"]) == {
                "202",
                "401",
                "403",
                "409",
                "429",
                "503",
            }
            assert "parameters" not in spec["/api/v1/reindex"]["post"]  # no ?wait here
            status = spec["/api/v1/reindex/{job_id}"]["get"]
            assert status["parameters"][0]["name"] == "job_id"

            searches = ingested_during = 0
            added: list[str] = []
            phase = "reading"
            while phase not in ("done", "failed"):
                hits = http.post("/api/v1/search", json={"query": "comets", "top_k": 3})
                assert hits.status_code == 200, hits.text
                assert len(hits.json()["results"]) == 3
                searches += 1
                doc = note(1000 + len(added), "auroras")
                accepted = http.post("/api/v1/ingest", json={"documents": [doc]})
                assert accepted.status_code == 202, accepted.text
                added.append(doc["id"])
                phase = http.get(f"/api/v1/reindex/{job_id}").json()["phase"]
                ingested_during += phase not in ("done", "failed")
            assert phase == "done"
            assert searches >= 3 and ingested_during >= 1, (searches, ingested_during)

            deadline = time.monotonic() + 60
            pending = set(added)
            while pending and time.monotonic() < deadline:
                pending = {
                    d
                    for d in pending
                    if http.get(f"/api/v1/documents/{d}").json()["status"] != "indexed"
                }
                time.sleep(0.1)
            assert not pending
            assert http.get("/api/v1/stats").json()["index"]["documents"] == 120 + len(added)
            model_id = http.get("/api/v1/stats").json()["index"]["model_id"]
            dim = http.get("/api/v1/stats").json()["index"]["dim"]
    finally:
        assert server.stop() == 0
    _, points = snapshot(data_dir, model_id, dim)
    assert {p["doc_id"] for p, _ in points.values()} == {f"n{i}" for i in range(120)} | set(added)


def test_cli_replays_here_or_asks_the_holder(data_dir: Path) -> None:
    server = Server(data_dir).start()
    env = server.child_env()

    def replay(*url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "replay", "--data-dir", str(data_dir), *url],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    try:
        with server.client() as http:
            ingest(http, [note(i) for i in range(5)])
        remote = replay("--url", server.url)
        assert remote.returncode == 0, remote.stderr
        assert "generation 1 active: 5 documents, 5 chunks, 0 failed" in remote.stdout
        nobody = replay("--url", f"http://127.0.0.1:{free_port()}")
        assert nobody.returncode == 1
        assert "held by `rag-pipeline serve`" in nobody.stderr and "--url" in nobody.stderr
    finally:
        assert server.stop() == 0
    here = replay()
    assert here.returncode == 0, here.stderr
    assert "generation 2 active: 5 documents, 5 chunks, 0 failed" in here.stdout
    # A worker holds the index too, and replays when asked.
    worker = Server(data_dir, command="worker").start()
    try:
        via_worker = replay("--url", worker.url)
        assert via_worker.returncode == 0, via_worker.stderr
        assert "generation 3 active: 5 documents, 5 chunks" in via_worker.stdout
    finally:
        assert worker.stop() == 0
    server = Server(data_dir).start()
    try:
        with server.client() as http:
            assert http.get("/api/v1/stats").json()["index"]["chunks"] == 5
    finally:
        server.stop()
