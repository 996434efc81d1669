"""Late-interaction reranker: MaxSim of query token vectors over stored 1-bit token signatures."""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.records import EncodedQuery, Hit
from app.retrieval.late_interaction import maxsim


class LateInteractionReranker:
    """Rescores with the token vectors of the same forward pass that made the embeddings.

    No second model and no re-encoding at query time: documents carry token signatures
    written at index time, so a rerank costs one small matrix product per candidate.
    """

    name = "late-interaction-maxsim"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def scores(self, query: EncodedQuery, hits: Sequence[Hit]) -> list[float]:
        if query.token_vectors is None or len(query.token_vectors) == 0:
            return [0.0] * len(hits)
        present = [i for i, h in enumerate(hits) if h.token_signature]
        out = [0.0] * len(hits)
        sims = maxsim(
            query.token_vectors, [hits[i].token_signature or b"" for i in present], self.dim
        )
        for i, score in zip(present, sims, strict=True):
            out[i] = float(score)
        return out
