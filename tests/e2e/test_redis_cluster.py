"""`rag-pipeline serve` on a Redis Cluster (tests/topology: three primaries), end to end.

The service runs with REDIS_CLUSTER=true, REDIS_URL naming one node, and a RAG_STREAM_PREFIX
holding a hash tag, so every key it writes shares one slot. Through the HTTP API: ingest
(read-your-writes), search, delete, a replay, and a SIGKILL in the middle of an ingest after
which every acknowledged document still ends indexed. A prefix without a hash tag stops
start-up naming RAG_STREAM_PREFIX.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import DOCS
from tests.e2e.server import Server
from tests.topology.redis_servers import ClusterSetup

pytest_plugins = ("tests.topology.fixtures",)

RAG_PIPELINE = str(Path(sys.executable).parent / "rag-pipeline")
QUERIES = [
    "how do plants turn sunlight into glucose",
    "lava and ash escaping from a magma chamber",
    "hormone that regulates blood glucose",
    "backup snapshots of the data directory",
]


@pytest.fixture()
def cluster_env(redis_cluster: ClusterSetup) -> Iterator[dict[str, str]]:
    """The environment of a service on the cluster, with a prefix of its own; its keys are
    deleted afterwards (the cluster is shared by the session)."""
    prefix = f"{{e2e-{uuid.uuid4().hex}}}:"
    yield {"REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "true", "RAG_STREAM_PREFIX": prefix}
    with redis_cluster.client() as client:
        for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
            client.delete(key)


def search(http: httpx.Client, query: str, **body: Any) -> list[dict[str, Any]]:
    response = http.post("/api/v1/search", json={"query": query, "rerank": False, **body})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def rankings(http: httpx.Client) -> dict[str, list[tuple[str, str]]]:
    return {
        query: [(r["doc_id"], r["chunk_id"]) for r in search(http, query, top_k=5)]
        for query in QUERIES
    }


def replay(http: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    started = http.post("/api/v1/reindex")
    assert started.status_code == 202, started.text
    job: dict[str, Any] = started.json()
    deadline = time.monotonic() + timeout
    while job["phase"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = http.get(f"/api/v1/reindex/{job['job_id']}").json()
    assert job["phase"] == "done", job
    return job


def test_ingest_search_delete_and_replay_on_a_cluster(
    data_dir: Path, cluster_env: dict[str, str], redis_cluster: ClusterSetup
) -> None:
    prefix = cluster_env["RAG_STREAM_PREFIX"]
    server = Server(data_dir, env=cluster_env).start()
    try:
        with server.client() as http:
            assert http.get("/ready").json()["checks"]["event_log"] is True
            response = http.post("/api/v1/ingest?wait=true", json={"documents": DOCS})
            assert response.status_code == 200, response.text
            accepted = response.json()["documents"]
            assert [d["status"] for d in accepted] == ["indexed"] * len(DOCS)
            for doc in accepted:
                status = http.get(f"/api/v1/documents/{doc['doc_id']}").json()
                assert (status["status"], status["event_id"]) == ("indexed", doc["event_id"])

            hits = search(http, "how do plants turn sunlight into glucose")
            assert hits[0]["doc_id"] == "photosynthesis"
            assert [r["doc_id"] for r in search(http, "pancreatic beta cells", mode="bm25")] == [
                "insulin"
            ]

            gone = http.delete("/api/v1/documents/tcp", params={"wait": "true"})
            assert gone.status_code == 200, gone.text
            assert gone.json()["status"] == "deleted"
            assert http.get("/api/v1/documents/tcp").json()["status"] == "deleted"
            tcp = search(http, "reliable ordered byte stream delivery retransmission")
            assert all(r["doc_id"] != "tcp" for r in tcp)
            assert http.delete("/api/v1/documents/tcp").status_code == 404

            before = rankings(http)
            job = replay(http)
            assert job["failed"] == 0, job
            assert rankings(http) == before
            events = http.get("/api/v1/stats").json()["events"]
            assert (events["indexer_pending"], events["indexer_lag"]) == (0, 0)
    finally:
        assert server.stop() == 0

    # What the service wrote is on the cluster, every key of the prefix in one slot.
    with redis_cluster.client() as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        assert f"{prefix}documents" in keys
        assert {client.keyslot(key) for key in keys} == {client.keyslot(f"{prefix}documents")}
        assert client.xlen(f"{prefix}documents") == len(DOCS) + 1  # the upserts and the delete


class Feeder:
    """Client threads ingesting new documents (two per request, no waiting) until the server
    stops answering; notes each acknowledged document's version."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.acknowledged: dict[str, str] = {}
        self.refused: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Feeder:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float = 30) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread hangs on the killed server"

    def _ids(self) -> list[str]:
        with self._lock:
            self._next += 2
            return [f"k{self._next - 2}", f"k{self._next - 1}"]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while True:
                ids = self._ids()
                docs = [
                    {"id": i, "text": f"Field note {i} on the migration of cranes and geese."}
                    for i in ids
                ]
                try:
                    reply = http.post("/api/v1/ingest", json={"documents": docs})
                except httpx.HTTPError:
                    return  # killed: whatever was not answered was not acknowledged
                with self._lock:
                    if reply.status_code in (200, 202):
                        for doc in reply.json()["documents"]:
                            self.acknowledged[doc["doc_id"]] = doc["version"]
                    else:
                        self.refused.append((reply.status_code, reply.text))


def outstanding(redis_cluster: ClusterSetup, prefix: str) -> int:
    """Entries of the document stream the projectors' group has not acknowledged yet
    (delivered and pending, or not delivered at all)."""
    with redis_cluster.client() as client:
        groups = {g["name"]: g for g in client.xinfo_groups(f"{prefix}documents")}
    group = groups["indexer"]
    return int(group["pending"]) + int(group["lag"])


def test_a_server_killed_mid_ingest_loses_no_acknowledged_document(
    data_dir: Path, cluster_env: dict[str, str], redis_cluster: ClusterSetup
) -> None:
    server = Server(data_dir, env=cluster_env).start()
    feeder = Feeder(server.url).start()
    try:
        deadline = time.monotonic() + 20
        while len(feeder.acknowledged) < 60:  # enough in flight that the projector lags
            assert time.monotonic() < deadline, f"only {len(feeder.acknowledged)} acknowledged"
            time.sleep(0.02)
        server.kill()  # SIGKILL while the clients are still sending
        feeder.join()
    finally:
        server.kill()
    assert feeder.refused == []
    acknowledged = dict(feeder.acknowledged)
    # The kill left work behind: entries delivered and never acknowledged, or never read.
    assert outstanding(redis_cluster, cluster_env["RAG_STREAM_PREFIX"]) > 0

    again = Server(data_dir, env=cluster_env, port=server.port).start()
    try:
        with again.client() as http:
            deadline = time.monotonic() + 30
            missing = dict(acknowledged)
            while missing:
                for doc_id, version in list(missing.items()):
                    status = http.get(f"/api/v1/documents/{doc_id}").json()
                    if (status.get("status"), status.get("version")) == ("indexed", version):
                        del missing[doc_id]
                assert time.monotonic() < deadline, f"never indexed: {sorted(missing)}"
                if missing:
                    time.sleep(0.2)
            stats = http.get("/api/v1/stats").json()
            # Documents appended whose answer the kill cut off may be indexed too.
            assert stats["index"]["documents"] >= len(acknowledged)
            assert stats["events"]["dead_letters"] == 0
            hits = search(http, "migration of cranes and geese", mode="bm25", top_k=10)
            assert len(hits) == 10 and all(r["doc_id"].startswith("k") for r in hits)
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize("prefix", ["rag:", "{}rag:"], ids=["no-tag", "empty-tag"])
def test_a_prefix_without_a_hash_tag_stops_start_up(
    prefix: str, redis_cluster: ClusterSetup, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [RAG_PIPELINE, "serve"],
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "RAG_HOST": "127.0.0.1",
            "RAG_PORT": "0",
            "RAG_DATA_DIR": str(tmp_path / "data"),
            "OTEL_SDK_DISABLED": "true",
            "REDIS_URL": redis_cluster.url,
            "REDIS_CLUSTER": "true",
            "RAG_STREAM_PREFIX": prefix,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rag-pipeline: bad setting: RAG_STREAM_PREFIX"), proc.stderr
    assert "hash tag" in lines[0] and repr(prefix) in lines[0]
    assert proc.returncode == 2, proc.stderr
