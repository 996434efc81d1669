"""BM25 as sparse vectors, tokenized exactly as the Edge index's text index tokenizes."""

from __future__ import annotations

import qdrant_edge as qe

# The same tokenizer as app.adapters.qdrant.edge_shard.text_index_params (a test holds the
# two together): Qdrant's word tokenizer, lowercase, ASCII folding, Snowball English stemming,
# English stop words, tokens of 1..40 characters. The Edge index scores its text queries with
# the same k and b.
BM25_K = 1.2
BM25_B = 0.75
# Mean length in tokens (after stop words) of a SciFact chunk at the default chunk size of
# 256 embedder tokens: 88 (3,928 chunks of 2,000 documents). Qdrant Edge normalises by the
# live mean; a sparse vector has the length normalisation baked in when it is written, so a
# collection records the value it was built with: this one for the first generation, the
# corpus's measured mean for a replay's (app/adapters/qdrant/remote_catalog.py; docs/design.md,
# "The cluster adapter").
DEFAULT_AVG_LEN = 88.0


def bm25_config(avg_len: float, *, b: float = BM25_B) -> qe.Bm25Config:
    return qe.Bm25Config(
        k=BM25_K,
        b=b,
        avg_len=avg_len,
        tokenizer=qe.TokenizerType.Word,
        lowercase=True,
        ascii_folding=True,
        stopwords=qe.Language.English,
        stemmer=qe.SnowballParams(qe.SnowballLanguage.English),
        min_token_len=1,
        max_token_len=40,
    )


class SparseBm25:
    """Texts to (token hash -> weight) vectors whose dot product, once Qdrant multiplies each
    query term by its IDF (`Modifier.IDF`), is the BM25 score the Edge text index computes.

    A document's weight for a term is tf * (k + 1) / (tf + k * (1 - b + b * len / avg_len));
    a query's is 1 for each distinct term; Qdrant's IDF is ln(1 + (N - n + 0.5) / (n + 0.5))
    over the whole collection, as Edge's is over the whole shard.
    """

    def __init__(self, avg_len: float = DEFAULT_AVG_LEN) -> None:
        self.avg_len = avg_len
        self._model = qe.Bm25(bm25_config(avg_len))
        self._unnormalised: qe.Bm25 | None = None

    def document(self, text: str) -> tuple[list[int], list[float]]:
        """Indices and weights of a document; both empty when no token survives."""
        vector = self._model.embed_document(text)
        return list(vector.indices), list(vector.values)

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """Indices and weights of a query; both empty when no token survives."""
        vector = self._model.embed_query(text)
        return list(vector.indices), list(vector.values)

    def token_count(self, text: str) -> int:
        """Tokens BM25 counts in a text (its length): to measure a corpus's mean length."""
        if self._unnormalised is None:
            self._unnormalised = qe.Bm25(bm25_config(1.0, b=0.0))
        # Without length normalisation a weight is tf * (k + 1) / (tf + k): solve for tf.
        weights = self._unnormalised.embed_document(text).values
        return round(sum(w * BM25_K / (BM25_K + 1 - w) for w in weights))
