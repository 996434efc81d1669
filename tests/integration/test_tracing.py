"""Spans of a search and of the projector, from a real server (Hypercorn on a free port, in this
process so the in-memory exporter sees its spans) over a real Redis and Edge index."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from app.api.asgi import create_app
from app.bootstrap import Services, build_services
from app.domain.records import DEFAULT_TENANT
from app.services.query import Pipeline, SearchParams
from app.settings import Settings
from app.telemetry import schema, tracing
from tests.e2e.server import REDIS_URL, drop_keys, free_port

pytest_plugins = ("tests.integration.redis_fixtures",)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
QUERY = "how do plants make glucose from sunlight"
DOCS = [
    {
        "id": "photo",
        "title": "Photosynthesis",
        "text": "Green plants use sunlight, water and "
        "carbon dioxide to make glucose and release oxygen inside chloroplasts.",
    },
    {
        "id": "insulin",
        "title": "Insulin",
        "text": "Insulin is a peptide hormone made by beta "
        "cells; it regulates glucose uptake by cells.",
    },
    {
        "id": "leaf",
        "title": "Leaves",
        "text": "Leaves hold the chloroplasts where plants turn light into chemical energy.",
    },
]


class Running(msgspec.Struct, kw_only=True):
    url: str
    exporter: InMemorySpanExporter
    services: Services


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Running]:
    redis_url = REDIS_URL or request.getfixturevalue("embedded_valkey").url
    prefix = f"test:{uuid.uuid4().hex}:"
    settings = Settings.from_env({}).replace(
        redis_url=redis_url,
        stream_prefix=prefix,
        data_dir=str(tmp_path_factory.mktemp("tracing") / "data"),
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    port = free_port()
    stop = threading.Event()
    built: list[Services] = []
    failed: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            services = await asyncio.to_thread(build_services, settings)
            built.append(services)
            config = Config()
            config.bind = [f"127.0.0.1:{port}"]
            config.accesslog = None
            stopping = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                stopping.set()

            watcher = asyncio.create_task(watch())
            try:
                await serve(create_app(settings, services), config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
            finally:
                watcher.cancel()
                await services.aclose()

        try:
            asyncio.run(main())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not failed:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        stop.set()
        raise RuntimeError(f"server did not start: {failed}")
    try:
        yield Running(url=url, exporter=exporter, services=built[0])
    finally:
        stop.set()
        thread.join(60)
        tracing.use(None)
        provider.shutdown()
        drop_keys({prefix})  # on the machine's Redis; an embedded Valkey goes with its dir


@pytest.fixture(scope="module")
def ingest_response(running: Running) -> httpx.Response:
    response = httpx.post(
        f"{running.url}/api/v1/ingest?wait=true",
        json={"documents": DOCS},
        headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def _spans(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and format(s.context.trace_id, "032x") == trace_id
    ]


def _wait_for(exporter: InMemorySpanExporter, trace_id: str, name: str) -> list[ReadableSpan]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = _spans(exporter, trace_id)
        if any(s.name == name for s in spans):
            return spans
        time.sleep(0.05)
    raise AssertionError(f"no {name} span in trace {trace_id}")


def _registered(span: ReadableSpan) -> None:
    """The span's name and every attribute key are in the registry."""
    key = schema.HTTP_SERVER if span.kind == SpanKind.SERVER else span.name
    assert key in schema.SPANS, span.name
    spec = schema.SPANS[key]
    assert span.kind.name.lower() == spec.kind, span.name
    unknown = set(span.attributes or {}) - set(spec.attributes)
    assert not unknown, f"{span.name}: attributes not in the registry: {unknown}"


def test_search_span_tree(running: Running, ingest_response: httpx.Response) -> None:
    response = httpx.post(
        f"{running.url}/api/v1/search",
        json={"query": QUERY, "top_k": 2, "diversity": 0.3, "rerank": True},
        headers={"traceparent": TRACEPARENT},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # The incoming trace is continued, and its id is in the body and in a header.
    assert body["trace_id"] == TRACE_ID
    assert response.headers["x-trace-id"] == TRACE_ID

    spans = _wait_for(running.exporter, TRACE_ID, schema.RECORD)
    by_name = {s.name: s for s in spans}
    server = by_name["POST /api/v1/search"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert server.attributes is not None
    assert server.attributes[schema.HTTP_ROUTE] == "/api/v1/search"
    assert server.attributes[schema.HTTP_STATUS] == 200
    assert server.attributes[schema.OPERATION] == "search"
    server_id = server.context.span_id if server.context else None

    stages = [schema.EMBED, schema.SEARCH, schema.FUSION, schema.RERANK, schema.MMR, schema.RECORD]
    for name in stages:
        assert by_name[name].parent is not None, name
        assert by_name[name].parent.span_id == server_id, f"{name} is not a child of the request"
    starts = [by_name[name].start_time or 0 for name in stages]
    assert starts == sorted(starts), "stages out of order"

    embed, search = by_name[schema.EMBED].attributes, by_name[schema.SEARCH].attributes
    assert embed is not None and search is not None
    assert embed[schema.MODEL] == running.services.embedder.model_id
    assert embed[schema.CACHE] == "off" and embed[schema.BATCH_SIZE] == 1
    assert search[schema.MODE] == "hybrid" and search[schema.CANDIDATES] >= 2
    assert schema.QUERY_TEXT not in search
    fusion = by_name[schema.FUSION].attributes
    assert fusion is not None and fusion[schema.KEPT] <= fusion[schema.CANDIDATES]
    record = by_name[schema.RECORD].attributes
    assert record is not None
    assert record[schema.RETRIEVAL_ID] == body["retrieval_id"]
    assert str(record[schema.STREAM]).endswith("retrievals")
    assert str(record[schema.EVENT_ID]).count("-") == 1  # a stream entry id

    # The index calls are CLIENT spans inside the stages that made them.
    retrieve = by_name[schema.QDRANT_RETRIEVE]
    assert retrieve.kind == SpanKind.CLIENT
    assert retrieve.parent is not None
    assert retrieve.parent.span_id == by_name[schema.SEARCH].context.span_id  # type: ignore[union-attr]
    assert (retrieve.attributes or {})[schema.DB_SYSTEM] == "qdrant"
    assert schema.QDRANT_FETCH in by_name  # hydrate, token signatures, vectors

    for span in spans:
        _registered(span)
        for value in (span.attributes or {}).values():
            assert QUERY not in str(value), f"query text in {span.name}"


def test_query_text_only_when_asked(running: Running, ingest_response: httpx.Response) -> None:
    services = running.services
    cfg = msgspec.structs.replace(services.pipeline.config, trace_query_text=True)
    pipeline = Pipeline(services.embedder, services.index, services.pipeline.reranker, cfg)

    async def search() -> str | None:
        with tracing.tracer().start_as_current_span("test"):
            await pipeline.search(SearchParams(query=QUERY, tenant=DEFAULT_TENANT))
            return tracing.current_trace_id()

    trace_id = asyncio.run(search())
    assert trace_id is not None
    (span,) = [s for s in _spans(running.exporter, trace_id) if s.name == schema.SEARCH]
    assert (span.attributes or {})[schema.QUERY_TEXT] == QUERY


def test_projector_span_is_linked_to_the_ingest_request(
    running: Running, ingest_response: httpx.Response
) -> None:
    response = httpx.post(
        f"{running.url}/api/v1/ingest?wait=true",
        json={"documents": [{"id": "linked", "text": "Chlorophyll absorbs red and blue light."}]},
        headers={"traceparent": TRACEPARENT.replace(TRACE_ID, "a" * 32)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    event_id = response.json()["documents"][0]["event_id"]
    # The server span ends once the answer is sent, a moment after the client has it.
    ingest_spans = _wait_for(running.exporter, "a" * 32, "POST /api/v1/ingest")
    (server,) = [s for s in ingest_spans if s.name == "POST /api/v1/ingest"]
    assert server.context is not None

    # ?wait=true answers once the document is applied; the batch's span ends a moment later.
    deadline = time.monotonic() + 10
    while True:
        projects = [
            s
            for s in running.exporter.get_finished_spans()
            if s.name == schema.PROJECT
            and any(link.context.span_id == server.context.span_id for link in s.links)
        ]
        if projects or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(projects) == 1, "no rag.project span links to the ingest request"
    project = projects[0]
    assert project.kind == SpanKind.CONSUMER
    assert project.context is not None
    assert format(project.context.trace_id, "032x") != "a" * 32  # its own trace, linked
    (link,) = [lk for lk in project.links if lk.context.span_id == server.context.span_id]
    assert format(link.context.trace_id, "032x") == "a" * 32
    assert (link.attributes or {})[schema.EVENT_ID] == event_id

    children = [
        s
        for s in running.exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == project.context.span_id
    ]
    names = {s.name for s in children}
    assert {schema.EMBED, schema.QDRANT_UPSERT, schema.REDIS_ACK} <= names, names
    (embed,) = [s for s in children if s.name == schema.EMBED]
    attributes = embed.attributes or {}
    assert attributes[schema.CACHE_HITS] + attributes[schema.CACHE_MISSES] >= 1  # type: ignore[operator]
    for span in [project, *children]:
        _registered(span)
        for value in (span.attributes or {}).values():
            assert "Chlorophyll" not in str(value)


def test_exemplars_carry_trace_ids_in_openmetrics(
    running: Running, ingest_response: httpx.Response
) -> None:
    response = httpx.post(
        f"{running.url}/api/v1/search",
        json={"query": "insulin"},
        headers={"traceparent": TRACEPARENT.replace(TRACE_ID, "b" * 32)},
        timeout=60,
    )
    assert response.status_code == 200
    scrape = httpx.get(
        f"{running.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    exemplars: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            if sample.exemplar is not None:
                exemplars.setdefault(sample.name, set()).add(sample.exemplar.labels["trace_id"])
    assert "b" * 32 in exemplars["rag_latency_seconds_bucket"]
    assert "b" * 32 in exemplars["rag_requests_total"]
    assert exemplars["rag_stage_latency_seconds_bucket"]

    plain = httpx.get(f"{running.url}/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text  # the classic format has no exemplars
    assert 'rag_requests_total{operation="search",status="200"}' in plain.text
