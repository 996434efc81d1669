"""The heavy variant of tests/e2e/test_backup.py, on SciFact: the corpus ingested through
`serve` (with revisions and deletions), exported while it runs, imported into a fresh prefix,
indexed there by a new `serve`'s projector (every chunk embedded again: the embedding cache is
not in the backup), and searched: the same points, and the same results up to HNSW.

Embedding the corpus twice takes the better part of an hour on two cores, so it runs only with
RAG_BACKUP_SCIFACT=1 (RAG_BACKUP_SCIFACT_DOCS=N: only the first N documents, to try it out).

    RAG_BACKUP_SCIFACT=1 python -m pytest -s tests/e2e/test_backup_scifact.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from app.api.schemas import DocumentInput
from app.cli.corpus import read_beir_corpus, read_beir_queries, read_qrels
from app.client import Client, send_batches
from app.retrieval.metrics import ndcg_at_k
from tests.e2e.server import Server
from tests.e2e.test_backup import rag, same_points, snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RAG_BACKUP_SCIFACT") != "1",
        reason="embeds SciFact twice (most of an hour): set RAG_BACKUP_SCIFACT=1",
    ),
]

DOCS = int(os.environ.get("RAG_BACKUP_SCIFACT_DOCS", "0")) or None
QUERIES = 200


def revised(doc: DocumentInput) -> DocumentInput:
    return DocumentInput(id=doc.id, title=doc.title, text=f"{doc.text} (revised)")


async def load(url: str, docs: list[DocumentInput]) -> None:
    """The corpus, then a revision of every 10th document, then every 50th deleted."""
    async with Client(url, timeout=7200) as client:
        await send_batches(client, docs, 64, in_flight=2)
        await send_batches(client, [revised(d) for d in docs[::10]], 64, in_flight=2)
    with httpx.Client(base_url=url, timeout=60) as http:
        for doc in docs[::50]:
            assert http.delete(f"/api/v1/documents/{doc.id}?wait=true").status_code == 200


async def run_queries(url: str, queries: dict[str, str]) -> dict[str, list[str]]:
    async with Client(url, timeout=120) as client:
        return {
            qid: [r.doc_id for r in (await client.search(text, top_k=10)).results]
            for qid, text in queries.items()
        }


async def settle(url: str, doc_ids: list[str], timeout: float) -> float:
    """Seconds until no document reads pending any more (the projector has applied the log)."""
    started = time.monotonic()
    async with Client(url, timeout=60) as client:
        left = list(doc_ids)
        while left and time.monotonic() - started < timeout:
            found = await asyncio.gather(*(client.document(d) for d in left[:200]))
            done = {
                d
                for d, status in zip(left[:200], found, strict=True)
                if status and status["status"] != "pending"
            }
            left = [d for d in left if d not in done]
            if left and not done:
                await asyncio.sleep(2)
    assert not left, f"{len(left)} documents still pending"
    return time.monotonic() - started


def test_scifact_restored_from_a_backup_searches_as_before(scifact: Path, tmp_path: Path) -> None:
    docs = list(read_beir_corpus(scifact / "corpus.jsonl"))[:DOCS]
    qrels = read_qrels(scifact / "qrels" / "train.tsv")
    queries = {
        qid: text
        for qid, text in read_beir_queries(scifact / "queries.jsonl").items()
        if qid in qrels
    }
    queries = dict(list(queries.items())[:QUERIES])
    source_dir, restored_dir = tmp_path / "source" / "data", tmp_path / "restored" / "data"
    source_dir.parent.mkdir()
    restored_dir.parent.mkdir()

    source = Server(source_dir).start(timeout=300)
    try:
        asyncio.run(load(source.url, docs))
        before = asyncio.run(run_queries(source.url, queries))
        index = httpx.get(f"{source.url}/api/v1/stats").json()["index"]
        exported = rag(source_dir, "export", str(tmp_path / "scifact.ragbak"))
        assert exported.returncode == 0, exported.stderr.decode()
        print(f"\n{exported.stdout.decode().strip()}")
    finally:
        assert source.stop() == 0

    started = time.monotonic()
    loaded = rag(restored_dir, "import", str(tmp_path / "scifact.ragbak"))
    assert loaded.returncode == 0, loaded.stderr.decode()
    imported_s = time.monotonic() - started
    print(loaded.stdout.decode().strip())
    restored = Server(restored_dir).start(timeout=300)
    try:
        indexed_s = asyncio.run(settle(restored.url, [d.id for d in docs], timeout=7200))
        after = asyncio.run(run_queries(restored.url, queries))
    finally:
        assert restored.stop() == 0
    print(
        f"restore of {len(docs)} documents: import {imported_s:.1f} s, then indexed by the "
        f"projector in {indexed_s:.0f} s"
    )

    model = (index["model_id"], index["dim"])
    same_points(snapshot(restored_dir, *model), snapshot(source_dir, *model))
    # HNSW is built anew, so the nearest neighbours of a few queries may differ at the edge.
    same = sum(before[q] == after[q] for q in queries) / len(queries)
    overlap = statistics.mean(
        len(set(before[q]) & set(after[q])) / max(1, len(set(before[q]) | set(after[q])))
        for q in queries
    )
    print(f"identical top 10: {same:.1%} of queries; mean overlap {overlap:.4f}")
    assert same >= 0.9 and overlap >= 0.98, (same, overlap)
    ndcg_before = statistics.mean(ndcg_at_k(before[q], qrels[q]) for q in queries)
    ndcg_after = statistics.mean(ndcg_at_k(after[q], qrels[q]) for q in queries)
    assert abs(ndcg_before - ndcg_after) <= 0.005, (ndcg_before, ndcg_after)
