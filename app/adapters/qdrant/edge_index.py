"""VectorIndex on Qdrant Edge: the Qdrant engine in process, one shard per embedding model."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from app.adapters.qdrant.edge_shard import OPTIMIZE_AFTER_UNINDEXED, open_shard
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
    SEARCH_TEXT,
    SIGNATURE,
    dense_of,
    doomed_points,
    fill_hits,
    in_write_order,
    payload_of,
    signatures_of,
    stored_chunk,
)
from app.adapters.qdrant.sparse_bm25 import BM25_B, BM25_K
from app.domain.records import (
    DocumentState,
    Hit,
    IndexedChunk,
    IndexQuery,
    IndexStats,
    StoredChunk,
    Vector,
)
from app.errors import DependencyUnavailable, RagError
from app.telemetry.schema import QDRANT_DELETE, QDRANT_FETCH, QDRANT_RETRIEVE, QDRANT_UPSERT
from app.telemetry.tracing import client_span

log = logging.getLogger(__name__)
T = TypeVar("T")

# Points per engine call when writing: the engine holds the GIL through each call, so a big
# batch in one call would stop the serving process's event loop for as long (~0.2 s for 512
# SciFact chunks); between two slices the loop gets its turn.
WRITE_SLICE = 64

# A write made after copy_to(), to be made on the copy too: (method name, args, kwargs).
Write = tuple[str, tuple[Any, ...], dict[str, Any]]


class EdgeIndex:
    """Chunks of every tenant in one Edge shard under `<data_dir>/index/<model_id>`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        model_id: str,
        dim: int,
        metadata_indexes: dict[str, str] | None = None,
        search_threads: int | None = None,
        path: Path | None = None,
        building: bool = False,
    ) -> None:
        # `path` places the shard elsewhere: a generation of app/adapters/qdrant/edge_catalog.py.
        self.path = path if path is not None else data_dir / "index" / model_id
        self.dim = dim
        # A generation being built (app/adapters/qdrant/edge_builder.py) is read by no one and is
        # discarded if its process dies, so it needs durability, and HNSW, only once it is
        # finished: writes skip the flush and the optimizer waits for optimize() and close().
        self.building = building
        self._write_lock = threading.Lock()
        # Operations running in threads; close() waits for them, so a generation being
        # dropped after a swap lets the searches already on it finish.
        self._busy = 0
        self._idle = threading.Condition()
        self._optimizing = threading.Lock()
        self._unindexed = 0
        self._closed = False
        # Set by the catalog: asked (on the event loop) once enough points wait for HNSW,
        # instead of building it here (app/adapters/qdrant/edge_catalog.py says why).
        self.on_unindexed: Callable[[], None] | None = None
        # Writes since copy_to(), while the copy is optimized elsewhere.
        self._mirror: list[Write] | None = None
        # Once handed over, writes that were waiting for the lock go to the successor.
        self._successor: EdgeIndex | None = None
        try:
            self._shard = open_shard(
                self.path,
                dim=dim,
                metadata_indexes=metadata_indexes or {},
                search_threads=search_threads,
            )
        except RagError:
            raise
        except Exception as exc:  # the binding raises plain exceptions for engine errors
            raise DependencyUnavailable(f"cannot open the index at {self.path}: {exc}") from exc

    # --- writes -------------------------------------------------------------------------

    @client_span(QDRANT_UPSERT, "qdrant", "upsert")
    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        if chunks:
            await self._run(self._upsert, chunks)
            if self.on_unindexed is not None and self._unindexed >= OPTIMIZE_AFTER_UNINDEXED:
                self.on_unindexed()

    def _upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        points = [_to_point(item) for item in chunks]
        with self._write_lock:
            if self._successor is not None:
                self._successor._upsert(chunks)
                return
            for start in range(0, len(points), WRITE_SLICE):
                batch = points[start : start + WRITE_SLICE]
                self._shard.update(qe.UpdateOperation.upsert_points(batch))
            if not self.building:
                self._sync_wal()
            if self._mirror is not None:
                self._mirror.append(("upsert", (list(chunks),), {}))
            self._unindexed += len(points)
        if self.on_unindexed is None:
            self._maybe_optimize()

    @client_span(QDRANT_DELETE, "qdrant", "delete")
    async def delete_document(
        self,
        tenant: str,
        doc_id: str,
        *,
        older_than: str | None = None,
        written_by: str | None = None,
    ) -> int:
        return await self._run(self._delete_document, tenant, doc_id, older_than, written_by)

    def _delete_document(
        self, tenant: str, doc_id: str, older_than: str | None, written_by: str | None
    ) -> int:
        flt = edge_filter(document_conditions(tenant, doc_id))
        with self._write_lock:
            if self._successor is not None:
                return self._successor._delete_document(tenant, doc_id, older_than, written_by)
            if self._mirror is not None:
                self._mirror.append(
                    (
                        "delete_document",
                        (tenant, doc_id),
                        {"older_than": older_than, "written_by": written_by},
                    )
                )
            if older_than is None and written_by is None:
                doomed = int(self._shard.count(qe.CountRequest(filter=flt, exact=True)))
                if doomed:
                    self._shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
            else:
                # Only the event that wrote each point is needed to choose.
                written = self._scroll(
                    flt, limit=1_000, with_payload=qe.PayloadSelector.Include(["event_id"])
                )
                ids = doomed_points(
                    ((r.id, r.payload) for r in written),
                    older_than=older_than,
                    written_by=written_by,
                )
                doomed = len(ids)
                if ids:
                    self._shard.update(qe.UpdateOperation.delete_points(ids))  # type: ignore[arg-type]
            if doomed and not self.building:
                self._sync_wal()
            # Deleted points also wait for the optimizer (which vacuums them), and the WAL
            # for a flush: both come with the next optimize (app/adapters/qdrant/edge_catalog.py).
            self._unindexed += doomed
        return doomed

    def _sync_wal(self) -> None:
        """Make the writes so far survive a machine crash, as "durable when acknowledged"
        promises: fsync the WAL's files, from which the engine replays at open whatever its
        segments had not flushed (a process crash needs nothing: the page cache survives it).

        Not the engine's flush(): it holds the GIL through its msync of every segment,
        20-230 ms measured on a SciFact shard and seconds under disk contention, during
        which the serving process answers nothing. os.fsync releases the GIL."""
        wal = self.path / "wal"
        for name in [*os.listdir(wal), "."]:
            fd = os.open(wal / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _scroll(self, flt: qe.Filter | None, **request: Any) -> Iterator[Any]:
        """Every point `flt` matches, page by page; `request`: page size and what to return."""
        offset: Any = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, filter=flt, **request)
            )
            yield from records
            if offset is None:
                return

    def _maybe_optimize(self) -> None:
        # HNSW is built by the optimizer, which Edge runs only when asked; do it off the
        # write path once enough points wait, and never two at a time.
        if (
            self.building
            or self._unindexed < OPTIMIZE_AFTER_UNINDEXED
            or not self._optimizing.acquire(False)
        ):
            return
        self._unindexed = 0

        def optimize() -> None:
            try:
                started = time.perf_counter()
                if not self._closed:
                    self._shard.optimize()
                log.info("index optimized in %.2fs", time.perf_counter() - started)
            except Exception:
                log.exception("index optimization failed; search still works on plain segments")
            finally:
                self._optimizing.release()

        threading.Thread(target=optimize, name="edge-optimizer", daemon=True).start()

    # --- optimizing elsewhere (app/adapters/qdrant/edge_catalog.py) ---------------------

    def copy_to(self, path: Path) -> None:
        """Copy the shard to `path` and keep every later write for the copy.

        Not flushed first (flush holds the GIL, see _sync_wal): with writes held, the files
        are what a crash would leave, and the engine opening the copy replays its WAL."""
        with self._write_lock:
            shutil.copytree(self.path, path)
            self._mirror = []

    def writes_since_copy(self) -> list[Write]:
        """The writes kept since copy_to() or the last call, in order; none are kept after."""
        with self._write_lock:
            writes = self._mirror or []
            if self._mirror is not None:
                self._mirror = []
            return writes

    def hand_over(self, successor: Callable[[list[Write]], EdgeIndex]) -> EdgeIndex:
        """Stop writes, have `successor` make the last kept writes and open the index that
        replaces this one, then send it every write that was waiting here.

        If `successor` raises, nothing changes here (but the mirror stops)."""
        with self._write_lock:
            writes, self._mirror = self._mirror or [], None
            self._successor = successor(writes)
            self._unindexed = 0
            return self._successor

    def stop_copying(self) -> None:
        """Keep no more writes (the copy was abandoned)."""
        with self._write_lock:
            self._mirror = None

    async def optimize(self) -> None:
        """Build HNSW for everything written so far (blocking the caller, not the loop)."""

        def run() -> None:
            with self._optimizing:
                self._shard.optimize()
                self._unindexed = 0

        await self._run(run)

    # --- reads --------------------------------------------------------------------------

    @client_span(QDRANT_FETCH, "qdrant", "count")
    async def document(self, tenant: str, doc_id: str) -> DocumentState | None:
        return await self._run(self._document, tenant, doc_id)

    def _document(self, tenant: str, doc_id: str) -> DocumentState | None:
        flt = edge_filter(document_conditions(tenant, doc_id))
        records, _ = self._shard.scroll(
            qe.ScrollRequest(
                limit=1, filter=flt, with_payload=qe.PayloadSelector.Include(["version"])
            )
        )
        if not records:
            return None
        version = str((records[0].payload or {})["version"])
        chunks = self._shard.count(qe.CountRequest(filter=flt, exact=True))
        return DocumentState(doc_id=doc_id, version=version, chunks=int(chunks))

    @client_span(QDRANT_FETCH, "qdrant", "scroll")
    async def chunks(self, tenant: str, doc_id: str) -> list[StoredChunk]:
        return await self._run(self._chunks, tenant, doc_id)

    def _chunks(self, tenant: str, doc_id: str) -> list[StoredChunk]:
        points = self._scroll(
            edge_filter(document_conditions(tenant, doc_id)),
            limit=256,
            with_payload=qe.PayloadSelector.Exclude([SIGNATURE]),
            with_vector=False,
        )
        return in_write_order(stored_chunk(r.id, r.payload) for r in points)

    @client_span(QDRANT_RETRIEVE, "qdrant", "query")
    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        return await self._run(self._retrieve, query)

    def _retrieve(self, query: IndexQuery) -> list[Hit]:
        flt = edge_filter(search_conditions(query.tenant, query.filters))
        requests = []
        if query.dense:
            requests.append(self._dense_request(query, flt, query.limit))
        if query.bm25:
            requests.append(self._bm25_request(query, flt, query.limit))
        # Each point's id is read once: the binding builds a new uuid.UUID at every read,
        # ~3 µs with its str(), which ~100 reads a search made a visible share of its CPU.
        scored = [
            _ids_and_scores(result)
            for result in self._shard.query_batch(qe.QueryBatchRequest(requests))
        ]
        hits: dict[str, Hit] = {}
        for result in scored:
            for key, _ in result:
                if key not in hits:
                    hits[key] = Hit(chunk_id=key, dense=-1.0, bm25=None)
        dense_scored: set[str] = set()
        if query.dense:
            for key, score in scored[0]:
                hits[key].dense = score
                dense_scored.add(key)
        bm25_scored: set[str] = set()
        if query.bm25:
            for key, score in scored[-1]:
                hits[key].bm25 = score
                bm25_scored.add(key)
        # Candidates found by one retriever get their exact score from the other too, by
        # asking it again restricted to exactly those points, so fusion never has to guess.
        # The cosine is always filled in: min_score applies to it in every mode. Both asks
        # go in one engine call.
        fills: list[tuple[str, qe.QueryRequest]] = []
        missing_dense = [key for key in hits if key not in dense_scored]
        if missing_dense:
            fills.append(
                ("dense", self._dense_request(query, _only(missing_dense), len(missing_dense)))
            )
        missing_bm25 = [key for key in hits if key not in bm25_scored] if query.bm25 else []
        if missing_bm25:
            fills.append(
                ("bm25", self._bm25_request(query, _only(missing_bm25), len(missing_bm25)))
            )
        if fills:
            results = self._shard.query_batch(qe.QueryBatchRequest([r for _, r in fills]))
            for (field, _), points in zip(fills, results, strict=True):
                for key, score in _ids_and_scores(points):
                    setattr(hits[key], field, score)
        return list(hits.values())

    @staticmethod
    def _dense_request(query: IndexQuery, flt: qe.Filter, limit: int) -> qe.QueryRequest:
        return qe.QueryRequest(
            query=qe.Query.Nearest(query.vector.tolist(), using=DENSE),
            filter=flt,
            limit=limit,
            with_payload=False,
            with_vector=False,
        )

    @staticmethod
    def _bm25_request(query: IndexQuery, flt: qe.Filter, limit: int) -> qe.QueryRequest:
        return qe.QueryRequest(
            query=qe.TextQuery(SEARCH_TEXT, query.text, qe.Bm25Params(BM25_K, BM25_B)),
            filter=flt,
            limit=limit,
            with_payload=False,
            with_vector=False,
        )

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def hydrate(self, hits: Sequence[Hit]) -> None:
        if hits:
            await self._run(self._hydrate, hits)

    def _hydrate(self, hits: Sequence[Hit]) -> None:
        records = self._shard.retrieve(
            [h.chunk_id for h in hits],
            with_payload=qe.PayloadSelector.Exclude(HEAVY_FIELDS),
            with_vector=False,
        )
        fill_hits(hits, {str(r.id): r.payload or {} for r in records})

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        return await self._run(self._vectors, chunk_ids)

    def _vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        records = self._shard.retrieve(list(chunk_ids), with_payload=False, with_vector=[DENSE])
        return {str(record.id): dense_of(record.vector) for record in records}

    @client_span(QDRANT_FETCH, "qdrant", "retrieve")
    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        return await self._run(self._token_signatures, chunk_ids)

    def _token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        records = self._shard.retrieve(
            list(chunk_ids), with_payload=qe.PayloadSelector.Include([SIGNATURE]), with_vector=False
        )
        return signatures_of((r.id, r.payload) for r in records)

    async def stats(self, tenant: str | None = None) -> IndexStats:
        return await self._run(self._stats, tenant)

    def _stats(self, tenant: str | None) -> IndexStats:
        info = self._shard.info()
        scope = tenant_scope(tenant)
        points = self._shard.count(qe.CountRequest(filter=edge_filter(scope), exact=True))
        first_chunks = edge_filter([*scope, Match("chunk_index", 0)])
        documents = self._shard.count(qe.CountRequest(filter=first_chunks, exact=True))
        return IndexStats(
            points=int(points),
            documents=int(documents),
            indexed_vectors=int(info.indexed_vectors_count),
            segments=int(info.segments_count),
        )

    async def all_points(
        self, tenant: str | None = None
    ) -> list[tuple[str, dict[str, Any], list[float]]]:
        """Every point as (id, payload, dense vector): for replay checks and exports."""
        return await self._run(self._all_points, tenant)

    def _all_points(self, tenant: str | None) -> list[tuple[str, dict[str, Any], list[float]]]:
        flt = edge_filter(tenant_scope(tenant)) if tenant is not None else None
        points = self._scroll(flt, limit=512, with_payload=True, with_vector=[DENSE])
        return [(str(r.id), dict(r.payload or {}), dense_of(r.vector).tolist()) for r in points]

    async def ready(self) -> bool:
        try:
            await self._run(self._shard.info)
        except DependencyUnavailable:
            return False
        return True

    def close(self, drain_seconds: float = 30.0, *, flush: bool = True) -> None:
        """Wait for the operations running, then close; `flush=False` for a shard about to
        be removed (flush holds the GIL, see _sync_wal)."""
        if self._closed:
            return
        with self._idle:
            self._closed = True
            if not self._idle.wait_for(lambda: self._busy == 0, timeout=drain_seconds):
                log.warning("closing the index at %s with operations still running", self.path)
        with self._optimizing, self._write_lock:
            if flush:
                self._shard.flush()
            self._shard.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Counted from here until the engine call returns, so close() (a generation dropped
        # after a swap) lets every operation that started before it finish. The count is
        # taken on the caller's side, and the call shielded from cancellation, because an
        # operation still queued for a thread when close() looks must hold it off too.
        with self._idle:
            if self._closed:
                raise DependencyUnavailable("the index is closed")
            self._busy += 1

        def counted() -> T:
            try:
                return fn(*args)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

        running = asyncio.ensure_future(asyncio.to_thread(counted))
        running.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.shield(running)
        except RagError:
            raise
        except Exception as exc:  # engine errors arrive as plain exceptions from the binding
            raise DependencyUnavailable(f"index operation failed: {exc}") from exc


def _ids_and_scores(points: Sequence[Any]) -> list[tuple[str, float]]:
    return [(str(point.id), float(point.score)) for point in points]


def _only(keys: Sequence[str]) -> qe.Filter:
    """Exactly these points."""
    return qe.Filter(must=[qe.HasIdCondition(set(keys))])


def edge_filter(conditions: Sequence[Condition]) -> qe.Filter:
    """The conditions (app/adapters/qdrant/filters.py) as qdrant-edge's filter: all must hold."""
    return qe.Filter(must=[_edge_condition(c) for c in conditions])


def _edge_condition(condition: Condition) -> qe.FieldCondition:
    match condition:
        case Match(key, bool(value)):
            # qdrant-edge-py 0.9 reads a Python bool as the integer it also is, which matches
            # no boolean payload value; numpy's bool is no int, so it arrives as a boolean.
            flag: Any = np.bool_(value)  # (the binding's stub knows only Python's bool)
            return qe.FieldCondition(key=key, match=qe.MatchValue(flag))
        case Match(key, value):
            return qe.FieldCondition(key=key, match=qe.MatchValue(value))
        case MatchAny(key, values):
            return qe.FieldCondition(key=key, match=qe.MatchAny(values))
        case Range(key, gte, gt, lte, lt):
            return qe.FieldCondition(key=key, range=qe.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt))


def _to_point(item: IndexedChunk) -> qe.Point:
    return qe.Point(item.chunk.chunk_id, {DENSE: item.vector.tolist()}, payload_of(item))
