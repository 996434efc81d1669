"""IndexCatalog on Qdrant Edge: each generation is its own shard directory beside the others.

Layout under `<data_dir>/index/`:

- `<model_id>/` is generation "0", the shard as it was laid out before generations existed;
- `<model_id>.gen-<n>/` is generation "n";
- `<model_id>.active` names the active generation (`{"generation": "n"}`); absent means "0".

The record is replaced atomically (temporary file, fsync, rename, fsync of the directory), so
after a crash at any point it names either the old generation or the new one, complete. Any
other generation found at open was being built, or dropped, when a process stopped: it is
removed, since only the process holding the index (app/index_lock.py IndexOwnership) opens this.

A new generation is built by a child process (app/adapters/qdrant/edge_builder.py): the engine holds
the GIL through every write and through the HNSW build, which in this process would stall
everything it serves meanwhile. `activate` has the child finish the shard (flush, HNSW,
close), then opens it here.

For the same reason the serving generation's own HNSW is never built here. Once enough points
wait unindexed, the generation is copied (writes held for the copy), a child builds
HNSW on the copy while this process goes on serving and writing the original, keeping each
write; the child makes the kept writes, and at the hand-over (writes held again) the copy
becomes the next generation: the child makes the last kept writes and closes the shard, this
process opens it, records it as active and swaps, and writes that waited meanwhile go to it.
Searches stop only for the engine's open of the finished shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

import msgspec

from app.adapters.qdrant.edge_builder import EdgeBuilder
from app.adapters.qdrant.edge_index import EdgeIndex, Write
from app.domain.records import Chunk
from app.errors import DependencyUnavailable, RagError

log = logging.getLogger(__name__)

LEGACY = "0"

# After a failed background optimize, the next try waits this long (the search works on
# unindexed segments meanwhile, only slower).
RETRY_OPTIMIZE_SECONDS = 60.0
# Kept writes are sent to the optimizing child until fewer than this remain, so the
# hand-over, during which writes wait, has little to send.
HAND_OVER_WRITES = 8


class ActiveRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What `<model_id>.active` holds."""

    generation: str


class EdgeCatalog:
    """The generations of one model's Edge shard; see the module doc for the layout."""

    def __init__(
        self,
        data_dir: Path,
        *,
        model_id: str,
        dim: int,
        metadata_indexes: dict[str, str] | None = None,
        search_threads: int | None = None,
    ) -> None:
        self.root = data_dir / "index"
        self.model_id = model_id
        self._data_dir = data_dir
        self._dim = dim
        self._metadata_indexes = metadata_indexes
        self._search_threads = search_threads
        self._record = self.root / f"{model_id}.active"
        self._lock = threading.Lock()
        self._building: dict[str, EdgeBuilder] = {}
        # The background optimize of the serving generation (module doc), if one runs.
        self._optimizing: asyncio.Task[None] | None = None
        self._optimizing_generation: str | None = None
        self._optimizer: EdgeBuilder | None = None
        self._optimize_after = 0.0
        # Replays starting: no background optimize begins meanwhile, and one running is
        # abandoned (the replay's generation gets HNSW anyway, and replaces this one).
        self._replays_starting = 0
        self._abandoned = False
        self._closed = False
        self.root.mkdir(parents=True, exist_ok=True)
        self._active = self._read_record()
        self._remove_others(keep={self._active})
        self._index = self._open(self._active)

    @property
    def active(self) -> str:
        return self._active

    def current(self) -> EdgeIndex:
        return self._index

    def path(self, generation: str) -> Path:
        if generation == LEGACY:
            return self.root / self.model_id
        return self.root / f"{self.model_id}.gen-{generation}"

    async def create(
        self, *, corpus: AsyncIterable[Sequence[Chunk]] | None = None
    ) -> tuple[str, EdgeBuilder]:
        # `corpus` is not read: the shard's text index computes its BM25 statistics (the
        # mean length too) from what it holds, as it goes.
        self._replays_starting += 1
        try:
            await self._abandon_optimize()
            with self._lock:
                generation = self._next_generation()
            builder = await self._builder(self.path(generation))
            self._building[generation] = builder
        finally:
            self._replays_starting -= 1
        log.info("building index generation %s at %s", generation, builder.path)
        return generation, builder

    async def activate(self, generation: str) -> None:
        builder = self._building.pop(generation, None)
        if builder is None:
            raise RagError(f"generation {generation!r} is not being built here")
        started = time.perf_counter()
        try:
            await builder.finish()
            finished = time.perf_counter()
            index = await asyncio.to_thread(self._open, generation)
            log.info(
                "index generation %s finished in %.2fs, opened in %.2fs",
                generation,
                finished - started,
                time.perf_counter() - finished,
            )
        except BaseException:
            await asyncio.to_thread(self._drop_build, builder)
            raise
        previous = await asyncio.to_thread(self._make_active, generation, index)
        log.info("index generation %s is active; dropping %s", generation, previous.path)
        await asyncio.to_thread(self._drop, previous)

    async def discard(self, generation: str) -> None:
        builder = self._building.pop(generation, None)
        if builder is not None:
            await asyncio.to_thread(self._drop_build, builder)

    def close(self) -> None:
        self._closed = True
        for generation in list(self._building):
            self._drop_build(self._building.pop(generation))
        if self._optimizer is not None:
            self._drop_build(self._optimizer)
        self._index.close()

    # --- the serving generation's HNSW, built elsewhere (module doc) ----------------------

    def _optimize_soon(self) -> None:
        """Start a background optimize of the serving generation unless one runs, a replay
        builds (its generation gets HNSW anyway), or the last try failed recently."""
        if (
            self._optimizing is not None
            or self._building
            or self._replays_starting
            or self._closed
            or time.monotonic() < self._optimize_after
        ):
            return
        self._abandoned = False
        self._optimizing = asyncio.get_running_loop().create_task(self._optimize_elsewhere())

    async def _abandon_optimize(self) -> None:
        running = self._optimizing
        if running is None:
            return
        self._abandoned = True
        if self._optimizer is not None:  # its HNSW build can take many seconds
            await asyncio.to_thread(self._optimizer.close)
        await asyncio.wait([running])

    def _check_not_abandoned(self) -> None:
        if self._abandoned:
            raise RagError("the background optimize was abandoned for a replay")

    async def _optimize_elsewhere(self) -> None:
        source = self._index
        with self._lock:
            generation = self._optimizing_generation = self._next_generation()
        path = self.path(generation)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(source.copy_to, path)
            copied = time.perf_counter()
            self._check_not_abandoned()
            builder = self._optimizer = await self._builder(path)
            self._check_not_abandoned()
            await builder.optimize()
            optimized = time.perf_counter()
            while (
                len(writes := await asyncio.to_thread(source.writes_since_copy)) >= HAND_OVER_WRITES
            ):
                await builder.apply(writes)
            await builder.apply(writes)

            def successor(last: list[Write]) -> EdgeIndex:
                self._check_not_abandoned()
                builder.finish_now(writes=last, optimize=False)
                opening = time.perf_counter()
                index = self._open(generation)
                log.info(
                    "optimized index generation %s opened in %.3fs",
                    generation,
                    time.perf_counter() - opening,
                )
                self._make_active(generation, index)
                return index

            await asyncio.to_thread(source.hand_over, successor)
            log.info(
                "index generation %s replaces %s with HNSW built elsewhere: copied in %.2fs, "
                "optimized in %.2fs, handed over after %.2fs",
                generation,
                source.path.name,
                copied - started,
                optimized - copied,
                time.perf_counter() - started,
            )
            await asyncio.to_thread(self._drop, source)
        except Exception:
            if self._abandoned:
                log.info("background optimize of %s abandoned for a replay", source.path)
            else:
                log.exception(
                    "background optimize of %s failed; searches go on unindexed points",
                    source.path,
                )
                self._optimize_after = time.monotonic() + RETRY_OPTIMIZE_SECONDS
            source.stop_copying()
            if self._optimizer is not None:
                await asyncio.to_thread(self._drop_build, self._optimizer)
            else:
                await asyncio.to_thread(shutil.rmtree, path, True)
        finally:
            self._optimizer = None
            self._optimizing_generation = None
            self._optimizing = None

    def _make_active(self, generation: str, index: EdgeIndex) -> EdgeIndex:
        """Record `generation` as active and serve `index` from now on; returns the index it
        replaces, to be dropped. If the record cannot be written, `index` is dropped and
        nothing changes."""
        try:
            self._write_record(generation)
        except OSError as exc:
            self._drop(index)
            raise DependencyUnavailable(f"cannot record the active index: {exc}") from exc
        # Every operation that starts from now on resolves the new generation; those already
        # running finish on the old one, which close() waits for.
        with self._lock:
            previous, self._index, self._active = self._index, index, generation
        return previous

    # --- files ---------------------------------------------------------------------------

    def _next_generation(self) -> str:
        """A generation number nothing uses; the caller holds self._lock."""
        taken = [int(self._active), *map(int, self._building), *self._on_disk()]
        if self._optimizing_generation is not None:
            taken.append(int(self._optimizing_generation))
        generation = str(max(taken) + 1)
        path = self.path(generation)
        if path.exists():  # a leftover: nothing refers to it
            shutil.rmtree(path)
        return generation

    async def _builder(self, path: Path) -> EdgeBuilder:
        """A child process owning the shard at `path` (created, or loaded if it is a copy)."""
        builder = EdgeBuilder(
            path, model_id=self.model_id, dim=self._dim, metadata_indexes=self._metadata_indexes
        )
        try:
            await builder.started()
        except BaseException:
            await asyncio.to_thread(self._drop_build, builder)
            raise
        return builder

    def _open(self, generation: str) -> EdgeIndex:
        index = EdgeIndex(
            self._data_dir,
            model_id=self.model_id,
            dim=self._dim,
            metadata_indexes=self._metadata_indexes,
            search_threads=self._search_threads,
            path=self.path(generation),
        )
        index.on_unindexed = self._optimize_soon
        return index

    @staticmethod
    def _drop(index: EdgeIndex) -> None:
        index.close(flush=False)
        shutil.rmtree(index.path, ignore_errors=True)

    @staticmethod
    def _drop_build(builder: EdgeBuilder) -> None:
        builder.close()
        shutil.rmtree(builder.path, ignore_errors=True)

    def _read_record(self) -> str:
        try:
            raw = self._record.read_bytes()
        except FileNotFoundError:
            return LEGACY
        try:
            generation = msgspec.json.decode(raw, type=ActiveRecord).generation
        except msgspec.DecodeError as exc:
            # Written atomically, so this is not a torn write: someone edited it. Guessing
            # would serve (and then delete!) the wrong generation.
            raise DependencyUnavailable(
                f"{self._record} does not name an index generation ({exc}); fix or remove it"
            ) from exc
        if not generation.isdigit() or not self.path(generation).is_dir():
            raise DependencyUnavailable(
                f"{self._record} names generation {generation!r}, which is not on disk"
            )
        return generation

    def _write_record(self, generation: str) -> None:
        temporary = self._record.with_name(self._record.name + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(msgspec.json.encode(ActiveRecord(generation=generation)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._record)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _on_disk(self) -> list[int]:
        prefix = f"{self.model_id}.gen-"
        return [
            int(p.name[len(prefix) :])
            for p in self.root.glob(f"{prefix}*")
            if p.is_dir() and p.name[len(prefix) :].isdigit()
        ]

    def _remove_others(self, keep: set[str]) -> None:
        stale = [str(n) for n in self._on_disk()]
        if self.path(LEGACY).is_dir():
            stale.append(LEGACY)
        for generation in stale:
            if generation not in keep:
                log.warning(
                    "removing index generation %s at %s: left by a replay or swap that did "
                    "not finish",
                    generation,
                    self.path(generation),
                )
                shutil.rmtree(self.path(generation), ignore_errors=True)
