"""Domain records passed between the services, the ports and the adapters."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
MetadataValue = str | int | float | bool | None | list[str] | list[int] | list[float]
Metadata = dict[str, Any]

DEFAULT_TENANT = "default"


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("<ms>-<seq>") as a sortable pair; "" (no entry) sorts first."""
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


class DocumentIn(msgspec.Struct, frozen=True, kw_only=True):
    """A document as a client submits it."""

    id: str
    text: str
    title: str = ""
    metadata: Metadata = msgspec.field(default_factory=dict)


class ChunkingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Chunk size and overlap in embedder tokens; part of a document's version."""

    size: int
    overlap: int


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a document, as embedded and indexed."""

    chunk_id: str  # UUIDv5 of (tenant, doc_id, event_id, chunk_index): the point id
    tenant: str
    doc_id: str
    version: str
    # The document event whose application wrote this chunk: a point of one event is never
    # overwritten by another's, and a document's points are swept by event order
    # (docs/design.md, "Several projectors"). "" for chunks written before events had ids.
    event_id: str
    chunk_index: int
    title: str
    section: list[str]  # Markdown heading path the chunk sits under
    text: str  # the chunk's own text, as returned to clients
    embed_text: str  # what the embedder and BM25 read: title, section path and text
    metadata: Metadata


class Encoded(msgspec.Struct, frozen=True, kw_only=True):
    """Embeddings of a batch of texts, in input order."""

    vectors: Vector  # (n, dim) float32, L2-normalised
    # Per text: 1-bit sign signature of each token vector, packed (n_tokens * dim/8 bytes);
    # None when the embedder exposes no token vectors (API embedders).
    token_signatures: list[bytes] | None


class EncodedQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A query's pooled embedding, and its L2-normalised token vectors for late interaction."""

    vector: Vector  # (dim,)
    token_vectors: Vector | None  # (n_tokens, dim)


class IndexedChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A chunk ready to be written to the index."""

    chunk: Chunk
    vector: Vector
    token_signature: bytes | None


class FieldFilter(msgspec.Struct, frozen=True, kw_only=True):
    """One condition on a metadata field: exact value, any-of, or a numeric range."""

    key: str
    equals: str | int | float | bool | None = None
    any_of: list[str] | list[int] | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


class IndexQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What the pipeline asks the index for: candidates from dense and/or BM25 retrieval."""

    tenant: str
    text: str
    vector: Vector
    limit: int
    dense: bool
    bm25: bool
    filters: list[FieldFilter] = msgspec.field(default_factory=list)


class Hit(msgspec.Struct, kw_only=True):
    """A candidate chunk with what each retriever scored it; mutable while the pipeline scores.

    Retrieval returns ids and scores only; the payload fields are filled in (`hydrate`) for
    the few hits that are returned, not for every candidate.
    """

    chunk_id: str
    dense: float  # exact cosine with the query
    bm25: float | None  # BM25 score, None when the chunk matched no query term
    doc_id: str = ""
    chunk_index: int = 0
    title: str = ""
    text: str = ""
    section: list[str] = msgspec.field(default_factory=list)
    metadata: Metadata = msgspec.field(default_factory=dict)
    vector: Vector | None = None  # fetched only when MMR needs it
    token_signature: bytes | None = None
    scores: dict[str, float] = msgspec.field(default_factory=dict)
    score: float = 0.0


class IndexStats(msgspec.Struct, frozen=True, kw_only=True):
    points: int
    documents: int
    indexed_vectors: int
    segments: int


class StoredChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A chunk as read back from the index, for a person looking at a document: its
    payload, without vectors or token signatures."""

    chunk_id: str
    version: str
    event_id: str  # the document event that wrote it; "" for chunks from before events had ids
    chunk_index: int
    title: str
    section: list[str]
    text: str
    embed_text: str  # what the embedder and BM25 read
    metadata: Metadata


class DocumentState(msgspec.Struct, frozen=True, kw_only=True):
    """What the index holds for one document."""

    doc_id: str
    version: str
    chunks: int


SearchMode = Literal["dense", "bm25", "hybrid"]
