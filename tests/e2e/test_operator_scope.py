"""Who may act on the whole deployment, against real servers with a keys file: replay needs the
`operator` scope (a tenant's `admin` key gets 403, on the API and on the worker alike), an
`admin` key acts on its own tenant only, and only an operator sees the deployment's storage.

Embeddings come from a fake OpenAI-compatible server, so no model is loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.adapters.redis.streams import EVENT_FIELD
from app.api.keys import digest, new_key
from app.domain.events import EventDeadLettered, Streams, encode_event
from tests.e2e.server import Server
from tests.e2e.test_dead_letters import redis_of
from tests.e2e.test_openai_embedder_e2e import openai_env
from tests.openai_wire import FakeEmbeddings

ADMIN_A, ADMIN_B, OPERATOR, OPS_ADMIN = (new_key() for _ in range(4))
KEYS = [
    {"sha256": digest(ADMIN_A), "tenant": "tenant-a", "scopes": ["search", "ingest", "admin"]},
    {"sha256": digest(ADMIN_B), "tenant": "tenant-b", "scopes": ["search", "ingest", "admin"]},
    {"sha256": digest(OPERATOR), "tenant": "ops", "scopes": ["operator"]},
    {"sha256": digest(OPS_ADMIN), "tenant": "ops", "scopes": ["admin", "operator"]},
]
DOCS = [
    {"id": f"a{i}", "text": f"Tenant A's note {i} on tidal pools and their anemones."}
    for i in range(4)
]
# Every `operator` endpoint: deployment-wide, each on every tenant's data at once.
OPERATOR_ROUTES = [
    ("POST", "/api/v1/reindex"),
    ("GET", "/api/v1/reindex/0190d3a0-0000-7000-8000"),
    ("POST", "/api/v1/compact"),
    ("GET", "/api/v1/compact/0190d3a0-0000-7000-8000"),
]
# Every `admin` endpoint, each acting on the caller's tenant (and so open to its admin).
TENANT_ADMIN_ROUTES = [
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/quality"),
    ("GET", "/api/v1/dead-letters"),
    ("GET", "/api/v1/dead-letters/1-0"),
    ("POST", "/api/v1/dead-letters/1-0/requeue"),
    ("DELETE", "/api/v1/dead-letters/1-0"),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=64) as server:
        yield server


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"keys": KEYS}))
    return path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeEmbeddings, keys_file: Path
) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("operator") / "data",
        env={
            **openai_env(fake),
            "RAG_API_KEYS_FILE": str(keys_file),
            "RAG_RATE_LIMIT_PER_SECOND": "0",
        },
    ).start()
    try:
        with client(srv, ADMIN_A) as http:
            response = http.post("/api/v1/ingest?wait=true", json={"documents": DOCS})
            assert response.status_code == 200, response.text
        yield srv
    finally:
        srv.stop()


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def replay_with(http: httpx.Client, what: str = "reindex") -> dict:
    """Start a replay (or a compaction: `what="compact"`) and follow it to its end."""
    started = http.post(f"/api/v1/{what}")
    assert started.status_code == 202, started.text
    job: dict = started.json()
    deadline = time.monotonic() + 120
    while job["phase"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        polled = http.get(f"/api/v1/{what}/{job['job_id']}")
        assert polled.status_code == 200, polled.text
        job = polled.json()
    return job


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
@pytest.mark.parametrize("key", [ADMIN_A, ADMIN_B], ids=["admin-a", "admin-b"])
def test_a_tenants_admin_key_cannot_act_on_the_deployment(
    server: Server, key: str, method: str, path: str
) -> None:
    with client(server, key) as http:
        response = http.request(method, path)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert "`operator`" in response.json()["error"]["message"]


def test_an_operator_key_replays_every_tenants_documents(server: Server) -> None:
    with client(server, OPERATOR) as http:
        job = replay_with(http)
    assert job["phase"] == "done" and job["documents"] == len(DOCS) and job["failed"] == 0
    with client(server, ADMIN_A) as http:
        found = http.post("/api/v1/search", json={"query": "anemones in tidal pools"})
        assert found.status_code == 200
        assert {r["doc_id"] for r in found.json()["results"]} == {d["id"] for d in DOCS}


def test_an_operator_key_compacts_the_deployments_log(server: Server) -> None:
    with client(server, OPERATOR) as http:
        assert replay_with(http, "compact")["phase"] == "done"


@pytest.mark.parametrize(("method", "path"), TENANT_ADMIN_ROUTES)
def test_scopes_do_not_imply_each_other(server: Server, method: str, path: str) -> None:
    """An operator-only key is not a tenant admin: it needs `admin` for those routes too."""
    with client(server, OPERATOR) as http:
        response = http.request(method, path)
    assert response.status_code == 403, response.text
    with client(server, OPS_ADMIN) as http:
        assert http.request(method, path).status_code not in (401, 403)


def test_only_an_operator_sees_the_deployments_storage(server: Server) -> None:
    with client(server, ADMIN_A) as http:
        tenant = http.get("/api/v1/stats").json()
    assert tenant["storage"] is None
    assert tenant["index"]["documents"] == len(DOCS)
    with client(server, OPS_ADMIN) as http:
        stats = http.get("/api/v1/stats").json()
    assert stats["index"]["documents"] == 0  # its own tenant's: ops indexed nothing
    storage = stats["storage"]
    streams = Streams(server.env.get("RAG_STREAM_PREFIX", "rag:"))
    assert set(storage["streams"]) == set(streams.all)
    documents = storage["streams"][streams.documents]
    assert documents["entries"] >= len(DOCS)
    assert documents["memory_bytes"] > 0 and documents["memory_sampled_at"] > 0
    assert storage["redis_used_bytes"] > 0 and storage["redis_max_bytes"] >= 0
    assert storage["redis_used_ratio"] is None or 0 < storage["redis_used_ratio"] < 1
    assert storage["redis_maxmemory_policy"]


def test_quality_is_the_callers_tenants(server: Server) -> None:
    """A tenant's admin reads its own tenant's searches, not another's (nor the default's)."""
    with client(server, ADMIN_A) as http:
        for _ in range(3):
            assert http.post("/api/v1/search", json={"query": "anemones"}).status_code == 200
        deadline = time.monotonic() + 20
        while http.get("/api/v1/quality").json()["retrievals"] < 3:
            assert time.monotonic() < deadline, "tenant A's searches never reached its report"
            time.sleep(0.2)
        mine = http.get("/api/v1/quality").json()
    assert mine["window_start"] is not None and mine["window_start"] <= time.time()
    assert mine["hours_exceed_window"]  # the streams hold minutes, the report asked for 24 h
    with client(server, ADMIN_B) as http:
        theirs = http.get("/api/v1/quality").json()
    assert theirs["retrievals"] == 0


def test_an_admin_acts_on_its_own_tenants_dead_letters_only(server: Server) -> None:
    url, prefix = redis_of(server)
    streams = Streams(prefix)
    with client(server, ADMIN_A) as http:
        event_id = http.get("/api/v1/documents/a1").json()["event_id"]
    with redis.Redis.from_url(url) as raw:
        ((_, fields),) = raw.xrange(streams.documents, event_id, event_id)
        letter = EventDeadLettered(
            source_stream=streams.documents,
            source_id=event_id,
            group="indexer",
            raw=fields[EVENT_FIELD],
            error="set aside by the test",
            deliveries=5,
            at=time.time(),
        )
        letter_id = raw.xadd(streams.dead_letter, {EVENT_FIELD: encode_event(letter)}).decode()
    with client(server, ADMIN_B) as other:
        assert other.get("/api/v1/dead-letters").json()["dead_letters"] == []
        for method, path in (
            ("GET", f"/api/v1/dead-letters/{letter_id}"),
            ("POST", f"/api/v1/dead-letters/{letter_id}/requeue"),
            ("DELETE", f"/api/v1/dead-letters/{letter_id}"),
        ):
            assert other.request(method, path).status_code == 404
    with client(server, ADMIN_A) as owner:
        assert [x["id"] for x in owner.get("/api/v1/dead-letters").json()["dead_letters"]] == [
            letter_id
        ]
        assert owner.delete(f"/api/v1/dead-letters/{letter_id}").status_code == 200


def test_the_worker_replays_and_compacts_for_an_operator_only(
    tmp_path: Path, fake: FakeEmbeddings, keys_file: Path
) -> None:
    worker = Server(
        tmp_path / "data",
        command="worker",
        env={**openai_env(fake), "RAG_API_KEYS_FILE": str(keys_file)},
    ).start()
    try:
        with client(worker, ADMIN_A) as http:
            assert http.post("/api/v1/reindex").status_code == 403
            assert http.post("/api/v1/compact").status_code == 403
        with client(worker, OPERATOR) as http:
            assert replay_with(http)["phase"] == "done"
            assert replay_with(http, "compact")["phase"] == "done"
        assert httpx.post(f"{worker.url}/api/v1/reindex").status_code == 401
    finally:
        assert worker.stop() == 0


def test_metrics_show_stream_sizes_and_redis_memory(server: Server) -> None:
    """/metrics is open to the scraper: it carries the deployment-wide figures as gauges."""
    text = httpx.get(f"{server.url}/metrics").text
    samples = {
        (s.name, s.labels.get("stream", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    documents = Streams(server.env.get("RAG_STREAM_PREFIX", "rag:")).documents
    assert samples[("rag_stream_entries", documents)] >= len(DOCS)
    assert samples[("rag_stream_memory_bytes", documents)] > 0
    assert samples[("rag_redis_memory_used_bytes", "")] > 0
    assert ("rag_redis_maxmemory_bytes", "") in samples


def test_the_cli_issues_operator_keys() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "app", "keys", "new", "--tenant", "ops", "--scope", "operator"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    entry = json.loads(made.stderr.split("list: ", 1)[1])
    assert entry == {"sha256": digest(made.stdout.strip()), "tenant": "ops", "scopes": ["operator"]}
