"""Choose the search defaults by 5-fold cross-validation on a BEIR split's judged queries.

Candidates are retrieved once per query (bench/tune_fusion.py `collect`: dense and BM25 pools
of 100 with exact scores from both retrievers, document ids, late-interaction scores) and
cached; every setting of the grid is then scored offline through the pipeline's own
app.services.query.fuse/rescore. Folds are over queries (fixed seed). Per fold the setting
with the best mean nDCG@10 on the other four folds is chosen and scored on the held-out one,
next to the current defaults. Stop the server first (the Edge shard is opened here), and use
a copy of the data dir.

    python bench/cv_defaults.py --data-dir /tmp/scifact-copy ../shared/datasets/scifact-train
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.cli.corpus import read_qrels
from app.domain.records import Hit
from app.retrieval.metrics import dedupe, ndcg_at_k, recall_at_k
from app.services.query import FusionWeights, fuse, rescore

FOLDS = 5
COLLECTED_POOL = 100


class Candidate(msgspec.Struct, array_like=True):
    chunk_id: str
    doc_id: str
    dense: float
    bm25: float | None
    late: list[float]  # per LATE_VARIANTS
    tokens: list[int]  # signature rows MaxSim reads, per LATE_VARIANTS


class QueryPool(msgspec.Struct):
    qid: str
    candidates: list[Candidate]


class Setting(msgspec.Struct, frozen=True, kw_only=True):
    """One point of the grid: what the pipeline would be configured with."""

    normalise: str = "minmax"  # or "rrf"
    dense: float = 0.5  # BM25 gets 1 - dense
    rrf_k: int = 60
    pool: int = COLLECTED_POOL  # candidates per retriever
    siblings: float = 0.0
    head: int = 0  # reranked head; 0: no rerank
    rerank: float = 0.5
    signature: int = 0  # index into LATE_VARIANTS

    def weights(self) -> FusionWeights:
        return FusionWeights(
            dense=self.dense,
            bm25=round(1.0 - self.dense, 4),
            rerank=self.rerank,
            normalise=self.normalise,  # type: ignore[arg-type]
            rrf_k=self.rrf_k,
            siblings=self.siblings,
        )

    def label(self) -> str:
        fusion = (
            f"minmax d={self.dense:.2f}"
            if self.normalise == "minmax"
            else f"rrf k={self.rrf_k} d={self.dense:.2f}"
        )
        rerank = (
            f"rerank {self.head} w={self.rerank:.1f} sig={LATE_VARIANTS[self.signature]}"
            if self.head
            else "no rerank"
        )
        return f"{fusion}, pool {self.pool}, siblings {self.siblings:g}, {rerank}"


CURRENT = Setting()


def fusion_grid() -> Iterator[Setting]:
    """Every first-stage setting (no rerank); the current defaults come first."""
    yield CURRENT
    for pool in (100, 50, 30, 20, 10):
        for siblings in (0.0, 0.05, 0.1, 0.2, 0.3):
            for d in np.arange(0.3, 0.801, 0.05):
                yield Setting(dense=round(float(d), 2), pool=pool, siblings=siblings)
            for k in (10, 30, 60):
                for d in (0.4, 0.5, 0.6):
                    yield Setting(normalise="rrf", rrf_k=k, dense=d, pool=pool, siblings=siblings)


RERANK_HEADS = (10, 15, 20, 30, 50)
RERANK_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)


# Function words of English: token signatures of these carry little for MaxSim, and dropping
# them is one way to make a chunk's signature (and its fetch) smaller.
_STOP_WORDS = """a about above after again against all am an and any are as at be because been
    before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves"""
STOP_WORDS = frozenset(_STOP_WORDS.split())
# How a chunk's token signature is pruned before MaxSim: "full" is what is stored today;
# "content" drops stop words and punctuation of the chunk; "+query" drops them from the query
# tokens too; "+unique" keeps one row per distinct word piece of the chunk.
LATE_VARIANTS = ("full", "content", "content+query", "content+query+unique")


def _kept(ids: Sequence[str], unique: bool) -> list[int]:
    seen: set[str] = set()
    rows = []
    for i, token in enumerate(ids):
        if token in STOP_WORDS or not any(ch.isalnum() for ch in token):
            continue
        if unique and token in seen:
            continue
        seen.add(token)
        rows.append(i)
    return rows


async def collect_pools(data_dir: Path, dataset: Path, limit: int | None) -> list[QueryPool]:
    """Each judged query's pools (exact scores, doc ids) and late scores per LATE_VARIANTS."""
    import qdrant_edge as qe

    from app.adapters.embedders.local import LocalEmbedder
    from app.adapters.qdrant.edge_catalog import EdgeCatalog
    from app.adapters.qdrant.payload import SEARCH_TEXT, SIGNATURE
    from app.cli.corpus import read_beir_queries
    from app.domain.records import DEFAULT_TENANT, IndexQuery
    from app.retrieval.late_interaction import maxsim

    embedder = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    index = EdgeCatalog(data_dir, model_id=embedder.model_id, dim=embedder.dim).current()
    tokenizer = embedder._tokenizer  # a benchmark reaching into its own adapter
    row = embedder.dim // 8
    queries = read_beir_queries(dataset / "queries.jsonl")
    qrels = read_qrels(dataset / "qrels" / "train.tsv")
    judged = [(qid, queries[qid]) for qid in sorted(qrels) if qid in queries][:limit]
    out, misaligned = [], 0
    try:
        for n, (qid, text) in enumerate(judged):
            query = await embedder.embed_query(text)
            hits = await index.retrieve(
                IndexQuery(
                    tenant=DEFAULT_TENANT,
                    text=text,
                    vector=query.vector,
                    limit=COLLECTED_POOL,
                    dense=True,
                    bm25=True,
                )
            )
            await index.hydrate(hits)
            records = index._shard.retrieve(
                [h.chunk_id for h in hits],
                with_payload=qe.PayloadSelector.Include([SIGNATURE, SEARCH_TEXT]),
                with_vector=False,
            )
            payloads = {str(r.id): r.payload or {} for r in records}
            q_ids = [
                t
                for t, sp in zip(
                    tokenizer.encode(text).tokens,
                    tokenizer.encode(text).special_tokens_mask,
                    strict=True,
                )
                if not sp
            ]
            q_full = query.token_vectors
            assert q_full is not None and len(q_full) == len(q_ids)
            q_content = q_full[_kept(q_ids, unique=False)]
            if len(q_content) == 0:
                q_content = q_full
            candidates = []
            for h in hits:
                payload = payloads[h.chunk_id]
                signature = base64.b64decode(payload[SIGNATURE])
                enc = tokenizer.encode(str(payload[SEARCH_TEXT]))
                ids = [
                    t for t, sp in zip(enc.tokens, enc.special_tokens_mask, strict=True) if not sp
                ]
                rows = np.frombuffer(signature, dtype=np.uint8).reshape(-1, row)
                if len(rows) != len(ids):
                    misaligned += 1
                    ids = ids[: len(rows)] + ["."] * (len(rows) - len(ids))
                content = rows[_kept(ids, unique=False)]
                unique = rows[_kept(ids, unique=True)]
                late, tokens = [], []
                for sig_rows, q in (
                    (rows, q_full),
                    (content, q_full),
                    (content, q_content),
                    (unique, q_content),
                ):
                    late.append(float(maxsim(q, [sig_rows.tobytes()], embedder.dim)[0]))
                    tokens.append(len(sig_rows))
                candidates.append(Candidate(h.chunk_id, h.doc_id, h.dense, h.bm25, late, tokens))
            out.append(QueryPool(qid=qid, candidates=candidates))
            if n % 100 == 0:
                print(f"  collected {n}/{len(judged)}", file=sys.stderr)
    finally:
        index.close()
        embedder.close()
    print(f"  {misaligned} signatures not aligned with their text's tokens", file=sys.stderr)
    return out


def pool_hits(candidates: Sequence[Candidate], pool: int) -> list[Hit]:
    """The candidates a retrieval with `pool` per retriever would return: its top `pool` by
    each score (exact scores, ties by chunk id), the union of both, as fresh hits."""
    if pool >= COLLECTED_POOL:
        chosen = list(candidates)
    else:
        by_dense = sorted(candidates, key=lambda c: (-c.dense, c.chunk_id))[:pool]
        matched = [c for c in candidates if c.bm25 is not None]
        by_bm25 = sorted(matched, key=lambda c: (-(c.bm25 or 0.0), c.chunk_id))[:pool]
        ids = {c.chunk_id for c in by_dense} | {c.chunk_id for c in by_bm25}
        chosen = [c for c in candidates if c.chunk_id in ids]
    return [Hit(chunk_id=c.chunk_id, dense=c.dense, bm25=c.bm25, doc_id=c.doc_id) for c in chosen]


def score_grid(
    data: Sequence[QueryPool], qrels: dict[str, dict[str, int]]
) -> tuple[list[Setting], np.ndarray]:
    """nDCG@10 of every setting on every query: (settings, array settings x queries)."""
    fused_settings = list(dict.fromkeys(fusion_grid()))
    settings: list[Setting] = list(fused_settings)
    reranked: list[tuple[int, Setting]] = []  # (index of its first stage, setting)
    for i, s in enumerate(fused_settings):
        if s.pool < COLLECTED_POOL or s.dense < 0.4 or (s.normalise == "rrf" and s.rrf_k != 60):
            continue  # rerank is tried over the main fusions only
        for signature in range(len(LATE_VARIANTS)):
            for head in RERANK_HEADS:
                for w in RERANK_WEIGHTS:
                    reranked.append(
                        (i, msgspec.structs.replace(s, head=head, rerank=w, signature=signature))
                    )
    settings += [s for _, s in reranked]
    rerank_bases = {i for i, _ in reranked}
    out = np.zeros((len(settings), len(data)), dtype=np.float64)
    started = time.monotonic()
    for q, query in enumerate(data):
        relevant = qrels[query.qid]
        late = {c.chunk_id: c.late for c in query.candidates}
        hits_by_pool = {p: pool_hits(query.candidates, p) for p in (100, 50, 30, 20, 10)}
        fused_orders: dict[int, list[Hit]] = {}
        for i, s in enumerate(fused_settings):
            hits = fuse(list(hits_by_pool[s.pool]), "hybrid", s.weights())
            out[i, q] = ndcg_at_k(dedupe([h.doc_id for h in hits]), relevant, 10)
            if i in rerank_bases:
                # The next fuse rewrites these hits' scores: keep copies with this order's.
                fused_orders[i] = [msgspec.structs.replace(h) for h in hits]
        for j, (i, s) in enumerate(reranked, start=len(fused_settings)):
            hits = fused_orders[i]
            head = hits[: s.head]
            scores = [late[h.chunk_id][s.signature] for h in head]
            order = rescore(head, scores, "hybrid", s.weights())
            order += hits[s.head :]
            out[j, q] = ndcg_at_k(dedupe([h.doc_id for h in order]), relevant, 10)
        if q % 100 == 0:
            print(
                f"  scored {q}/{len(data)} queries, {len(settings)} settings "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    return settings, out


def folds_of(n: int, seed: int) -> list[np.ndarray]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [np.asarray(sorted(order[f::FOLDS])) for f in range(FOLDS)]


def recall_of(data: Sequence[QueryPool], qrels: dict[str, dict[str, int]], s: Setting) -> float:
    out = []
    for query in data:
        hits = fuse(pool_hits(query.candidates, s.pool), "hybrid", s.weights())
        if s.head:
            late = {c.chunk_id: c.late[s.signature] for c in query.candidates}
            head = hits[: s.head]
            hits = (
                rescore(head, [late[h.chunk_id] for h in head], "hybrid", s.weights())
                + hits[s.head :]
            )
        out.append(recall_at_k(dedupe([h.doc_id for h in hits]), qrels[query.qid], 100))
    return statistics.fmean(out)


def cross_validate(
    name: str,
    settings: Sequence[Setting],
    ndcg: np.ndarray,
    allowed: np.ndarray,
    folds: Sequence[np.ndarray],
) -> None:
    """Per fold: the best allowed setting on the other folds, scored on this one."""
    current = list(settings).index(CURRENT)
    print(f"\n## {name}: {int(allowed.sum())} settings")
    print(f"{'fold':<5} {'queries':>7} {'current':>8} {'chosen':>8} {'delta':>7}  chosen setting")
    rows, chosen = [], []
    everything = np.arange(ndcg.shape[1])
    for f, held in enumerate(folds):
        train = np.setdiff1d(everything, held)
        means = np.where(allowed, ndcg[:, train].mean(axis=1), -1.0)
        best = int(np.argmax(means))  # the first of equals: the grid lists simpler ones first
        cur, got = float(ndcg[current, held].mean()), float(ndcg[best, held].mean())
        rows.append((cur, got))
        chosen.append(best)
        print(
            f"{f + 1:<5} {len(held):>7} {cur:>8.4f} {got:>8.4f} {got - cur:>+7.4f}  "
            f"{settings[best].label()}"
        )
    cur_m, got_m = [r[0] for r in rows], [r[1] for r in rows]
    deltas = [g - c for c, g in rows]
    print(
        f"mean  {'':>7} {statistics.fmean(cur_m):>8.4f} {statistics.fmean(got_m):>8.4f} "
        f"{statistics.fmean(deltas):>+7.4f}"
    )
    print(
        f"stdev {'':>7} {statistics.stdev(cur_m):>8.4f} {statistics.stdev(got_m):>8.4f} "
        f"{statistics.stdev(deltas):>7.4f}"
    )
    # Does a chosen setting also win on the folds that did not choose it?
    print("held-out delta vs current, per fold, of each chosen setting (* = a fold that chose it)")
    for best in dict.fromkeys(chosen):
        cells = [
            f"{ndcg[best, held].mean() - ndcg[current, held].mean():+.4f}"
            f"{'*' if chosen[f] == best else ' '}"
            for f, held in enumerate(folds)
        ]
        print(f"  {' '.join(cells)}  {settings[best].label()}")
    overall = int(np.argmax(np.where(allowed, ndcg.mean(axis=1), -1.0)))
    print(f"best on all queries: {ndcg[overall].mean():.4f}  {settings[overall].label()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--data-dir", type=Path, help="a copy of a served data dir")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/cv_defaults_pools.msgpack"),
        help="candidates collected once, reused when present",
    )
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    qrels = read_qrels(args.dataset / "qrels" / "train.tsv")
    if args.cache.exists():
        data = msgspec.msgpack.decode(args.cache.read_bytes(), type=list[QueryPool])
    else:
        if args.data_dir is None:
            parser.error("--data-dir is needed to collect candidates (no cache yet)")
        data = asyncio.run(collect_pools(args.data_dir, args.dataset, args.limit))
        args.cache.write_bytes(msgspec.msgpack.encode(data))
    data = data[: args.limit]
    settings, ndcg = score_grid(data, qrels)
    folds = folds_of(len(data), args.seed)
    print(f"{len(data)} queries, {len(settings)} settings, {FOLDS} folds (seed {args.seed})")
    heads = np.asarray([s.head for s in settings])
    signature = np.asarray([s.signature for s in settings])
    siblings = np.asarray([s.siblings for s in settings])
    restrictions = [
        ("no rerank, no siblings", (heads == 0) & (siblings == 0)),
        ("no rerank", heads == 0),
        (
            "rerank head <= 15, stored signatures, no siblings",
            (heads <= 15) & (signature == 0) & (siblings == 0),
        ),
        ("rerank head <= 15, stored signatures", (heads <= 15) & (signature == 0)),
        ("any, stored signatures", signature == 0),
        ("rerank head <= 15, any signature", heads <= 15),
        ("any", np.ones(len(settings), dtype=bool)),
    ]
    for name, allowed in restrictions:
        cross_validate(name, settings, ndcg, allowed, folds)
    print("\nbest 20 settings on all queries (nDCG@10, R@100):")
    for i in np.argsort(-ndcg.mean(axis=1), kind="stable")[:20]:
        print(
            f"  {ndcg[i].mean():.4f} {recall_of(data, qrels, settings[i]):.4f}  "
            f"{settings[i].label()}"
        )
    print(
        f"current defaults: {ndcg[settings.index(CURRENT)].mean():.4f} "
        f"{recall_of(data, qrels, CURRENT):.4f}"
    )
    tokens = np.asarray([c.tokens for q in data for c in q.candidates], dtype=np.float64)
    print(
        "signature rows per candidate chunk (mean): "
        + ", ".join(f"{v} {m:.0f}" for v, m in zip(LATE_VARIANTS, tokens.mean(axis=0), strict=True))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
