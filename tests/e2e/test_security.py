"""API keys, tenant isolation, limits, rate limits and CORS, against a real server with a keys file.

The canary: tenant A indexes documents with unmistakable texts; tenant B then uses A's exact
texts, ids, retrieval ids, metadata and dead letters through every endpoint and must see
nothing of A's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.adapters.redis.streams import EVENT_FIELD
from app.api.keys import digest, new_key
from app.api.routes import ENDPOINTS as ROUTES
from app.domain.events import EventDeadLettered, Streams, encode_event
from tests.e2e.server import Server
from tests.e2e.test_dead_letters import redis_of

A_KEY, B_KEY, SEARCH_ONLY, SLOW, ROTATED = (new_key() for _ in range(5))
WRONG = new_key()
INGEST_ONLY = new_key()
ALL = ["search", "ingest", "admin"]
KEYS = [
    {"sha256": digest(A_KEY), "tenant": "tenant-a", "scopes": ALL, "name": "a"},
    {"sha256": digest(B_KEY), "tenant": "tenant-b", "scopes": ALL, "name": "b"},
    {"sha256": digest(SEARCH_ONLY), "tenant": "tenant-a", "scopes": ["search"]},
    {"sha256": digest(INGEST_ONLY), "tenant": "tenant-a", "scopes": ["search", "ingest"]},
    # Two requests at once, then one every 20 s: the 429 tests.
    {
        "sha256": digest(SLOW),
        "tenant": "tenant-c",
        "scopes": ["search"],
        "rate_per_second": 0.05,
        "burst": 2,
    },
]
MAX_QUERY_CHARS = 200
MAX_TEXT_CHARS = 5000
MAX_BODY_BYTES = 64 * 1024
ORIGIN = "https://app.example.com"

CANARY = [
    {
        "id": "canary-1",
        "title": "Quasar zebra ledger",
        "text": "The quasar zebra ledger records obsidian turnips bartered at the heliotrope "
        "market every ninth moon; its keeper is Ottoline Vantablack.",
        "metadata": {"secret": "alpha-7", "year": 1999},
    },
    {
        "id": "canary-2",
        "title": "Marzipan telemetry",
        "text": "Marzipan telemetry from the lighthouse shows the gyroscope drifting by "
        "seventeen arcseconds whenever the tide brings kelp to the north jetty.",
        "metadata": {"secret": "beta-9", "year": 2003},
    },
]
CANARY_IDS = {d["id"] for d in CANARY}
ENDPOINTS = [
    ("POST", "/api/v1/search", {"query": "x"}),
    ("POST", "/api/v1/ingest", {"documents": [{"id": "x", "text": "x"}]}),
    ("GET", "/api/v1/documents/x", None),
    ("DELETE", "/api/v1/documents/x", None),
    ("GET", "/api/v1/retrievals/0190d3a0-0000-7000-8000-000000000000", None),
    ("POST", "/api/v1/feedback", {"retrieval_id": "r", "doc_id": "x", "relevance": 1}),
    ("GET", "/api/v1/stats", None),
    ("POST", "/api/v1/reindex", None),
    ("GET", "/api/v1/reindex/0190d3a0-0000-7000-8000-000000000000", None),
    ("GET", "/api/v1/quality", None),
    ("GET", "/api/v1/dead-letters", None),
    ("GET", "/api/v1/dead-letters/1-0", None),
    ("POST", "/api/v1/dead-letters/1-0/requeue", None),
    ("DELETE", "/api/v1/dead-letters/1-0", None),
    ("POST", "/api/v1/compact", None),
    ("GET", "/api/v1/compact/0190d3a0-0000-7000-8000-000000000000", None),
    ("GET", "/api/v1/erasures/0190d3a00000700080000000000000", None),
]


def test_every_route_behind_a_key_is_in_the_endpoint_list() -> None:
    """The auth tests below run over ENDPOINTS: a new route left out would go untested."""
    for route in ROUTES:
        if route.scope is None:
            continue
        pattern = re.sub(r"\{[^}:]+:path\}", ".+", route.path)
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", pattern)
        assert any(
            method == route.method and re.fullmatch(pattern, path) for method, path, _ in ENDPOINTS
        ), f"{route.method} {route.path} is missing from ENDPOINTS"


def write_keys(path: Path, keys: list[dict]) -> None:
    # Replaced whole, as a Secret volume or `mv` would: never read half-written.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": keys}))
    tmp.replace(path)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    write_keys(path, KEYS)
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("secured") / "data",
        env={
            "RAG_API_KEYS_FILE": str(keys_file),
            "RAG_API_KEYS_RELOAD_SECONDS": "0.2",
            "RAG_RATE_LIMIT_PER_SECOND": "1000",
            "RAG_RATE_LIMIT_BURST": "1000",
            "RAG_MAX_QUERY_CHARS": str(MAX_QUERY_CHARS),
            "RAG_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "RAG_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "RAG_CORS_ORIGINS": ORIGIN,
            "RAG_INGEST_WAIT_SECONDS": "20",
        },
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(server: Server, key: str | None) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.url, timeout=60, headers=headers)


@pytest.fixture(scope="module")
def tenant_a(secured: Server) -> Iterator[httpx.Client]:
    with client(secured, A_KEY) as http:
        response = http.post("/api/v1/ingest?wait=true", json={"documents": CANARY})
        assert response.status_code == 200, response.text
        assert {d["status"] for d in response.json()["documents"]} == {"indexed"}
        yield http


@pytest.fixture(scope="module")
def tenant_b(secured: Server) -> Iterator[httpx.Client]:
    with client(secured, B_KEY) as http:
        yield http


# --- Tenant isolation --------------------------------------------------------------------


def test_the_canary_is_visible_to_its_own_tenant(tenant_a: httpx.Client) -> None:
    """Without this the isolation tests below could pass by finding nothing for anyone."""
    for doc in CANARY:
        response = tenant_a.post("/api/v1/search", json={"query": doc["text"], "top_k": 5})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["doc_id"] == doc["id"]
        got = tenant_a.get(f"/api/v1/documents/{doc['id']}").json()
        assert got["status"] == "indexed"


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize("rerank", [False, True])
def test_another_tenant_searching_with_the_exact_texts_finds_nothing(
    tenant_a: httpx.Client, tenant_b: httpx.Client, mode: str, rerank: bool
) -> None:
    for doc in CANARY:
        for query, filters in (
            (doc["text"], None),
            (doc["title"], None),
            (doc["id"], None),
            (doc["text"], {"secret": doc["metadata"]["secret"]}),
            (doc["text"], {"year": {"gte": 1900}}),
        ):
            body: dict = {"query": query, "top_k": 100, "mode": mode, "rerank": rerank}
            if filters:
                body["filters"] = filters
            response = tenant_b.post("/api/v1/search", json=body)
            assert response.status_code == 200, response.text
            leaked = [r for r in response.json()["results"] if r["doc_id"] in CANARY_IDS]
            assert not leaked, leaked
            assert "Vantablack" not in response.text and "arcseconds" not in response.text


def test_another_tenant_cannot_read_or_delete_the_documents(
    tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    for doc_id in CANARY_IDS:
        assert tenant_b.get(f"/api/v1/documents/{doc_id}").status_code == 404
        assert tenant_b.delete(f"/api/v1/documents/{doc_id}?wait=true").status_code == 404
        assert tenant_a.get(f"/api/v1/documents/{doc_id}").json()["status"] == "indexed"


def test_erasure_needs_admin_and_stays_within_the_tenant(
    secured: Server, tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    tenant_a.post(
        "/api/v1/ingest?wait=true", json={"documents": [{"id": "to-erase", "text": "Kelp."}]}
    ).raise_for_status()
    # Another tenant's admin finds no such document; a key without `admin` may not erase.
    assert tenant_b.delete("/api/v1/documents/to-erase?erase=true").status_code == 404
    with client(secured, INGEST_ONLY) as ingest_only:
        refused = ingest_only.delete("/api/v1/documents/to-erase?erase=true")
        assert refused.status_code == 403 and "admin" in refused.text
        assert ingest_only.get("/api/v1/documents/to-erase").json()["status"] == "indexed"
    erased = tenant_a.delete("/api/v1/documents/to-erase?erase=true")
    assert erased.status_code == 202, erased.text
    location = erased.headers["location"]
    assert tenant_a.get(location).json()["doc_id"] == "to-erase"
    assert tenant_b.get(location).status_code == 404  # not another tenant's to see


def test_the_same_document_id_in_two_tenants_is_two_documents(
    tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    mine = {"id": "canary-1", "text": "Tenant B's own note about rhubarb crumble recipes."}
    response = tenant_b.post("/api/v1/ingest?wait=true", json={"documents": [mine]})
    assert response.status_code == 200, response.text
    assert response.json()["documents"][0]["status"] == "indexed"
    found_b = tenant_b.post("/api/v1/search", json={"query": CANARY[0]["text"]}).json()
    assert [r["text"] for r in found_b["results"]] == [mine["text"]]
    found_a = tenant_a.post("/api/v1/search", json={"query": CANARY[0]["text"]}).json()
    assert found_a["results"][0]["text"] == CANARY[0]["text"]
    assert mine["text"] not in json.dumps(found_a)
    # B deleting its own canary-1 leaves A's in place.
    assert tenant_b.delete("/api/v1/documents/canary-1?wait=true").status_code == 200
    assert tenant_a.get("/api/v1/documents/canary-1").json()["status"] == "indexed"
    assert tenant_b.get("/api/v1/documents/canary-1").json()["status"] == "deleted"


def test_retrievals_and_feedback_of_another_tenant_are_not_found(
    tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    search = tenant_a.post("/api/v1/search", json={"query": CANARY[1]["text"]}).json()
    retrieval_id = search["retrieval_id"]
    deadline = time.monotonic() + 10
    while tenant_a.get(f"/api/v1/retrievals/{retrieval_id}").status_code != 200:
        assert time.monotonic() < deadline, "retrieval never readable by its own tenant"
        time.sleep(0.1)
    assert tenant_a.get(f"/api/v1/retrievals/{retrieval_id}").json()["tenant"] == "tenant-a"
    response = tenant_b.get(f"/api/v1/retrievals/{retrieval_id}")
    assert response.status_code == 404 and "Vantablack" not in response.text
    judged = {"retrieval_id": retrieval_id, "doc_id": "canary-2", "relevance": 2}
    assert tenant_b.post("/api/v1/feedback", json=judged).status_code == 404
    assert tenant_a.post("/api/v1/feedback", json=judged).status_code == 201


def test_stats_count_only_the_callers_documents(
    tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    a = tenant_a.get("/api/v1/stats").json()["index"]
    b = tenant_b.get("/api/v1/stats").json()["index"]
    assert a["documents"] == len(CANARY)
    assert b["documents"] == 0  # its one document was deleted above, or never indexed


def test_another_tenants_dead_letters_are_invisible_and_untouchable(
    secured: Server, tenant_a: httpx.Client, tenant_b: httpx.Client
) -> None:
    """A's canary event set aside as the projector does it: B can neither list, read,
    requeue nor drop it, by its id or any other way; A can."""
    url, prefix = redis_of(secured)
    streams = Streams(prefix)
    event_id = tenant_a.get("/api/v1/documents/canary-2").json()["event_id"]
    with redis.Redis.from_url(url) as raw:
        ((_, fields),) = raw.xrange(streams.documents, event_id, event_id)
        letter_id = raw.xadd(
            streams.dead_letter,
            {
                EVENT_FIELD: encode_event(
                    EventDeadLettered(
                        source_stream=streams.documents,
                        source_id=event_id,
                        group="indexer",
                        raw=fields[EVENT_FIELD],
                        error="the canary's own failure",
                        deliveries=5,
                        at=time.time(),
                    )
                )
            },
        ).decode()
    try:
        for order in ("newest", "oldest"):
            listed = tenant_b.get("/api/v1/dead-letters", params={"order": order, "limit": 100})
            assert listed.status_code == 200, listed.text
            assert listed.json()["dead_letters"] == []
        for method, path in (
            ("GET", f"/api/v1/dead-letters/{letter_id}"),
            ("POST", f"/api/v1/dead-letters/{letter_id}/requeue"),
            ("DELETE", f"/api/v1/dead-letters/{letter_id}"),
        ):
            response = tenant_b.request(method, path)
            assert response.status_code == 404, response.text
            assert "arcseconds" not in response.text and "canary" not in response.text
        mine = tenant_a.get("/api/v1/dead-letters").json()["dead_letters"]
        assert [(x["id"], x["doc_id"]) for x in mine] == [(letter_id, "canary-2")]
        assert "arcseconds" in tenant_a.get(f"/api/v1/dead-letters/{letter_id}").text
    finally:
        dropped = tenant_a.delete(f"/api/v1/dead-letters/{letter_id}")
        assert dropped.status_code == 200, dropped.text
    assert tenant_a.get("/api/v1/documents/canary-2").json()["status"] == "indexed"


def test_the_tenant_never_comes_from_the_body(tenant_b: httpx.Client) -> None:
    for path, body in (
        ("/api/v1/search", {"query": CANARY[0]["text"], "tenant": "tenant-a"}),
        ("/api/v1/ingest", {"documents": [{"id": "x", "text": "t"}], "tenant": "tenant-a"}),
        ("/api/v1/ingest", {"documents": [{"id": "x", "text": "t", "tenant": "tenant-a"}]}),
    ):
        response = tenant_b.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"].endswith("tenant")


# --- Authentication and scopes -----------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    ("authorization", "invalid_token"),
    [(None, False), (f"Bearer {WRONG}", True), (f"Basic {A_KEY}", False), ("Bearer", False)],
)
def test_every_api_endpoint_needs_a_valid_key(
    secured: Server,
    method: str,
    path: str,
    body: dict | None,
    authorization: str | None,
    invalid_token: bool,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request(method, f"{secured.url}{path}", json=body, headers=headers)
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="rag-pipeline"')
    assert ('error="invalid_token"' in challenge) is invalid_token
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_key_without_the_scope_gets_403(
    secured: Server, method: str, path: str, body: dict | None
) -> None:
    with client(secured, SEARCH_ONLY) as http:
        response = http.request(method, path, json=body)
    needs_search = path.startswith(("/api/v1/search", "/api/v1/retrievals", "/api/v1/feedback"))
    if needs_search:
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"


def test_probes_and_the_schema_stay_open(secured: Server) -> None:
    for path in ("/health", "/ready", "/openapi.json"):
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path
    spec = httpx.get(f"{secured.url}/openapi.json").json()
    search = spec["paths"]["/api/v1/search"]["post"]
    assert search["security"] == [{"bearer": []}]
    assert {"401", "403", "429"} <= set(search["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]


def test_a_key_added_to_the_file_works_without_restart_and_a_removed_one_stops(
    secured: Server, keys_file: Path
) -> None:
    rotated = {"sha256": digest(ROTATED), "tenant": "tenant-a", "scopes": ["search"]}
    with client(secured, ROTATED) as http:
        assert http.post("/api/v1/search", json={"query": "q"}).status_code == 401
        write_keys(keys_file, [*KEYS, rotated])
        assert _eventually(lambda: http.post("/api/v1/search", json={"query": "q"}), 200)
        # A broken file keeps the keys in force.
        keys_file.write_text("{not json")
        time.sleep(0.5)
        assert http.post("/api/v1/search", json={"query": "q"}).status_code == 200
        write_keys(keys_file, KEYS)
        assert _eventually(lambda: http.post("/api/v1/search", json={"query": "q"}), 401)


def _eventually(call: object, status: int, timeout: float = 10.0) -> bool:
    assert callable(call)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call().status_code == status:
            return True
        time.sleep(0.1)
    return False


SENT_KEYS: list[str] = []  # keys made during the tests, for the log scan at the end


def test_keys_made_by_the_cli_work_for_the_cli(
    secured: Server, keys_file: Path, tmp_path: Path
) -> None:
    made = rag("keys", "new", "--tenant", "tenant-cli", "--scope", "ingest", "--name", "cli")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    SENT_KEYS.append(key)
    entry = json.loads(made.stderr.split("list: ", 1)[1])
    assert entry == {
        "sha256": digest(key),
        "tenant": "tenant-cli",
        "scopes": ["ingest"],
        "name": "cli",
    }
    candidate = tmp_path / "candidate.json"
    write_keys(candidate, [*KEYS, entry])
    checked = rag("keys", "check", str(candidate))
    assert checked.returncode == 0 and f"{len(KEYS) + 1} keys" in checked.stdout, checked.stderr
    bad = rag("keys", "new", "--tenant", "no spaces", "--scope", "search")
    assert bad.returncode == 1 and "tenant" in bad.stderr

    note = tmp_path / "note.txt"
    note.write_text("Capybaras are the largest living rodents.")
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    refused = rag("ingest", str(note), "--url", secured.url, "--api-key-file", str(key_file))
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    write_keys(keys_file, [*KEYS, entry])
    try:
        deadline = time.monotonic() + 10
        while True:
            sent = rag("ingest", str(note), "--url", secured.url, "--api-key-file", str(key_file))
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert sent.returncode == 0 and "1 indexed" in sent.stdout, sent.stderr
        assert key not in sent.stdout + sent.stderr
    finally:
        write_keys(keys_file, KEYS)


def rag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=120
    )


# --- Limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/search", {"query": "q" * (MAX_QUERY_CHARS + 1)}, "query"),
        ("/api/v1/search", {"query": "q", "top_k": 101}, "top_k"),
        (
            "/api/v1/search",
            {"query": "q", "filters": {"k": {"any": list(range(300))}}},
            "filters.k.any",
        ),
        ("/api/v1/search", {"query": "q", "filters": {f"k{i}": 1 for i in range(33)}}, "filters"),
        ("/api/v1/search", {"query": "q", "filters": {"k": {"any": [[1]]}}}, "filters.k.any[0]"),
        (
            "/api/v1/ingest",
            {"documents": [{"id": "d", "text": "t" * (MAX_TEXT_CHARS + 1)}]},
            "documents[0].text",
        ),
        (
            "/api/v1/ingest",
            {"documents": [{"id": "d", "text": "t", "metadata": {"m": [[[[[1]]]]]}}]},
            "documents[0].metadata.m",
        ),
        ("/api/v1/ingest", {"documents": [{"id": "d", "text": "t"}], "extra": 1}, "extra"),
    ],
)
def test_limits_are_422_naming_the_field(
    tenant_b: httpx.Client, path: str, body: dict, field: str
) -> None:
    response = tenant_b.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_deeply_nested_json_is_a_4xx_not_a_500(tenant_b: httpx.Client) -> None:
    deep = b'{"documents": [{"id": "d", "text": "t", "metadata": {"m": ' + b"[" * 5000
    deep += b"]" * 5000 + b"}}]}"
    response = tenant_b.post("/api/v1/ingest", content=deep)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "body"


def test_a_body_over_the_limit_is_413_but_only_after_authentication(
    secured: Server, tenant_b: httpx.Client
) -> None:
    huge = json.dumps({"query": "q" * (MAX_BODY_BYTES + 10)})
    response = tenant_b.post("/api/v1/search", content=huge)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["field"] == "body"
    with client(secured, None) as anonymous:
        assert anonymous.post("/api/v1/search", content=huge).status_code == 401


# --- Rate limits ---------------------------------------------------------------------------


def test_responses_carry_the_rate_limit_headers(tenant_b: httpx.Client) -> None:
    for response in (
        tenant_b.post("/api/v1/search", json={"query": "q"}),
        tenant_b.post("/api/v1/search", json={"query": ""}),  # errors too
    ):
        assert response.headers["RateLimit-Limit"] == "1000"
        assert 0 <= int(response.headers["RateLimit-Remaining"]) < 1000
        assert int(response.headers["RateLimit-Reset"]) >= 0


def test_past_its_burst_a_key_gets_429_with_retry_after(secured: Server) -> None:
    with client(secured, SLOW) as http:
        first = [http.post("/api/v1/search", json={"query": "q"}) for _ in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        assert first[1].headers["RateLimit-Remaining"] == "0"
        refused = http.post("/api/v1/search", json={"query": "q"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit-Limit"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 20 <= int(refused.headers["RateLimit-Reset"]) <= 40
    # Another key is not affected.
    with client(secured, SEARCH_ONLY) as other:
        assert other.post("/api/v1/search", json={"query": "q"}).status_code == 200


# --- CORS --------------------------------------------------------------------------------


def test_cors_answers_only_the_configured_origin(secured: Server) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{secured.url}/api/v1/search", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        f"{secured.url}/api/v1/search", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_unless_configured(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/search", json={"query": "volcano"}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 200
    assert not any(h.lower().startswith("access-control-") for h in response.headers)


# --- Open mode and logs ------------------------------------------------------------------


def test_without_a_keys_file_the_server_is_open_and_says_so(
    server: Server, http: httpx.Client
) -> None:
    assert http.get("/api/v1/stats").status_code == 200
    assert "RateLimit-Limit" not in http.post("/api/v1/search", json={"query": "x"}).headers
    assert "RAG_API_KEYS_FILE is not set: the API is OPEN" in server.log.read_text()


def test_a_bad_keys_file_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"keys": [{"sha256": "x", "tenant": "t", "scopes": ["search"]}]}')
    srv = Server(tmp_path / "data", env={"RAG_API_KEYS_FILE": str(bad)})
    with pytest.raises(RuntimeError, match=r"keys\[0\]\.sha256"):
        srv.start(timeout=30)


def test_keys_never_reach_the_log(secured: Server) -> None:
    """Runs last in this module: every key above was sent, right or wrong, by now."""
    with client(secured, WRONG) as http:
        http.post("/api/v1/search", json={"query": "q"})
    log = secured.log.read_text()
    assert "API keys reloaded" in log  # the rotation test did reach the log
    for key in (A_KEY, B_KEY, SEARCH_ONLY, SLOW, ROTATED, WRONG, *SENT_KEYS):
        assert key not in log
        assert digest(key) not in log
