"""A model's collections on a Qdrant cluster: the alias, generation names, the collection schema.

Search and the projector address the alias (`alias_name`); it points at one generation
collection, `<alias>--g<µs>`. The index makes the first generation on first use
(remote_index.py); the catalog makes the others and moves the alias (remote_catalog.py).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Mapping

import grpc
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from app.adapters.qdrant.payload import DENSE
from app.adapters.qdrant.sparse_bm25 import BM25_B, BM25_K

SPARSE = "bm25"

_KEYWORD_FIELDS = ("tenant", "doc_id", "version")
_INDEX_KINDS: dict[str, Callable[[], qm.PayloadSchemaParams | qm.PayloadSchemaType]] = {
    "keyword": lambda: qm.PayloadSchemaType.KEYWORD,
    "integer": lambda: qm.IntegerIndexParams(
        type=qm.IntegerIndexType.INTEGER, lookup=True, range=True
    ),
    "float": lambda: qm.PayloadSchemaType.FLOAT,
    "bool": lambda: qm.PayloadSchemaType.BOOL,
}


def alias_name(prefix: str, model_id: str) -> str:
    """The name search and the projector address: one per embedding model (index identity)."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "_", model_id)


_last_stamp = 0


def generation_name(alias: str) -> str:
    """A new generation's collection name. The stamp is in microseconds and strictly
    increasing within the process: two generations made in the same millisecond (a first
    use and a replay) once collided."""
    global _last_stamp
    _last_stamp = max(time.time_ns() // 1_000, _last_stamp + 1)
    return f"{alias}--g{_last_stamp}"


async def create_collection(
    client: AsyncQdrantClient,
    name: str,
    *,
    model_id: str,
    dim: int,
    metadata_indexes: Mapping[str, str],
    bm25_avg_len: float,
) -> None:
    """An empty generation with the index's vectors, payload indexes and BM25 normalisation."""
    await client.create_collection(
        name,
        vectors_config={DENSE: qm.VectorParams(size=dim, distance=qm.Distance.COSINE)},
        sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
        hnsw_config=qm.HnswConfigDiff(m=16, ef_construct=128, full_scan_threshold=1_000),
        # Payload is read for the returned hits and rerank candidates only (signatures
        # are most of it): the same choice as the Edge shard's cold payload.
        on_disk_payload=True,
        # The tokenizer's length normalisation is baked into the stored sparse vectors,
        # so the value they were built with belongs to the collection.
        metadata={
            "model_id": model_id,
            "dim": dim,
            "bm25_avg_len": bm25_avg_len,
            "bm25_k": BM25_K,
            "bm25_b": BM25_B,
        },
    )
    wanted: dict[str, qm.PayloadSchemaParams | qm.PayloadSchemaType] = {
        field: qm.PayloadSchemaType.KEYWORD for field in _KEYWORD_FIELDS
    }
    wanted["tenant"] = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    wanted["chunk_index"] = qm.IntegerIndexParams(
        type=qm.IntegerIndexType.INTEGER, lookup=True, range=False
    )
    for field, kind in metadata_indexes.items():
        wanted[f"metadata.{field}"] = _INDEX_KINDS[kind]()
    with warnings.catch_warnings():
        # Local mode warns that payload indexes do nothing there; a cluster uses them.
        warnings.simplefilter("ignore", UserWarning)
        for field, schema in wanted.items():
            await client.create_payload_index(name, field, field_schema=schema, wait=True)


async def point_alias(
    client: AsyncQdrantClient, alias: str, collection: str, *, replacing: bool
) -> None:
    """Point `alias` at `collection` in one atomic operation (`replacing` an existing one)."""
    operations: list[qm.AliasOperations] = []
    if replacing:
        operations.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
    operations.append(
        qm.CreateAliasOperation(
            create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias)
        )
    )
    await client.update_collection_aliases(operations)


async def live_generation(client: AsyncQdrantClient, alias: str) -> str | None:
    """The collection the alias points at, or None before the first use."""
    aliases = await client.get_aliases()
    return next((a.collection_name for a in aliases.aliases if a.alias_name == alias), None)


async def generations(client: AsyncQdrantClient, alias: str) -> list[str]:
    """Every generation collection of the alias, oldest first."""
    response = await client.get_collections()
    mine = [c.name for c in response.collections if c.name.startswith(f"{alias}--")]
    return sorted(mine, key=_generation_order)


def is_not_found(exc: Exception) -> bool:
    """Whether the collection (or alias) does not exist, in any of the client's transports."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    if isinstance(exc, grpc.RpcError):
        return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
    # Local mode says "Collection ... not found" with a ValueError.
    return isinstance(exc, ValueError) and "not found" in str(exc)


def _generation_order(name: str) -> tuple[int, str]:
    stamp = name.rpartition("--g")[2]
    return (int(stamp) if stamp.isdigit() else 0, name)
