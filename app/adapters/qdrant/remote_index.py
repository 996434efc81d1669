"""VectorIndex on a Qdrant cluster (or qdrant-client's local mode) through AsyncQdrantClient."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from app.adapters.qdrant.filters import (
    Condition,
    Match,
    MatchAny,
    Range,
    document_conditions,
    search_conditions,
    tenant_scope,
)
from app.adapters.qdrant.payload import (
    DENSE,
    HEAVY_FIELDS,
    SIGNATURE,
    dense_of,
    doomed_points,
    fill_hits,
    in_write_order,
    payload_of,
    signatures_of,
    stored_chunk,
)
from app.adapters.qdrant.remote_collection import (
    SPARSE,
    alias_name,
    create_collection,
    generation_name,
    is_not_found,
    point_alias,
)
from app.adapters.qdrant.sparse_bm25 import DEFAULT_AVG_LEN, SparseBm25
from app.domain.records import (
    DocumentState,
    Hit,
    IndexedChunk,
    IndexQuery,
    IndexStats,
    StoredChunk,
    Vector,
)
from app.errors import DependencyUnavailable, RagError, SettingsError
from app.telemetry.schema import QDRANT_DELETE, QDRANT_FETCH, QDRANT_RETRIEVE, QDRANT_UPSERT
from app.telemetry.tracing import client_span

log = logging.getLogger(__name__)
T = TypeVar("T")


class QdrantIndex:
    """Chunks of every tenant in one collection, reached through the alias `alias_name(...)`.

    The alias points at one generation collection (`<alias>--g<µs>`); a replay builds a new
    generation beside it and writes through `on_collection`, then the catalog
    (remote_catalog.py) moves the alias. The alias and its first generation are created on
    first use, so a cluster that is down at start-up only makes the index unready.
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        model_id: str,
        dim: int,
        prefix: str = "rag_",
        metadata_indexes: dict[str, str] | None = None,
        timeout_seconds: float = 5.0,
        bm25_avg_len: float = DEFAULT_AVG_LEN,
        collection: str | None = None,
        owns_client: bool = True,
    ) -> None:
        self.client = client
        self.model_id = model_id
        self.dim = dim
        self.alias = alias_name(prefix, model_id)
        # What reads and writes address: the alias, or one generation (replay's writer).
        self.target = collection or self.alias
        self.metadata_indexes = dict(metadata_indexes or {})
        self.timeout_seconds = timeout_seconds
        self._default_avg_len = bm25_avg_len
        self._bm25: SparseBm25 | None = None
        self._ensure_lock = asyncio.Lock()
        self._owns_client = owns_client
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        api_key: str = "",
        pool_size: int = 10,
        timeout_seconds: int = 5,
        prefer_grpc: bool = False,
        **kwargs: Any,
    ) -> QdrantIndex:
        """An index over a new client for `url` (`:memory:` for local mode); connects nothing."""
        if url == ":memory:":
            client = AsyncQdrantClient(location=":memory:")
        else:
            client = AsyncQdrantClient(
                url=url,
                api_key=api_key or None,
                pool_size=pool_size,
                timeout=timeout_seconds,
                prefer_grpc=prefer_grpc,
                # The check is a blocking request at construction; ready() asks instead.
                check_compatibility=False,
            )
        return cls(client, timeout_seconds=timeout_seconds, **kwargs)

    def on_collection(self, collection: str) -> QdrantIndex:
        """The same index addressing one generation directly (sharing this client)."""
        view = QdrantIndex(
            self.client,
            model_id=self.model_id,
            dim=self.dim,
            metadata_indexes=self.metadata_indexes,
            timeout_seconds=self.timeout_seconds,
            bm25_avg_len=self._default_avg_len,
            collection=collection,
            owns_client=False,
        )
        view.alias = self.alias
        return view

    async def _ensure(self) -> SparseBm25:
        """Create the alias and its first generation if missing; read the collection's BM25
        length normalisation. Done once; retried on the next call after a failure."""
        if self._bm25 is not None:
            return self._bm25
        async with self._ensure_lock:
            if self._bm25 is not None:
                return self._bm25
            try:
                info = await self.client.get_collection(self.target)
            except Exception as exc:
                if not is_not_found(exc) or self.target != self.alias:
                    raise
                collection = generation_name(self.alias)
                await self.create_collection(collection)
                await point_alias(self.client, self.alias, collection, replacing=False)
                log.info("created %s behind the alias %s", collection, self.alias)
                info = await self.client.get_collection(self.alias)
            meta = info.config.metadata or {}
            dense = info.config.params.vectors
            size = dense[DENSE].size if isinstance(dense, dict) and DENSE in dense else None
            if size != self.dim:
                raise SettingsError(
                    f"the Qdrant collection {self.target} holds {size}-dimensional vectors "
                    f"under {DENSE!r}, not {self.dim} ({self.model_id}): it was built by "
                    "another embedder"
                )
            self._bm25 = SparseBm25(float(meta.get("bm25_avg_len", self._default_avg_len)))
            return self._bm25

    async def create_collection(self, name: str, bm25_avg_len: float | None = None) -> None:
        """An empty collection with this index's schema; BM25 normalised by `bm25_avg_len`
        (by default this index's)."""
        await create_collection(
            self.client,
            name,
            model_id=self.model_id,
            dim=self.dim,
            metadata_indexes=self.metadata_indexes,
            bm25_avg_len=self._default_avg_len if bm25_avg_len is None else bm25_avg_len,
        )

    def forget_collection_metadata(self) -> None:
        """Read the collection's metadata again at the next call: after the alias moved to
        another generation, whose BM25 length normalisation may differ (a replay's measured
        mean). Only this process learns of it: see docs/design.md, "Replay"."""
        self._bm25 = None

    # --- writes -------------------------------------------------------------------------

    @client_span(QDRANT_UPSERT, "qdrant", "upsert")
    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return

        async def write() -> None:
            bm25 = await self._ensure()
            points = [_to_point(item, bm25) for item in chunks]
            await self.client.upsert(self.target, points, wait=True)

        await self.call(write)

    @client_span(QDRANT_DELETE, "qdrant", "delete")
    async def delete_document(
        self,
        tenant: str,
        doc_id: str,
        *,
        older_than: str | None = None,
        written_by: str | None = None,
    ) -> int:
        flt = client_filter(document_conditions(tenant, doc_id))

        async def delete() -> int:
            await self._ensure()
            if older_than is None and written_by is None:
                # Counted, then deleted by the same filter: with several writers the count
                # is what matched a moment before.
                count = await self.client.count(self.target, count_filter=flt, exact=True)
                if count.count:
                    await self.client.delete(
                        self.target, points_selector=qm.FilterSelector(filter=flt), wait=True
                    )
                return int(count.count)
            # Only the event that wrote each point is needed to choose.
            written = self._scroll(flt, limit=1_000, with_payload=["event_id"], with_vectors=False)
            ids = doomed_points(
                [(r.id, r.payload) async for r in written],
                older_than=older_than,
                written_by=written_by,
            )
            if ids:
                await self.client.delete(
                    self.target,
                    points_selector=qm.PointIdsList(points=ids),  # type: ignore[arg-type]
                    wait=True,
                )
            return len(ids)

        return await self.call(delete)

    async def _scroll(self, flt: qm.Filter | None, **request: Any) -> AsyncIterator[qm.Record]:
        """Every point `flt` matches, page by page; `request`: page size and what to return."""
        offset: Any = None
        while True:
            records, offset = await self.client.scroll(
                self.target, scroll_filter=flt, offset=offset, **request
            )
            for record in records:
                yield record
            if offset is None:
                return

    # --- reads --------------------------------------------------------------------------

    @client_span(QDRANT_FETCH, "qdrant", "count")
    async def document(self, tenant: str, doc_id: str) -> DocumentState | None:
        flt = client_filter(document_conditions(tenant, doc_id))

        async def read() -> DocumentState | None:
            await self._ensure()
            records, _ = await self.client.scroll(
                self.target, scroll_filter=flt, limit=1, with_payload=["version"]
            )
            if not records:
                return None
            version = str((records[0].payload or {})["version"])
            chunks = (await self.client.count(self.target, count_filter=flt, exact=True)).count
            return DocumentState(doc_id=doc_id, version=version, chunks=int(chunks))

        return await self.call(read)

    @client_span(QDRANT_FETCH, "qdrant", "scroll")
    async def chunks(self, tenant: str, doc_id: str) -> list[StoredChunk]:
        flt = client_filter(document_conditions(tenant, doc_id))

        async def read() -> list[StoredChunk]:
            await self._ensure()
            points = self._scroll(
                flt, limit=256, with_payload=qm.PayloadSelectorExclude(exclude=[SIGNATURE])
            )
            return in_write_order([stored_chunk(r.id, r.payload) async for r in points])

        return await self.call(read)

    @client_span(QDRANT_RETRIEVE, "qdrant", "query")
    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        return await self.call(self._retrieve, query)

    async def _retrieve(self, query: IndexQuery) -> list[Hit]:
        bm25 = await self._ensure()
        flt = client_filter(search_conditions(query.tenant, query.filters))
        dense = query.vector.tolist()
        sparse: qm.SparseVector | None = None
        if query.bm25:
            indices, values = bm25.query(query.text)
            sparse = qm.SparseVector(indices=indices, values=values) if indices else None
        prefetch: list[qm.Prefetch] = []
        if query.dense:
            prefetch.append(qm.Prefetch(query=dense, using=DENSE, filter=flt, limit=query.limit))
        if sparse is not None:
            prefetch.append(qm.Prefetch(query=sparse, using=SPARSE, filter=flt, limit=query.limit))
        if not prefetch:
            return []  # BM25 only, and no query term survived the tokenizer
        if sparse is None:
            requests = [qm.QueryRequest(query=dense, using=DENSE, filter=flt, limit=query.limit)]
        else:
            # Both retrievers' candidates, rescored by each: the dense rescoring gives every
            # candidate its exact cosine, the sparse one gives BM25 to every candidate that
            # holds a query term, so fusion never has to guess (as in the Edge adapter).
            union = query.limit * len(prefetch)
            requests = [
                qm.QueryRequest(prefetch=prefetch, query=dense, using=DENSE, limit=union),
                qm.QueryRequest(prefetch=prefetch, query=sparse, using=SPARSE, limit=union),
            ]
        results = await self.client.query_batch_points(self.target, requests)
        hits: dict[str, Hit] = {}
        for point in results[0].points:
            key = str(point.id)
            hits[key] = Hit(chunk_id=key, dense=float(point.score), bm25=None)
        if sparse is not None:
            for point in results[1].points:
                key = str(point.id)
                hit = hits.setdefault(key, Hit(chunk_id=key, dense=-1.0, bm25=None))
                hit.bm25 = float(point.score)
        return list(hits.values())

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def hydrate(self, hits: Sequence[Hit]) -> None:
        if not hits:
            return

        async def read() -> None:
            await self._ensure()
            records = await self.client.retrieve(
                self.target,
                [h.chunk_id for h in hits],
                with_payload=qm.PayloadSelectorExclude(exclude=HEAVY_FIELDS),
                with_vectors=False,
            )
            fill_hits(hits, {str(r.id): r.payload or {} for r in records})

        await self.call(read)

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        async def read() -> dict[str, Vector]:
            await self._ensure()
            records = await self.client.retrieve(
                self.target, list(chunk_ids), with_payload=False, with_vectors=[DENSE]
            )
            return {str(r.id): dense_of(r.vector) for r in records}

        return await self.call(read)

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        async def read() -> dict[str, bytes]:
            await self._ensure()
            records = await self.client.retrieve(
                self.target, list(chunk_ids), with_payload=[SIGNATURE], with_vectors=False
            )
            return signatures_of((r.id, r.payload) for r in records)

        return await self.call(read)

    async def stats(self, tenant: str | None = None) -> IndexStats:
        async def read() -> IndexStats:
            await self._ensure()
            scope = tenant_scope(tenant)
            points = await self.client.count(
                self.target, count_filter=client_filter(scope), exact=True
            )
            first_chunks = client_filter([*scope, Match("chunk_index", 0)])
            documents = await self.client.count(self.target, count_filter=first_chunks, exact=True)
            info = await self.client.get_collection(self.target)
            return IndexStats(
                points=int(points.count),
                documents=int(documents.count),
                indexed_vectors=int(info.indexed_vectors_count or 0),
                segments=int(info.segments_count or 0),
            )

        return await self.call(read)

    async def all_points(
        self, tenant: str | None = None
    ) -> list[tuple[str, dict[str, Any], list[float]]]:
        """Every point as (id, payload, dense vector): for replay checks and exports."""

        async def read() -> list[tuple[str, dict[str, Any], list[float]]]:
            await self._ensure()
            flt = client_filter(tenant_scope(tenant)) if tenant is not None else None
            points = self._scroll(flt, limit=512, with_payload=True, with_vectors=[DENSE])
            return [
                (str(r.id), dict(r.payload or {}), dense_of(r.vector).tolist())
                async for r in points
            ]

        return await self.call(read)

    async def ready(self) -> bool:
        try:
            await self.call(self._ensure)
        except RagError:
            return False
        return True

    async def aclose(self) -> None:
        """Close the client (its connections belong to the event loop that used them)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self.client.close()

    def close(self) -> None:
        # The port's close is synchronous; the client's connections can only be closed on
        # their own loop, which `aclose` does. Marking closed makes every later call fail.
        self._closed = True

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run a client call within the timeout; its failures become DependencyUnavailable
        (the catalog's calls go through here too)."""
        if self._closed:
            raise DependencyUnavailable("the index is closed")
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await fn(*args, **kwargs)
        except RagError:
            raise
        except TimeoutError as exc:
            raise DependencyUnavailable(
                f"Qdrant did not answer within {self.timeout_seconds:g}s", retry_after=1.0
            ) from exc
        except UnexpectedResponse as exc:
            raise DependencyUnavailable(
                f"Qdrant answered {exc.status_code}: {exc.reason_phrase}",
                retry_after=_retry_after(exc),
            ) from exc
        except Exception as exc:  # httpx, grpc and local-mode errors alike
            raise DependencyUnavailable(f"Qdrant call failed: {exc!r}", retry_after=1.0) from exc


def _retry_after(exc: UnexpectedResponse) -> float:
    header = exc.headers.get("retry-after") if exc.headers else None
    try:
        return max(0.0, float(header)) if header else 1.0
    except ValueError:
        return 1.0


def client_filter(conditions: Sequence[Condition]) -> qm.Filter:
    """The conditions (app/adapters/qdrant/filters.py) as qdrant-client's filter: all must hold."""
    return qm.Filter(must=[_client_condition(c) for c in conditions])


def _client_condition(condition: Condition) -> qm.FieldCondition:
    match condition:
        case Match(key, value):
            return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))
        case MatchAny(key, values):
            return qm.FieldCondition(key=key, match=qm.MatchAny(any=values))
        case Range(key, gte, gt, lte, lt):
            return qm.FieldCondition(key=key, range=qm.Range(gte=gte, gt=gt, lte=lte, lt=lt))


def _to_point(item: IndexedChunk, bm25: SparseBm25) -> qm.PointStruct:
    chunk = item.chunk
    payload = payload_of(item)
    vector: dict[str, Any] = {DENSE: item.vector.tolist()}
    indices, values = bm25.document(chunk.embed_text)
    # A text with no token left is no BM25 document at all (nor is it in Edge's text index),
    # so it must not count in the IDF's document total either.
    if indices:
        vector[SPARSE] = qm.SparseVector(indices=indices, values=values)
    return qm.PointStruct(id=chunk.chunk_id, vector=vector, payload=payload)
