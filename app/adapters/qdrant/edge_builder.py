"""Builds a new Edge index generation in a child process, out of the serving process's GIL.

qdrant-edge-py holds the GIL for the whole of every engine call: an upsert of 512 chunks
for ~0.2 s, the HNSW build of a SciFact-sized generation for many seconds. In process, a
replay's writes and its HNSW build would stop the event loop (searches, ingest, health
checks) for as long, and the replay's own chunking could never run beside its writes. So a
generation is built by a child process that owns its shard directory until the build is
finished: the parent sends it write batches over a pipe and keeps its GIL for its own
work; `finish()` has the child flush, build HNSW and close the shard; then the parent opens
the finished shard (app/adapters/qdrant/edge_catalog.py).

The child serves one request at a time. If the parent dies, the pipe closes and the child
exits; if the child dies, every call raises DependencyUnavailable and the replay fails
(its generation is discarded).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.adapters.qdrant.edge_index import EdgeIndex, Write
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

log = logging.getLogger(__name__)

# What the child does for the parent: EdgeIndex's own coroutines, by name.
_FORWARDED = frozenset(
    {
        "upsert",
        "delete_document",
        "document",
        "chunks",
        "retrieve",
        "hydrate",
        "vectors",
        "token_signatures",
        "stats",
        "ready",
        "all_points",
        "optimize",
    }
)
_FINISH = "finish"
_APPLY = "apply"
_WRITES = frozenset({"upsert", "delete_document"})
_STOP = "stop"


class EdgeBuilder:
    """A VectorIndex on a generation being built by a child process."""

    def __init__(
        self,
        path: Path,
        *,
        model_id: str,
        dim: int,
        metadata_indexes: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self._lock = threading.Lock()  # one request on the pipe at a time
        self._closed = False
        # A fresh interpreter running this module, not a fork (the parent's threads hold
        # locks: onnxruntime, the engine, redis-py) and not multiprocessing's spawn, which
        # would re-import the parent's __main__ (the whole service) in the child.
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(theirs.fileno()),
                    str(path),
                    model_id,
                    str(dim),
                    json.dumps(metadata_indexes or {}),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the terminal reaches the parent, which then
                # stops the child itself, instead of both at once.
                start_new_session=True,
            )
        # The child's end is closed here, so the child's exit shows as EOF on ours.
        self._conn = Connection(ours.detach())

    async def started(self) -> None:
        """Wait until the child has opened the shard (or raise why it could not)."""
        await self._call("ready")

    # --- VectorIndex --------------------------------------------------------------------

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        if chunks:
            await self._call("upsert", list(chunks))

    async def delete_document(
        self,
        tenant: str,
        doc_id: str,
        *,
        older_than: str | None = None,
        written_by: str | None = None,
    ) -> int:
        deleted: int = await self._call(
            "delete_document", tenant, doc_id, older_than=older_than, written_by=written_by
        )
        return deleted

    async def document(self, tenant: str, doc_id: str) -> DocumentState | None:
        state: DocumentState | None = await self._call("document", tenant, doc_id)
        return state

    async def chunks(self, tenant: str, doc_id: str) -> list[StoredChunk]:
        found: list[StoredChunk] = await self._call("chunks", tenant, doc_id)
        return found

    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        hits: list[Hit] = await self._call("retrieve", query)
        return hits

    async def hydrate(self, hits: Sequence[Hit]) -> None:
        # Hits are filled in place by the index; here they come back as copies.
        filled: list[Hit] = await self._call("hydrate_copy", list(hits))
        for hit, done in zip(hits, filled, strict=True):
            for field in hit.__struct_fields__:
                setattr(hit, field, getattr(done, field))

    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        found: dict[str, Vector] = await self._call("vectors", list(chunk_ids))
        return found

    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = await self._call("token_signatures", list(chunk_ids))
        return found

    async def stats(self, tenant: str | None = None) -> IndexStats:
        stats: IndexStats = await self._call("stats", tenant)
        return stats

    async def ready(self) -> bool:
        try:
            return bool(await self._call("ready"))
        except DependencyUnavailable:
            return False

    async def all_points(
        self, tenant: str | None = None
    ) -> list[tuple[str, dict[str, Any], list[float]]]:
        points: list[tuple[str, dict[str, Any], list[float]]] = await self._call(
            "all_points", tenant
        )
        return points

    # --- the build's end ------------------------------------------------------------------

    async def optimize(self) -> None:
        """Build HNSW for what the shard holds so far (the child's GIL, not ours)."""
        await self._call("optimize")

    async def apply(self, writes: Sequence[Write]) -> None:
        """Make `writes` (EdgeIndex.writes_since_copy) on the shard, in order."""
        if writes:
            await self._call(_APPLY, list(writes))

    async def finish(self) -> None:
        """Flush, build HNSW and close the shard in the child, which then exits: the
        directory is a complete shard, ready to be opened."""
        await asyncio.to_thread(self.finish_now)

    def finish_now(self, *, writes: Sequence[Write] = (), optimize: bool = True) -> None:
        """finish(), blocking, after making `writes`; `optimize=False` skips the HNSW build
        (for a copy already optimized, whose last few writes can wait for the next one)."""
        if writes:
            self._roundtrip(_APPLY, (list(writes),), {})
        self._roundtrip(_FINISH, (optimize,), {})
        self._process.wait(30)

    def close(self) -> None:
        """Stop the child without finishing: the shard is left as it is (to be removed)."""
        if self._closed:
            return
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._conn.send((_STOP, (), {}))
            except OSError:
                pass
            finally:
                self._lock.release()
        else:
            # A request is in flight (an HNSW build can take minutes): a shutdown must not
            # wait for it, and the shard is discarded anyway.
            self._process.kill()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._roundtrip, op, args, kwargs)

    def _roundtrip(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if self._closed:
                raise DependencyUnavailable("the index builder is closed")
            try:
                self._conn.send((op, args, kwargs))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                code = self._process.poll()
                raise DependencyUnavailable(
                    f"the index builder process for {self.path.name} exited (code {code})"
                ) from exc
        if not ok:
            kind, message = value
            if kind == "DependencyUnavailable":
                raise DependencyUnavailable(message)
            raise RagError(f"index builder: {message}")
        return value


def _serve(
    conn: Connection, path: str, model_id: str, dim: int, metadata_indexes: dict[str, str]
) -> None:
    """The child: open the shard, answer requests until finished, stopped or orphaned."""
    loop = asyncio.new_event_loop()
    index: EdgeIndex | None = None
    opened: BaseException | None = None
    try:
        index = EdgeIndex(
            Path(path).parent,
            model_id=model_id,
            dim=dim,
            metadata_indexes=metadata_indexes,
            path=Path(path),
            building=True,
        )
    except BaseException as exc:  # reported to the first request
        opened = exc
    while True:
        try:
            op, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if op == _STOP:
            break
        try:
            if index is None:
                raise opened or RuntimeError("the shard did not open")
            if op == _FINISH:
                started, cpu = time.perf_counter(), time.process_time()
                if args[0]:
                    loop.run_until_complete(index.optimize())
                optimized, optimized_cpu = time.perf_counter(), time.process_time()
                index.close()
                index = None
                log.info(
                    "generation at %s built: HNSW %.2fs (%.2f CPU s), close %.2fs "
                    "(%.2f CPU s); %.2f CPU s in this process before",
                    path,
                    optimized - started,
                    optimized_cpu - cpu,
                    time.perf_counter() - optimized,
                    time.process_time() - optimized_cpu,
                    cpu,
                )
                conn.send((True, None))
                break
            if op == _APPLY:
                for name, write_args, write_kwargs in args[0]:
                    if name not in _WRITES:
                        raise ValueError(f"unknown write {name!r}")
                    loop.run_until_complete(getattr(index, name)(*write_args, **write_kwargs))
                result: Any = None
            elif op == "hydrate_copy":
                hits = args[0]
                loop.run_until_complete(index.hydrate(hits))
                result = hits
            elif op in _FORWARDED:
                result = loop.run_until_complete(getattr(index, op)(*args, **kwargs))
            else:
                raise ValueError(f"unknown operation {op!r}")
            conn.send((True, result))
        except Exception as exc:
            kind = "DependencyUnavailable" if isinstance(exc, DependencyUnavailable) else "error"
            conn.send((False, (kind, f"{type(exc).__name__}: {exc}")))
    if index is not None:
        index.close()
    loop.close()
    conn.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fd, shard_path, model, dimension, indexes = sys.argv[1:6]
    _serve(Connection(int(fd)), shard_path, model, int(dimension), json.loads(indexes))
