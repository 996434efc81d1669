"""The VectorIndex contract, held against both adapters: Qdrant Edge in process (on disk under
a temp directory) and the Qdrant cluster adapter over qdrant-client's local mode (`:memory:`)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.qdrant.remote_index import QdrantIndex
from app.domain.records import Chunk, FieldFilter, Hit, IndexedChunk, IndexQuery
from app.errors import DependencyUnavailable
from app.retrieval.late_interaction import pack_signs
from app.services.indexing import chunk_id

DIM = 32
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]

Index = EdgeIndex | QdrantIndex
Scenario = Callable[[Index], Awaitable[None]]


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_chunk(
    tenant: str,
    doc: str,
    i: int,
    text: str,
    version: str = "v1",
    metadata: dict | None = None,
    section: list[str] | None = None,
    event_id: str = "",
) -> Chunk:
    return Chunk(
        chunk_id=chunk_id(tenant, doc, i, event_id),
        tenant=tenant,
        doc_id=doc,
        version=version,
        event_id=event_id,
        chunk_index=i,
        title=doc.title(),
        section=section or [],
        text=text,
        embed_text=f"{doc}\n{text}",
        metadata=metadata or {},
    )


def indexed(chunk: Chunk, vector: np.ndarray) -> IndexedChunk:
    return IndexedChunk(
        chunk=chunk, vector=vector, token_signature=pack_signs(np.vstack([vector, -vector]))
    )


def query(
    vector: np.ndarray,
    text: str = "",
    *,
    tenant: str = "a",
    limit: int = 10,
    dense: bool = True,
    bm25: bool = True,
    filters: list[FieldFilter] | None = None,
) -> IndexQuery:
    return IndexQuery(
        tenant=tenant,
        text=text,
        vector=vector,
        limit=limit,
        dense=dense,
        bm25=bm25,
        filters=filters or [],
    )


async def search(index: Index, q: IndexQuery) -> list[Hit]:
    """Retrieve, then load the payloads as the pipeline does for the hits it returns."""
    hits = await index.retrieve(q)
    await index.hydrate(hits)
    return hits


async def close(index: Index) -> None:
    if isinstance(index, QdrantIndex):
        await index.aclose()
    else:
        index.close()


ADAPTERS = ["edge", "qdrant-local"]


@pytest.fixture(params=ADAPTERS)
def play(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Runs a scenario against a fresh index of the parametrised adapter, on one event loop."""

    def run(scenario: Scenario, **options: object) -> None:
        async def go() -> None:
            index: Index
            if request.param == "edge":
                index = EdgeIndex(
                    tmp_path / "edge",
                    model_id="test-model",
                    dim=DIM,
                    metadata_indexes={"year": "integer"},
                )
            else:
                index = QdrantIndex.connect(
                    ":memory:",
                    model_id="test-model",
                    dim=DIM,
                    metadata_indexes={"year": "integer"},
                    **options,  # type: ignore[arg-type]
                )
            try:
                await scenario(index)
            finally:
                await close(index)

        asyncio.run(go())

    yield run


def test_dense_and_bm25_scores_are_exact(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 8)
    chunks = [
        indexed(make_chunk("a", f"doc{i}", 0, f"{WORDS[i]} report"), vectors[i]) for i in range(8)
    ]
    by_doc = {f"doc{i}": vectors[i] for i in range(8)}

    async def scenario(index: Index) -> None:
        await index.upsert(chunks)
        hits = await search(index, query(vectors[3], "delta", limit=3))
        by_id = {h.chunk_id: h for h in hits}
        top = chunks[3].chunk.chunk_id
        assert top in by_id
        assert len(hits) <= 4  # the union of 3 dense and 1 BM25 candidates
        assert by_id[top].dense == pytest.approx(1.0, abs=1e-5)
        assert by_id[top].bm25 is not None and by_id[top].bm25 > 0
        for h in hits:
            # every candidate carries its exact cosine, whichever retriever found it
            assert h.dense == pytest.approx(float(by_doc[h.doc_id] @ vectors[3]), abs=1e-5)
            if h.chunk_id != top:
                assert h.bm25 is None  # no query term in its text

        only_bm25 = await search(index, query(vectors[0], "delta", dense=False))
        assert [h.doc_id for h in only_bm25] == ["doc3"]
        # the cosine is filled in even when only BM25 retrieved
        assert only_bm25[0].dense == pytest.approx(float(vectors[3] @ vectors[0]), abs=1e-5)

        # a candidate only the dense side found gets its exact BM25 score too
        both = await search(index, query(vectors[5], "delta report", limit=1))
        assert {h.doc_id for h in both} == {"doc5", "doc3"}
        assert all(h.bm25 is not None and h.bm25 > 0 for h in both)

        dense_only = await search(index, query(vectors[5], "delta report", limit=2, bm25=False))
        assert [h.doc_id for h in dense_only][:1] == ["doc5"] and len(dense_only) == 2
        assert all(h.bm25 is None for h in dense_only)

    play(scenario)


def _okapi(docs: dict[str, list[str]], terms: set[str]) -> dict[str, float]:
    """BM25 (k=1.2, b=0.75, Lucene's IDF) over the whole collection, by the book."""
    n = len(docs)
    avg = sum(len(t) for t in docs.values()) / n
    out: dict[str, float] = {}
    for doc, tokens in docs.items():
        tf = Counter(tokens)
        score = 0.0
        for term in terms:
            df = sum(1 for t in docs.values() if term in t)
            if tf[term]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf[term] * 2.2 / (tf[term] + 1.2 * (0.25 + 0.75 * len(tokens) / avg))
        if score:
            out[doc] = score
    return out


def test_bm25_is_okapi_bm25_over_the_whole_collection(play: Callable[..., None]) -> None:
    """Both adapters score the same formula; tenants share the statistics (N, IDF, mean
    length) as one Qdrant collection or Edge shard does. The cluster adapter is given the
    corpus's mean length, which Edge measures live (docs/design.md)."""
    rng = np.random.default_rng(8)
    texts = {
        ("a", "d0"): "alpha alpha beta",
        ("a", "d1"): "alpha gamma gamma gamma delta",
        ("a", "d2"): "beta beta",
        ("a", "d3"): "delta epsilon zeta eta theta",
        ("b", "d4"): "alpha omega omega omega omega",
    }
    # embed_text is "<doc>\n<text>": the document id is a token too
    tokens = {doc: [doc, *text.split()] for (_, doc), text in texts.items()}
    avg_len = sum(len(t) for t in tokens.values()) / len(tokens)
    expected = _okapi(tokens, {"alpha", "beta"})

    async def scenario(index: Index) -> None:
        await index.upsert(
            [
                indexed(make_chunk(tenant, doc, 0, text), unit(rng)[0])
                for (tenant, doc), text in texts.items()
            ]
        )
        hits = await search(index, query(unit(rng)[0], "Alpha, beta! alpha", dense=False))
        got = {h.doc_id: h.bm25 for h in hits}
        assert set(got) == {"d0", "d1", "d2"}  # tenant b's d4 counts, but is not returned
        for doc, score in got.items():
            assert score == pytest.approx(expected[doc], rel=1e-4)

    play(scenario, bm25_avg_len=avg_len)


def test_stemming_and_stop_words(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(2)

    async def scenario(index: Index) -> None:
        await index.upsert(
            [indexed(make_chunk("a", "runner", 0, "The runners were running café"), unit(rng)[0])]
        )
        hits = await search(index, query(unit(rng)[0], "the run", dense=False))
        assert [h.doc_id for h in hits] == ["runner"]
        assert [
            h.doc_id for h in await search(index, query(unit(rng)[0], "cafe", dense=False))
        ] == ["runner"]  # ASCII folding
        assert await search(index, query(unit(rng)[0], "the were", dense=False)) == []
        # nothing but stop words: the dense side still answers, with no BM25 score
        hybrid = await search(index, query(unit(rng)[0], "the were"))
        assert [h.doc_id for h in hybrid] == ["runner"] and hybrid[0].bm25 is None

    play(scenario)


def test_tenants_never_see_each_other(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(3)
    v = unit(rng)[0]

    async def scenario(index: Index) -> None:
        await index.upsert([indexed(make_chunk("a", "secret", 0, "alpha secret"), v)])
        assert await search(index, query(v, "alpha secret", tenant="b")) == []
        assert [h.doc_id for h in await search(index, query(v, "alpha", tenant="a"))] == ["secret"]
        assert await index.document("b", "secret") is None
        assert (await index.stats("b")).points == 0
        assert await index.delete_document("b", "secret") == 0
        assert (await index.stats("a")).points == 1

    play(scenario)


def test_filters(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 5)
    meta = [
        {"year": 2000, "kind": "x", "weight": 0.5},
        {"year": 2010, "kind": "y", "weight": 1.5},
        {"year": 2020, "kind": "x", "tags": ["p", "q"], "weight": 2.0},
        {"year": 2030, "kind": "z", "flag": True},
        {"year": 2040, "kind": "z", "flag": False},
    ]

    async def scenario(index: Index) -> None:
        await index.upsert(
            [
                indexed(make_chunk("a", f"d{i}", 0, "echo", metadata=meta[i]), vectors[i])
                for i in range(5)
            ]
        )

        async def ids(*filters: FieldFilter, dense: bool = True) -> set[str]:
            q = query(vectors[0], "echo", filters=list(filters), dense=dense)
            return {h.doc_id for h in await search(index, q)}

        for dense in (True, False):  # filters bind both retrievers
            assert await ids(FieldFilter(key="kind", equals="x"), dense=dense) == {"d0", "d2"}
        assert await ids(FieldFilter(key="kind", any_of=["y", "z"])) == {"d1", "d3", "d4"}
        assert await ids(FieldFilter(key="year", any_of=[2000, 2040])) == {"d0", "d4"}
        assert await ids(FieldFilter(key="year", gte=2010, lt=2030)) == {"d1", "d2"}
        assert await ids(FieldFilter(key="year", gt=2010, lte=2030)) == {"d2", "d3"}
        assert await ids(FieldFilter(key="year", equals=2020)) == {"d2"}
        assert await ids(FieldFilter(key="year", equals=2020.0)) == {"d2"}
        assert await ids(FieldFilter(key="weight", equals=1.5)) == {"d1"}
        assert await ids(FieldFilter(key="tags", equals="q")) == {"d2"}
        assert await ids(FieldFilter(key="kind", equals="x"), FieldFilter(key="year", gt=2000)) == {
            "d2"
        }
        assert await ids(FieldFilter(key="missing", equals="x")) == set()

    play(scenario)


def test_numbers_beyond_int64_are_compared_as_floats(play: Callable[..., None]) -> None:
    """Qdrant matches integers as int64: an equality on a larger number, or on its whole
    float, must become a range on the float the payload holds, on both adapters (the guard
    once existed in one only, and the other found nothing)."""
    rng = np.random.default_rng(13)
    vectors = unit(rng, 3)
    values = {"big": 1e19, "negative": -1e19, "small": 5}

    async def scenario(index: Index) -> None:
        await index.upsert(
            [
                indexed(make_chunk("a", doc, 0, "papa", metadata={"n": n}), vectors[i])
                for i, (doc, n) in enumerate(values.items())
            ]
        )

        async def ids(equals: float) -> list[str]:
            q = query(vectors[0], "papa", filters=[FieldFilter(key="n", equals=equals)])
            return [h.doc_id for h in await search(index, q)]

        assert await ids(10**19) == ["big"]
        assert await ids(1e19) == ["big"]
        assert await ids(-(10**19)) == ["negative"]
        assert await ids(2**63) == []
        assert await ids(5) == await ids(5.0) == ["small"]

    play(scenario)


def test_boolean_filters(play: Callable[..., None]) -> None:
    """A boolean matches only booleans, on both adapters: qdrant-edge-py 0.9 turns a Python
    bool into the integer 1 or 0, which matches no boolean payload value (the Edge adapter
    works around it), and neither adapter may let `true` match the integer 1."""
    rng = np.random.default_rng(10)
    flags: list[bool | int | list[bool]] = [True, False, 1, 0, [False, True]]
    vectors = unit(rng, len(flags))

    async def scenario(index: Index) -> None:
        await index.upsert(
            [
                indexed(make_chunk("a", f"d{i}", 0, "kilo", metadata={"flag": flag}), vectors[i])
                for i, flag in enumerate(flags)
            ]
        )

        async def ids(value: bool | int) -> set[str]:
            q = query(vectors[0], "kilo", filters=[FieldFilter(key="flag", equals=value)])
            return {h.doc_id for h in await search(index, q)}

        assert await ids(True) == {"d0", "d4"}
        assert await ids(False) == {"d1", "d4"}
        assert await ids(1) == {"d2"}
        assert await ids(0) == {"d3"}

    play(scenario)


def test_versions_replace_and_delete(play: Callable[..., None]) -> None:
    """Points carry the event that wrote them; deletes pick them by event order (numeric
    stream-id order: "9-9" is older than "10-0"), by event, or all of a document."""
    rng = np.random.default_rng(5)

    def version(event_id: str, texts: list[str], doc: str = "doc") -> list[IndexedChunk]:
        return [
            indexed(
                make_chunk("a", doc, i, text, version=f"v{event_id}", event_id=event_id),
                unit(rng)[0],
            )
            for i, text in enumerate(texts)
        ]

    legacy = version("", ["legacy part"])  # written before points carried their event
    old = version("9-9", ["old part 0", "old part 1", "old part 2"])
    new = version("10-0", ["new text"])
    loser = version("9-10", ["stale text"])  # an older event, written after the newer one
    other = version("9-9", ["old part"], doc="other")

    async def scenario(index: Index) -> None:
        await index.upsert(legacy + old + other)
        state = await index.document("a", "doc")
        assert state is not None and state.chunks == 4

        await index.upsert(new)  # its own points: the old version's stay until swept
        assert (await index.stats("a")).points == 6
        await index.upsert(loser)
        assert await index.delete_document("a", "doc", older_than="10-0") == 5
        state = await index.document("a", "doc")
        assert state is not None and (state.version, state.chunks) == ("v10-0", 1)
        hits = await search(index, query(new[0].vector, "old part", limit=10))
        assert {(h.doc_id, h.text) for h in hits} == {("doc", "new text"), ("other", "old part")}
        # sweeping again below the live event deletes nothing
        assert await index.delete_document("a", "doc", older_than="10-0") == 0

        await index.upsert(loser)
        assert await index.delete_document("a", "doc", written_by="9-10") == 1
        assert await index.delete_document("a", "doc", written_by="9-10") == 0
        assert (await index.stats("a")).points == 2

        assert await index.delete_document("a", "doc") == 1
        assert await index.document("a", "doc") is None
        assert await index.delete_document("a", "doc") == 0
        assert await index.document("a", "other") is not None

    play(scenario)


def test_hydrate_vectors_and_signatures(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 2)
    items = [
        indexed(
            make_chunk(
                "a", "sig", i, f"golf {i}", metadata={"year": 1999}, section=["Intro", "Scope"]
            ),
            vectors[i],
        )
        for i in range(2)
    ]
    missing = chunk_id("a", "missing", 0)

    async def scenario(index: Index) -> None:
        await index.upsert(items)
        hits = [Hit(chunk_id=items[1].chunk.chunk_id, dense=0.0, bm25=None)]
        await index.hydrate(hits)
        h = hits[0]
        assert (h.doc_id, h.chunk_index, h.title, h.text, h.section, h.metadata) == (
            "sig",
            1,
            "Sig",
            "golf 1",
            ["Intro", "Scope"],
            {"year": 1999},
        )
        got = await index.token_signatures([items[0].chunk.chunk_id, missing])
        assert got == {items[0].chunk.chunk_id: items[0].token_signature}
        vecs = await index.vectors([items[1].chunk.chunk_id, missing])
        assert set(vecs) == {items[1].chunk.chunk_id}
        assert vecs[items[1].chunk.chunk_id].dtype == np.float32
        assert np.allclose(vecs[items[1].chunk.chunk_id], vectors[1], atol=1e-6)

    play(scenario)


def test_a_documents_chunks_read_back_in_write_order(play: Callable[..., None]) -> None:
    """What GET /api/v1/documents/{id}?include=chunks shows: every point of the document and
    no other's, oldest event first (numeric id order), each by position, without vectors,
    across more than one scroll page."""
    rng = np.random.default_rng(12)
    new = [
        indexed(
            make_chunk(
                "a", "doc/1", i, f"part {i}", version="v2", event_id="10-0", section=["Top"]
            ),
            unit(rng)[0],
        )
        for i in reversed(range(300))
    ]
    old = [indexed(make_chunk("a", "doc/1", 0, "was", event_id="9-9"), unit(rng)[0])]
    others = [
        indexed(make_chunk("b", "doc/1", 0, "other tenant"), unit(rng)[0]),
        indexed(make_chunk("a", "doc/10", 0, "other doc"), unit(rng)[0]),
    ]

    async def scenario(index: Index) -> None:
        assert await index.chunks("a", "doc/1") == []
        await index.upsert(new + old + others)
        chunks = await index.chunks("a", "doc/1")
        assert [(c.event_id, c.chunk_index) for c in chunks] == [("9-9", 0)] + [
            ("10-0", i) for i in range(300)
        ]
        first = chunks[1]
        assert first.chunk_id == new[-1].chunk.chunk_id
        assert (first.version, first.title, first.section, first.text) == (
            "v2",
            "Doc/1",
            ["Top"],
            "part 0",
        )
        assert first.embed_text == "doc/1\npart 0"
        assert first.metadata == {}

    play(scenario)


def test_stats_count_points_and_documents(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(7)
    items = [
        indexed(make_chunk(tenant, f"d{d}", i, "hotel"), unit(rng)[0])
        for tenant, docs in (("a", 3), ("b", 1))
        for d in range(docs)
        for i in range(2)
    ]

    async def scenario(index: Index) -> None:
        assert await index.ready()
        empty = await index.stats()
        assert (empty.points, empty.documents) == (0, 0)
        await index.upsert(items)
        a, everything = await index.stats("a"), await index.stats()
        assert (a.points, a.documents) == (6, 3)
        assert (everything.points, everything.documents) == (8, 4)
        assert everything.segments >= 0 and everything.indexed_vectors >= 0

    play(scenario)


def test_a_closed_index_is_unavailable(play: Callable[..., None]) -> None:
    rng = np.random.default_rng(9)

    async def scenario(index: Index) -> None:
        await index.upsert([indexed(make_chunk("a", "x", 0, "india"), unit(rng)[0])])
        index.close()
        assert await index.ready() is False
        with pytest.raises(DependencyUnavailable):
            await index.stats()
        with pytest.raises(DependencyUnavailable):
            await index.retrieve(query(unit(rng)[0], "india"))

    play(scenario)
