"""The event-sourced write path through real servers: 202 then read-your-writes, status
transitions, deletes, trace context, the index's single writer, and Redis going away."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.adapters.redis.embedded import DISCOVERY_FILE, EmbeddedRedis
from app.adapters.redis.streams import EVENT_FIELD
from app.domain.events import DocumentUpserted, decode_event
from tests.e2e.server import REDIS_URL, Server, prefix_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def redis_of(server: Server) -> tuple[redis.Redis, str]:
    """A client of the server's Redis and its key prefix."""
    if REDIS_URL:
        return redis.Redis.from_url(REDIS_URL), prefix_for(server.data_dir)
    found = json.loads((server.data_dir / "redis" / DISCOVERY_FILE).read_text())
    return redis.Redis.from_url(found["url"]), "rag:"


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_ingest_is_accepted_at_once_then_indexed(http: httpx.Client) -> None:
    docs = [
        {"id": "later-1", "text": "Auroras appear when solar wind meets the magnetosphere."},
        {"id": "later-2", "text": "Tides follow the moon's pull on the oceans."},
    ]
    response = http.post("/api/v1/ingest", json={"documents": docs})
    assert response.status_code == 202, response.text
    accepted = response.json()["documents"]
    assert [d["status"] for d in accepted] == ["pending", "pending"]
    assert all(d["event_id"] and d["version"] for d in accepted)
    assert all("chunks" not in d for d in accepted)

    def indexed() -> bool:
        return all(
            http.get(f"/api/v1/documents/{d['doc_id']}").json()["status"] == "indexed"
            for d in accepted
        )

    wait_for("the projector", indexed)
    status = http.get("/api/v1/documents/later-1").json()
    assert status.pop("accepted_at") > 0
    assert status == {
        "doc_id": "later-1",
        "status": "indexed",
        "version": accepted[0]["version"],
        "chunks": 1,
        "event_id": accepted[0]["event_id"],
        "title": "",
        "metadata": {},
    }


def test_wait_true_reads_your_own_writes(http: httpx.Client) -> None:
    doc = {"id": "fresh", "text": "Narwhals have a long spiral tusk.", "title": "Narwhal"}
    response = http.post("/api/v1/ingest", params={"wait": "true"}, json={"documents": [doc]})
    assert response.status_code == 200, response.text
    (accepted,) = response.json()["documents"]
    assert (accepted["status"], accepted["chunks"]) == ("indexed", 1)
    # Searchable the moment the answer arrives.
    hits = http.post("/api/v1/search", json={"query": "narwhal tusk", "mode": "bm25"}).json()
    assert hits["results"][0]["doc_id"] == "fresh"

    again = http.post("/api/v1/ingest", params={"wait": "true"}, json={"documents": [doc]})
    assert again.status_code == 200
    assert again.json()["documents"][0]["status"] == "unchanged"
    assert again.json()["documents"][0]["event_id"] == accepted["event_id"]

    gone = http.delete("/api/v1/documents/fresh", params={"wait": "true"})
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "deleted"
    hits = http.post("/api/v1/search", json={"query": "narwhal tusk", "mode": "bm25"}).json()
    assert all(r["doc_id"] != "fresh" for r in hits["results"])
    assert http.delete("/api/v1/documents/fresh").status_code == 404
    assert http.delete("/api/v1/documents/never-there").status_code == 404


def test_wait_must_be_a_boolean(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/ingest", params={"wait": "soon"}, json={"documents": [{"id": "w", "text": "x"}]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "wait"


def test_events_carry_the_requests_trace_context(server: Server, http: httpx.Client) -> None:
    traced = http.post(
        "/api/v1/ingest",
        headers={"traceparent": TRACEPARENT},
        json={"documents": [{"id": "traced", "text": "Traced through the log."}]},
    ).json()["documents"][0]
    untraced = http.post(
        "/api/v1/ingest",
        headers={"traceparent": "not a trace context"},
        json={"documents": [{"id": "untraced", "text": "No usable trace context."}]},
    ).json()["documents"][0]
    client, prefix = redis_of(server)
    try:
        found = {}
        for accepted in (traced, untraced):
            ((_, fields),) = client.xrange(
                f"{prefix}documents", accepted["event_id"], accepted["event_id"]
            )
            event = decode_event(fields[EVENT_FIELD])
            assert isinstance(event, DocumentUpserted)
            found[event.doc_id] = event.traceparent
    finally:
        client.close()
    # The event carries the ingest request's own span (a child of the caller's, in the same
    # trace), for the projector to link to; a request without usable context starts a trace.
    version, trace_id, span_id, flags = str(found["traced"]).split("-")
    assert (version, trace_id, flags) == ("00", TRACEPARENT.split("-")[1], "01")
    assert span_id != TRACEPARENT.split("-")[2]
    untraced_id = str(found["untraced"]).split("-")[1]
    assert len(untraced_id) == 32 and untraced_id not in (trace_id, "0" * 32)


def test_status_moves_from_pending_to_applied_and_the_index_has_one_writer(
    data_dir: Path,
) -> None:
    paused = Server(
        data_dir, env={"RAG_PROJECTOR_IN_PROCESS": "false", "RAG_INGEST_WAIT_SECONDS": "0.5"}
    ).start()
    try:
        with paused.client() as http:
            docs = [
                {"id": "p1", "text": "Basalt forms from cooling lava."},
                {"id": "p2", "text": "Granite cools slowly underground."},
            ]
            response = http.post("/api/v1/ingest", json={"documents": docs})
            assert response.status_code == 202
            versions = {d["doc_id"]: d["version"] for d in response.json()["documents"]}
            pending = http.get("/api/v1/documents/p1").json()
            assert (pending["status"], pending["version"]) == ("pending", versions["p1"])

            started = time.monotonic()
            waited = http.post(
                "/api/v1/ingest?wait=true",
                json={"documents": [{"id": "p3", "text": "Marble is metamorphosed limestone."}]},
            )
            assert waited.status_code == 202  # nobody projects: the wait runs out
            assert waited.json()["documents"][0]["status"] == "pending"
            assert time.monotonic() - started >= 0.5

            deletion = http.delete("/api/v1/documents/p2")  # known: its upsert is pending
            assert deletion.status_code == 202 and deletion.json()["status"] == "pending"
            status = http.get("/api/v1/documents/p2").json()
            assert (status["status"], status.get("version")) == ("pending", None)
            assert http.delete("/api/v1/documents/p2").status_code == 404  # already going
            assert http.get("/api/v1/stats").json()["events"]["indexer_lag"] == 4
            assert http.get("/ready").json()["checks"] == {
                "index": True,
                "event_log": True,
                "accepting": True,
            }

        # The serving process holds the embedded index: a worker is refused, by name.
        refused = subprocess.run(
            [sys.executable, "-m", "app", "worker", "--data-dir", str(data_dir), "--port", "0"],
            env=paused.child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 1, refused.stderr
        assert f"held by `rag-pipeline serve` (pid {paused.pid})" in refused.stderr
    finally:
        assert paused.stop() == 0

    worker = Server(data_dir, command="worker").start()
    try:
        assert httpx.get(f"{worker.url}/health").json() == {"status": "ok"}
        client, prefix = redis_of(worker)

        def drained() -> bool:
            groups = {g["name"]: g for g in client.xinfo_groups(f"{prefix}documents")}
            group = groups.get(b"indexer")
            return group is not None and group["pending"] == 0 and group["lag"] == 0

        wait_for("the worker", drained)
        client.close()
        # ... and while the worker holds it, serve is refused the same way.
        with pytest.raises(RuntimeError, match=r"held by `rag-pipeline worker`"):
            Server(data_dir).start()
    finally:
        assert worker.stop() == 0

    server = Server(data_dir).start()
    try:
        with server.client() as http:
            statuses = {
                doc_id: http.get(f"/api/v1/documents/{doc_id}").json()
                for doc_id in ("p1", "p2", "p3")
            }
        assert {k: v["status"] for k, v in statuses.items()} == {
            "p1": "indexed",
            "p2": "deleted",
            "p3": "indexed",
        }
        assert statuses["p1"]["version"] == versions["p1"]
    finally:
        server.stop()


def test_ingest_while_redis_is_down_is_503_and_acknowledges_nothing(
    data_dir: Path, tmp_path: Path
) -> None:
    valkey = EmbeddedRedis(tmp_path / "valkey")
    url = valkey.start()
    server = Server(data_dir, env={"REDIS_URL": url, "RAG_STREAM_PREFIX": "down:"}).start()
    try:
        with server.client() as http:
            ok = http.post(
                "/api/v1/ingest?wait=true", json={"documents": [{"id": "a", "text": "Before."}]}
            )
            assert ok.status_code == 200, ok.text
            valkey.stop()
            down = http.post("/api/v1/ingest", json={"documents": [{"id": "b", "text": "During."}]})
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"] == "1"
            assert down.json()["error"]["code"] == "unavailable"
            assert http.get("/api/v1/documents/a").status_code == 503
            assert http.delete("/api/v1/documents/a").status_code == 503
            assert http.get("/ready").status_code == 503

            valkey.start()  # same URL, data back from the append-only file
            client = redis.Redis.from_url(url)
            try:
                entries = client.xrange("down:documents")
            finally:
                client.close()
            assert [decode_event(f[EVENT_FIELD]).doc_id for _, f in entries] == ["a"]  # type: ignore[union-attr]
            after = http.post(
                "/api/v1/ingest?wait=true", json={"documents": [{"id": "b", "text": "After."}]}
            )
            assert after.status_code == 200, after.text
            assert after.json()["documents"][0]["status"] == "indexed"
    finally:
        server.stop()
        valkey.stop()
