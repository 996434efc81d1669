"""The Python client (app/client.py), sync and async, against real servers: every endpoint,
typed results, ids escaped whatever they hold, errors carrying the API's body, and retries
that honour Retry-After on 429 and 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.api.keys import digest, new_key
from app.api.schemas import DocumentInput, SearchResponse
from app.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnavailableError,
    segment,
)
from tests.conftest import ROOT
from tests.e2e.server import Server

ODD_IDS = ["a/b?c=1#frag", "spaces and ünïcödé 文", "..", ".", "%2F%", "x/../y"]

ADMIN, SLOW, SEARCH_ONLY = new_key(), new_key(), new_key()
KEYS = [
    {
        "sha256": digest(ADMIN),
        "tenant": "clients",
        "scopes": ["search", "ingest", "admin", "operator"],
        "rate_per_second": 1000,
        "burst": 1000,
    },
    # One request a second, two at once: the 429 tests.
    {
        "sha256": digest(SLOW),
        "tenant": "clients",
        "scopes": ["search"],
        "rate_per_second": 1,
        "burst": 4,
    },
    {"sha256": digest(SEARCH_ONLY), "tenant": "clients", "scopes": ["search"]},
]


def test_every_document_endpoint_with_odd_ids(server: Server) -> None:
    with Client(server.url) as rag:
        docs = [
            DocumentInput(id=doc_id, text=f"Quokka note {i}.", title=f"T{i}", metadata={"n": i})
            for i, doc_id in enumerate(ODD_IDS)
        ]
        ingested = rag.ingest(docs, wait=True)
        assert [d.status for d in ingested.documents] == ["indexed"] * len(ODD_IDS)
        for i, doc_id in enumerate(ODD_IDS):
            read = rag.document(doc_id, text=True, chunks=True)
            assert (read.doc_id, read.title, read.text) == (doc_id, f"T{i}", f"Quokka note {i}.")
            assert read.metadata == {"n": i}
            assert read.chunks_indexed is not None and len(read.chunks_indexed) == 1
        assert {d.doc_id for d in rag.iter_documents(page_size=3)} >= set(ODD_IDS)
        first = rag.documents(limit=2)
        assert len(first.documents) == 2 and first.next is not None
        second = rag.documents(limit=2, cursor=first.next)
        assert not {d.doc_id for d in first.documents} & {d.doc_id for d in second.documents}
        for doc_id in ODD_IDS:
            assert rag.delete(doc_id, wait=True).status == "deleted"
        with pytest.raises(NotFoundError) as missing:
            rag.document("never there/at all")
        assert missing.value.status == 404 and missing.value.code == "not_found"
        assert "never there/at all" in (missing.value.error.message if missing.value.error else "")


def test_segments_survive_any_http_stack() -> None:
    assert segment("a/b?c#d e") == "a%2Fb%3Fc%23d%20e"
    assert (segment("."), segment("..")) == ("%2E", "%2E%2E")
    assert segment("x.y") == "x.y"


def test_search_feedback_retrievals_quality(server: Server) -> None:
    with Client(server.url) as rag:
        found = rag.search("which hormone controls glucose uptake", top_k=2)
        assert isinstance(found, SearchResponse)
        assert found.results[0].doc_id == "insulin"
        assert set(found.results[0].scores) >= {"dense", "bm25", "fusion"}
        assert found.timings_ms["total"] > 0
        filtered = rag.search("volcano", filters={"topic": "geology"}, mode="bm25")
        assert {r.doc_id for r in filtered.results} == {"volcano"}
        batch = rag.search_batch([{"query": "glucose"}, {"query": "lava", "top_k": 1}])
        assert [len(r.results) for r in batch][1] == 1 and batch[1].results[0].doc_id == "volcano"
        assert batch[0].retrieval_id != batch[1].retrieval_id

        deadline = time.monotonic() + 10
        while True:
            try:
                recorded = rag.retrieval(found.retrieval_id)
                break
            except NotFoundError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert recorded.query == "which hormone controls glucose uptake"
        judged = rag.feedback(found.retrieval_id, relevance=2, doc_id="insulin")
        assert judged.retrieval_id == found.retrieval_id and judged.event_id
        assert rag.quality(hours=1, k=5).retrievals >= 1
        stats = rag.stats()
        assert stats.index.documents >= 5 and stats.events.documents_stream >= 5
        assert rag.dead_letters(limit=5).dead_letters == []
        with pytest.raises(NotFoundError):
            rag.dead_letter("1-0")
        assert rag.health().status == "ok"
        assert rag.ready().ready is True

        with pytest.raises(InvalidRequestError) as bad:
            rag.search("   ")
        assert (bad.value.status, bad.value.field) == (422, "query")
        with pytest.raises(InvalidRequestError) as bad:
            rag.search_batch([{"query": "fine"}, {"query": "x", "top_k": 1000}])
        assert bad.value.field == "searches[1].top_k"


def test_the_async_client_is_the_same_api(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url) as rag:
            docs = [{"id": "async/one", "text": "Wombats dig burrows with their claws."}]
            ingested = await rag.ingest(docs, wait=True)
            assert ingested.documents[0].status == "indexed"
            read = await rag.document("async/one", text=True)
            assert read.text == docs[0]["text"]
            found, batch = await asyncio.gather(
                rag.search("wombat burrows", top_k=1),
                rag.search_batch([{"query": "wombat burrows", "top_k": 1}]),
            )
            assert found.results[0].doc_id == batch[0].results[0].doc_id == "async/one"
            ids = [d.doc_id async for d in rag.iter_documents(page_size=2)]
            assert "async/one" in ids
            assert (await rag.delete("async/one", wait=True)).status == "deleted"
            with pytest.raises(NotFoundError):
                await rag.erasure("0" * 32)
            assert (await rag.ready()).ready

    asyncio.run(run())


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = tmp_path_factory.mktemp("client-keys") / "keys.json"
    keys.write_text(json.dumps({"keys": KEYS}))
    srv = Server(
        tmp_path_factory.mktemp("client-keyed") / "data", env={"RAG_API_KEYS_FILE": str(keys)}
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_429_is_retried_after_retry_after(keyed: Server) -> None:
    with Client(keyed.url, api_key=SLOW, retries=0) as impatient:
        with pytest.raises(RateLimitError) as limited:
            for _ in range(10):
                impatient.search("anything")
        assert limited.value.status == 429 and limited.value.code == "rate_limited"
        assert limited.value.retry_after is not None and limited.value.retry_after >= 1
    with Client(keyed.url, api_key=SLOW, retries=3, max_wait=5) as patient:
        started = time.monotonic()
        patient.search("anything")  # the bucket is empty: it waits for the next token
        assert time.monotonic() - started >= 0.5


def test_a_batch_costs_one_token_a_search(keyed: Server) -> None:
    with Client(keyed.url, api_key=SLOW, retries=0) as rag:
        time.sleep(4.5)  # the bucket refills to its burst of 4
        assert len(rag.search_batch([{"query": "q"}] * 4)) == 4
        with pytest.raises(RateLimitError):
            rag.search("one more")


def test_auth_errors_carry_the_api_body(keyed: Server) -> None:
    with Client(keyed.url, api_key="rag_" + "0" * 32) as stranger:
        with pytest.raises(AuthenticationError) as refused:
            stranger.stats()
        assert refused.value.field == "Authorization"
    with Client(keyed.url, api_key=SEARCH_ONLY) as searcher:
        with pytest.raises(PermissionDeniedError) as denied:
            searcher.documents()
        assert denied.value.code == "forbidden" and "ingest" in str(denied.value)


def test_erasure_and_operator_jobs(keyed: Server) -> None:
    with Client(keyed.url, api_key=ADMIN, timeout=180) as rag:
        rag.ingest([{"id": "erase/me", "text": "Forget the platypus."}], wait=True)
        erasure = rag.erase("erase/me", wait=True, poll=0.3)
        assert (erasure.doc_id, erasure.tenant, erasure.phase) == (
            "erase/me",
            "clients",
            "complete",
        )
        assert rag.erasure(erasure.erasure_id).completed_at is not None
        assert "platypus" not in json.dumps([r.text for r in rag.search("platypus").results])

        job = rag.compact()
        while job.phase not in ("done", "failed"):
            time.sleep(0.2)
            job = rag.compaction_job(job.job_id)
        assert job.phase == "done", job.error
        replay = rag.reindex()
        while replay.phase not in ("done", "failed"):
            time.sleep(0.3)
            replay = rag.reindex_job(replay.job_id)
        assert replay.phase == "done", replay.error
        with pytest.raises(NotFoundError):
            rag.reindex_job("0190d3a0-0000-7000-8000-000000000000")


def test_503_is_retried_then_raised_with_the_body(tmp_path: Path) -> None:
    # A memory budget below what the process holds at rest: every API request is refused.
    srv = Server(tmp_path / "data", env={"RAG_MAX_MEMORY_MB": "64"}).start()
    try:
        with Client(srv.url, retries=2, max_wait=5) as rag:
            started = time.monotonic()
            with pytest.raises(UnavailableError) as unavailable:
                rag.search("anything")
            waited = time.monotonic() - started
        assert unavailable.value.status == 503 and unavailable.value.code == "over_memory_budget"
        assert unavailable.value.retry_after is not None
        # Two retries, each after the server's Retry-After.
        assert waited >= 2 * unavailable.value.retry_after * 0.9
        with Client(srv.url, retries=1, max_wait=0.1) as hasty:
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                hasty.search("anything")  # Retry-After beyond max_wait: no retry
            assert time.monotonic() - started < 1
    finally:
        srv.stop()


def test_the_readme_example_runs(keyed: Server, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From Python") :]
    start = section.index("```python\n") + len("```python\n")
    example = section[start : section.index("\n```", start)]
    assert "Client(" in example
    example = example.replace("http://localhost:8000", keyed.url)
    example = example.replace("api_key=None", f"api_key={ADMIN!r}")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert " insulin {'dense': " in printed
