"""Dead letters end to end: a real `serve` whose embeddings API refuses a document's texts
(a 400 from the OpenAI-wire server, so the projector dead-letters it), then the operator's
way back, over HTTP (admin scope, per tenant) and through `rag-pipeline dead-letters`.

With REDIS_URL set the server and the CLI share the machine's Redis under the server's key
prefix; without it, the data directory's embedded Valkey, which the CLI finds by --data-dir.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import EVENT_FIELD
from app.api.keys import digest, new_key
from app.domain.events import EventDeadLettered, Streams, encode_event
from tests.e2e.server import REDIS_URL, Server
from tests.e2e.test_openai_embedder_e2e import openai_env
from tests.openai_wire import FakeEmbeddings, Reply

A_KEY, B_KEY, INGEST_ONLY = (new_key() for _ in range(3))
KEYS = [
    {"sha256": digest(A_KEY), "tenant": "tenant-a", "scopes": ["search", "ingest", "admin"]},
    {"sha256": digest(B_KEY), "tenant": "tenant-b", "scopes": ["search", "ingest", "admin"]},
    {"sha256": digest(INGEST_ONLY), "tenant": "tenant-a", "scopes": ["search", "ingest"]},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=64) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeEmbeddings) -> Iterator[Server]:
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps({"keys": KEYS}))
    srv = Server(
        tmp_path_factory.mktemp("dead-letters") / "data",
        env={
            **openai_env(fake),
            "RAG_API_KEYS_FILE": str(keys),
            "RAG_PROJECTOR_MAX_DELIVERIES": "2",
            "RAG_INGEST_WAIT_SECONDS": "30",
        },
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def tenant_a(server: Server) -> Iterator[httpx.Client]:
    with client(server, A_KEY) as http:
        yield http


@pytest.fixture(scope="module")
def tenant_b(server: Server) -> Iterator[httpx.Client]:
    with client(server, B_KEY) as http:
        yield http


def redis_of(server: Server) -> tuple[str, str]:
    """The URL and key prefix of the server's event log."""
    if REDIS_URL:
        return REDIS_URL, server.env["RAG_STREAM_PREFIX"]
    # The data directory's running Valkey: found, not started (and so never stopped here).
    return EmbeddedRedis(server.data_dir).start(), "rag:"


def wait_status(http: httpx.Client, doc_id: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = http.get(f"/api/v1/documents/{doc_id}")
        if got.status_code == 200 and got.json()["status"] == status:
            return got.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{doc_id} never {status}: {got.text}"
        time.sleep(0.2)


def dead_letter_doc(fake: FakeEmbeddings, http: httpx.Client, doc_id: str, text: str) -> dict:
    """Ingest a document while the embeddings API refuses every text: it is dead-lettered."""
    fake.outage = Reply(status=400)
    try:
        response = http.post(
            "/api/v1/ingest?wait=true", json={"documents": [{"id": doc_id, "text": text}]}
        )
        assert response.status_code in (200, 202), response.text
        wait_status(http, doc_id, "failed")
    finally:
        fake.outage = None
    (accepted,) = response.json()["documents"]
    return accepted  # type: ignore[no-any-return]


def letters_of(http: httpx.Client, **params: Any) -> list[dict]:
    response = http.get("/api/v1/dead-letters", params=params)
    assert response.status_code == 200, response.text
    return response.json()["dead_letters"]  # type: ignore[no-any-return]


def gauge(server: Server) -> float:
    scrape = httpx.get(f"{server.url}/metrics").text
    match = re.search(r"^rag_dead_letters (\S+)$", scrape, re.MULTILINE)
    assert match, "rag_dead_letters is not on /metrics"
    return float(match.group(1))


def test_a_dead_lettered_document_is_requeued_over_http_and_indexed(
    server: Server, fake: FakeEmbeddings, tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    text = "Comet tails glow with ionised gas pushed away by the solar wind."
    accepted = dead_letter_doc(fake, tenant_a, "comet", text)
    (letter,) = [x for x in letters_of(tenant_a) if x["doc_id"] == "comet"]
    assert letter["source_id"] == accepted["event_id"]
    assert letter["requeueable"] is True and letter["event_type"] == "DocumentUpserted"
    assert "400" in letter["error"] or "refused" in letter["error"]
    shown = tenant_a.get(f"/api/v1/dead-letters/{letter['id']}").json()
    assert json.loads(shown["event"])["text"] == text
    assert shown["document"]["status"] == "failed"
    assert gauge(server) >= 1

    # Another tenant sees none of it and can touch none of it.
    assert all(x["id"] != letter["id"] for x in letters_of(tenant_b))
    for method, path in (
        ("GET", f"/api/v1/dead-letters/{letter['id']}"),
        ("POST", f"/api/v1/dead-letters/{letter['id']}/requeue"),
        ("DELETE", f"/api/v1/dead-letters/{letter['id']}"),
    ):
        refused = tenant_b.request(method, path)
        assert refused.status_code == 404, refused.text
        assert "Comet" not in refused.text
    with client(server, INGEST_ONLY) as ingest_only:
        assert ingest_only.get("/api/v1/dead-letters").status_code == 403

    requeued = tenant_a.post(f"/api/v1/dead-letters/{letter['id']}/requeue")
    assert requeued.status_code == 200, requeued.text
    body = requeued.json()
    assert (body["outcome"], body["doc_id"]) == ("requeued", "comet")
    view = wait_status(tenant_a, "comet", "indexed")
    assert (view["event_id"], view["version"]) == (body["event_id"], accepted["version"])
    found = tenant_a.post("/api/v1/search", json={"query": "comet tails solar wind"}).json()
    assert found["results"][0]["doc_id"] == "comet"
    assert all(x["id"] != letter["id"] for x in letters_of(tenant_a))
    assert gauge(server) == 0
    again = tenant_a.post(f"/api/v1/dead-letters/{letter['id']}/requeue")
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


def test_a_newer_version_ingested_meanwhile_wins_over_the_requeue(
    fake: FakeEmbeddings, tenant_a: httpx.Client
) -> None:
    dead_letter_doc(fake, tenant_a, "nebula", "Nebulae are clouds of dust.")
    (letter,) = [x for x in letters_of(tenant_a) if x["doc_id"] == "nebula"]
    newer = tenant_a.post(
        "/api/v1/ingest?wait=true",
        json={"documents": [{"id": "nebula", "text": "Nebulae are nurseries of new stars."}]},
    )
    assert newer.status_code == 200, newer.text
    (accepted,) = newer.json()["documents"]
    assert accepted["status"] == "indexed"

    requeued = tenant_a.post(f"/api/v1/dead-letters/{letter['id']}/requeue")
    assert requeued.status_code == 200, requeued.text
    assert requeued.json()["outcome"] == "superseded"
    assert requeued.json()["event_id"] == accepted["event_id"]
    view = tenant_a.get("/api/v1/documents/nebula").json()
    assert (view["status"], view["version"]) == ("indexed", accepted["version"])
    assert tenant_a.get(f"/api/v1/dead-letters/{letter['id']}").status_code == 404


def test_bad_parameters_are_422_naming_them(tenant_a: httpx.Client) -> None:
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "yesterday"}, "after"),
        ({"tenant": "tenant-b"}, "tenant"),
    ):
        response = tenant_a.get("/api/v1/dead-letters", params=params)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    for unknown in ("1-0", "nope", "99999999999999999999-0"):
        assert tenant_a.get(f"/api/v1/dead-letters/{unknown}").status_code == 404
        assert tenant_a.delete(f"/api/v1/dead-letters/{unknown}").status_code == 404


def test_the_routes_are_in_the_openapi_document(server: Server) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert set(paths["/api/v1/dead-letters"]) == {"get"}
    assert set(paths["/api/v1/dead-letters/{letter_id}"]) == {"get", "delete"}
    requeue = paths["/api/v1/dead-letters/{letter_id}/requeue"]["post"]
    assert requeue["security"] == [{"bearer": []}] and "admin" in requeue["description"]
    assert {"200", "404", "409", "503"} <= set(requeue["responses"])
    listing = paths["/api/v1/dead-letters"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "order", "after"}


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "dead-letters", *args, "--data-dir", str(server.data_dir)],
        env=server.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_the_cli_lists_shows_requeues_and_drops_every_tenants(
    server: Server, fake: FakeEmbeddings, tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    dead_letter_doc(fake, tenant_a, "quasar", "Quasars are bright galactic nuclei.")
    dead_letter_doc(fake, tenant_b, "pulsar", "Pulsars are spinning neutron stars.")
    # And one nobody can read: only the CLI shows it, and it cannot be requeued.
    url, prefix = redis_of(server)
    streams = Streams(prefix)
    with redis.Redis.from_url(url) as raw:
        unreadable = raw.xadd(
            streams.dead_letter,
            {
                EVENT_FIELD: encode_event(
                    EventDeadLettered(
                        source_stream=streams.documents,
                        source_id="1-0",
                        group="indexer",
                        raw=b"\xff not json",
                        error="entry does not decode",
                        deliveries=1,
                        at=time.time(),
                    )
                )
            },
        ).decode()

    every = json_lines(cli(server, "list", "--json"))
    by_doc = {x["doc_id"]: x for x in every}
    assert {"quasar", "pulsar", None} <= set(by_doc)
    assert by_doc["quasar"]["tenant"] == "tenant-a" and by_doc["pulsar"]["tenant"] == "tenant-b"
    assert by_doc[None]["id"] == unreadable and by_doc[None]["requeueable"] is False
    only_b = json_lines(cli(server, "list", "--json", "--tenant", "tenant-b"))
    assert [x["doc_id"] for x in only_b] == ["pulsar"]
    table = cli(server, "list")
    assert table.returncode == 0 and "tenant-a/quasar" in table.stdout, table.stderr

    (shown,) = json_lines(cli(server, "show", by_doc["pulsar"]["id"], "--json"))
    assert json.loads(shown["event"])["text"].startswith("Pulsars")
    assert shown["document"]["status"] == "failed"
    plain = cli(server, "show", by_doc["pulsar"]["id"])
    assert plain.returncode == 0 and "document now: failed" in plain.stdout

    refused = cli(server, "requeue", unreadable)
    assert refused.returncode == 1 and "cannot be requeued" in refused.stderr
    (dropped,) = json_lines(cli(server, "drop", unreadable, "--json"))
    assert dropped["outcome"] == "dropped"
    assert cli(server, "drop", unreadable).returncode == 1  # gone already

    (requeued,) = json_lines(cli(server, "requeue", "--all", "--tenant", "tenant-a", "--json"))
    assert (requeued["id"], requeued["outcome"]) == (by_doc["quasar"]["id"], "requeued")
    wait_status(tenant_a, "quasar", "indexed")
    (requeued,) = json_lines(cli(server, "requeue", by_doc["pulsar"]["id"], "--json"))
    assert requeued["outcome"] == "requeued"
    wait_status(tenant_b, "pulsar", "indexed")
    assert json_lines(cli(server, "list", "--json")) == []


def test_redis_down_is_503_with_retry_after(fake: FakeEmbeddings, tmp_path: Path) -> None:
    valkey = EmbeddedRedis(tmp_path / "valkey")
    url = valkey.start()
    server = Server(
        tmp_path / "data", {**openai_env(fake), "REDIS_URL": url, "RAG_STREAM_PREFIX": "rag:"}
    ).start()
    try:
        with server.client() as http:
            assert http.get("/api/v1/dead-letters").status_code == 200
            valkey.stop()
            for method, path in (
                ("GET", "/api/v1/dead-letters"),
                ("GET", "/api/v1/dead-letters/1-0"),
                ("POST", "/api/v1/dead-letters/1-0/requeue"),
                ("DELETE", "/api/v1/dead-letters/1-0"),
            ):
                refused = http.request(method, path)
                assert refused.status_code == 503, (path, refused.text)
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["code"] == "unavailable"
    finally:
        server.stop()
        valkey.stop()
